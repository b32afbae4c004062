"""Class activation maps, integrated gradients and noise tunnels: Captum as the oracle where it
has the method, references written out from the papers' formulas where it does not."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import convlens as cl
from convlens.attribution import METHODS

captum_attr = pytest.importorskip("captum.attr")


class AlexLike(nn.Module):
    """conv-ReLU-pool stages and a linear head, like AlexNet at 32 pixels; separate, not in-place
    ReLU modules so that Captum's guided backprop (module hooks) sees every one."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 12, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(12 * 16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def alex_like() -> AlexLike:
    torch.manual_seed(0)
    return AlexLike().eval()


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


def inputs(size: int = 32, count: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(count, 3, size, size), torch.tensor([1, 4, 7][:count])


def split_alex(net: AlexLike, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A reference free of hooks: the last ReLU's output A computed by the first half of the
    net, the logits by the rest from A itself, and dlogit/dA for each image's target."""
    acts = net.features(x).detach().requires_grad_(True)
    logits = net.classifier(net.pool(acts))
    return acts, logits


def reference_grads(net: AlexLike, x: torch.Tensor, targets: torch.Tensor):
    acts, logits = split_alex(net, x)
    score = logits[torch.arange(len(x)), targets].sum()
    (grad,) = torch.autograd.grad(score, acts)
    return acts.detach(), grad


def upsampled(cam: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(cam[:, None], size=(size, size), mode="bilinear", align_corners=False)[
        :, 0
    ]


@pytest.mark.parametrize(
    "build,layer,size", [(alex_like, "features.6", 32), (resnet18, "layer4", 64)]
)
def test_grad_cam_equals_captum(build, layer, size):
    net = build()
    x, targets = inputs(size)
    got = cl.grad_cam(net, x, targets)
    assert got.layer == layer and got.shape == (3, size, size)
    module = dict(net.named_modules())[layer]
    low = captum_attr.LayerGradCam(net, module).attribute(x, targets, relu_attributions=True)
    expected = captum_attr.LayerAttribution.interpolate(low, (size, size), "bilinear")[:, 0]
    assert expected.abs().sum() > 0
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-4)
    got_low = cl.grad_cam(net, x, targets, upsample=False)
    torch.testing.assert_close(got_low, low[:, 0].detach(), atol=1e-5, rtol=1e-4)


def test_guided_grad_cam_equals_captum():
    net = alex_like()
    x, targets = inputs()
    got = cl.guided_grad_cam(net, x, targets)
    expected = captum_attr.GuidedGradCam(net, net.features[6]).attribute(
        x, targets, interpolate_mode="bilinear"
    )
    assert got.shape == x.shape and expected.abs().sum() > 0
    torch.testing.assert_close(got, expected.detach(), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
@pytest.mark.parametrize("build,size", [(alex_like, 32), (resnet18, 64)])
def test_integrated_gradients_equal_captum(build, size, method):
    net = build().double()  # float64: no ReLU flips from rounding in a different layout or batch
    x, targets = inputs(size, count=2)
    x = x.double()
    # a constant baseline would tie max-pool windows, whose route depends on the memory layout
    baseline = 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).double()
    got, delta = cl.integrated_gradients(
        net, x, targets, baseline=baseline, steps=12, method=method, batch_size=5, return_delta=True
    )
    ig = captum_attr.IntegratedGradients(net)
    expected, expected_delta = ig.attribute(
        x,
        baselines=baseline,
        target=targets,
        n_steps=12,
        method=method,
        return_convergence_delta=True,
    )
    torch.testing.assert_close(got, expected.detach(), atol=1e-9, rtol=1e-5)
    torch.testing.assert_close(delta, expected_delta, atol=1e-8, rtol=1e-5)


def test_integrated_gradients_delta_shrinks_as_steps_grow():
    net = alex_like()
    x, targets = inputs()
    gaps = [
        cl.integrated_gradients(
            net, x, targets, steps=s, method="riemann_right", return_delta=True
        )[1]
        .abs()
        .mean()
        for s in (2, 8, 64)
    ]
    assert gaps[0] > gaps[1] > gaps[2]


def test_grad_cam_plus_plus_and_layer_cam_equal_the_papers_formulas():
    net = alex_like()
    x, targets = inputs()
    acts, g = reference_grads(net, x, targets)
    total = acts.sum((2, 3), keepdim=True)
    alpha = torch.zeros_like(g)
    for index in itertools.product(*map(range, g.shape)):  # element by element, as in the paper
        denominator = 2 * g[index] ** 2 + total[index[:2]].squeeze() * g[index] ** 3
        if g[index] != 0 and denominator != 0:
            alpha[index] = g[index] ** 2 / denominator
    weights = (F.relu(g) * alpha).sum((2, 3), keepdim=True)
    plus = F.relu((weights * acts).sum(1))
    torch.testing.assert_close(cl.grad_cam_plus_plus(net, x, targets, upsample=False), plus)
    torch.testing.assert_close(cl.grad_cam_plus_plus(net, x, targets), upsampled(plus, 32))
    layer = F.relu((F.relu(g) * acts).sum(1))
    torch.testing.assert_close(cl.layer_cam(net, x, targets, upsample=False), layer)
    assert plus.abs().sum() > 0 and layer.abs().sum() > 0


def test_score_cam_equals_the_papers_formula_one_forward_per_channel():
    net = alex_like()
    x, targets = inputs()
    acts = net.features(x).detach()
    expected = torch.zeros(3, 32, 32)
    with torch.no_grad():
        for n in range(3):
            for k in range(acts.shape[1]):
                mask = F.interpolate(acts[n : n + 1, k : k + 1], size=(32, 32), mode="bilinear")
                span = mask.max() - mask.min()
                mask = (mask - mask.min()) / span if span > 0 else torch.zeros_like(mask)
                prob = net(x[n : n + 1] * mask).softmax(1)[0, targets[n]]
                expected[n] += prob * mask[0, 0]
    expected = F.relu(expected)
    for batch_size in (1, 7, 1000):
        got = cl.score_cam(net, x, targets, batch_size=batch_size)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert expected.sum() > 0


@pytest.mark.parametrize(
    "name", ["gradcam", "gradcam++", "layercam", "scorecam", "guided-gradcam", "ig"]
)
def test_a_batch_equals_one_call_per_image(name):
    net = resnet18()
    x, targets = inputs(48)
    batch = METHODS[name](net, x, targets)
    single = torch.cat([METHODS[name](net, x[i : i + 1], int(targets[i])) for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["gradient", "saliency", "guided", "deconvnet", "gradcam", "ig"])
def test_noise_tunnel_with_sigma_zero_is_its_method_and_a_seed_repeats(name):
    net = alex_like()
    x, targets = inputs()
    plain = METHODS[name](net, x, targets)
    smooth = cl.noise_tunnel(name, net, x, targets, samples=3, sigma=0.0)
    torch.testing.assert_close(smooth, plain, atol=1e-6, rtol=1e-5)
    squared = cl.noise_tunnel(name, net, x, targets, samples=3, sigma=0.0, kind="smoothgrad_sq")
    torch.testing.assert_close(squared, plain * plain, atol=1e-6, rtol=1e-5)
    first = cl.noise_tunnel(name, net, x, targets, samples=4, seed=3, batch_size=5)
    again = cl.noise_tunnel(name, net, x, targets, samples=4, seed=3, batch_size=2)
    torch.testing.assert_close(first, again, atol=1e-6, rtol=1e-5)
    other = cl.noise_tunnel(name, net, x, targets, samples=4, seed=4)
    assert not torch.allclose(first, other)


def test_noise_tunnel_kinds_against_an_explicit_loop():
    net = alex_like()
    x, targets = inputs()
    maps = []
    generator = torch.Generator().manual_seed(5)
    scale = 0.2 * (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
    for _ in range(6):
        noisy = x + torch.randn(x.shape, generator=generator) * scale
        maps.append(cl.gradient(net, noisy, targets))
    maps = torch.stack(maps)
    for kind, expected in (
        ("smoothgrad", maps.mean(0)),
        ("smoothgrad_sq", (maps**2).mean(0)),
        ("vargrad", maps.var(0, unbiased=False)),
    ):
        got = cl.noise_tunnel("gradient", net, x, targets, samples=6, sigma=0.2, kind=kind, seed=5)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)


def test_captum_noise_tunnel_agrees_in_distribution():
    """Captum draws its noise differently, so the maps agree only on average: with many samples
    both SmoothGrad maps approach the same expectation."""
    net = alex_like()
    x, targets = inputs(count=1)
    ours = cl.noise_tunnel("gradient", net, x, targets, samples=400, sigma=0.1, seed=0)
    stdev = float(0.1 * (x.max() - x.min()))
    theirs = captum_attr.NoiseTunnel(captum_attr.Saliency(net)).attribute(
        x, nt_type="smoothgrad", nt_samples=400, stdevs=stdev, target=targets, abs=False
    )
    assert F.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0) > 0.95


class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


@pytest.mark.parametrize(
    "name", ["gradcam", "gradcam++", "layercam", "scorecam", "guided-gradcam", "ig"]
)
@pytest.mark.parametrize("raises", [False, True])
def test_no_hook_or_mode_or_grad_left_behind(name, raises):
    net = alex_like().train()
    net.features[2].eval()
    frozen = net.features[0].bias
    frozen.requires_grad_(False)
    if raises:
        net.pool = Exploding()  # after the CAM layer
    x, targets = inputs()
    if raises:
        with pytest.raises(RuntimeError, match="boom"):
            METHODS[name](net, x, targets)
    else:
        METHODS[name](net, x, targets)
        cl.noise_tunnel(name, net, x, targets, samples=2, seed=0)
    assert all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in net.modules()
    )
    assert net.training and not net.features[2].training and net.features[0].training
    assert not frozen.requires_grad and net.features[0].weight.requires_grad
    assert all(p.grad is None for p in net.parameters())
    assert not torch.overrides._get_current_function_mode_stack()


def test_a_layer_without_a_spatial_map_names_the_layers_with_one():
    net = alex_like()
    x, targets = inputs()
    for method in (cl.grad_cam, cl.score_cam):
        with pytest.raises(cl.ConvlensError, match=r"not a spatial map.*features\.6"):
            method(net, x, targets, layer="classifier.1")
    with pytest.raises(cl.ConvlensError, match="closest"):
        cl.grad_cam(net, x, targets, layer="features.66")


def test_bad_options_are_clear_errors():
    net = alex_like()
    x, targets = inputs()
    with pytest.raises(cl.ConvlensError, match="for a unit use grad_cam"):
        cl.score_cam(net, x, cl.Unit("features.6", 0))
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        cl.score_cam(net, x, targets, batch_size=0)
    with pytest.raises(ValueError, match="steps must be an integer >= 2 for riemann_trapezoid"):
        cl.integrated_gradients(net, x, targets, steps=1, method="riemann_trapezoid")
    with pytest.raises(ValueError, match="method must be one of gausslegendre"):
        cl.integrated_gradients(net, x, targets, method="simpson")
    with pytest.raises(ValueError, match="does not broadcast"):
        cl.integrated_gradients(net, x, targets, baseline=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="kind must be one of smoothgrad"):
        cl.noise_tunnel("gradient", net, x, targets, kind="smooth")
    with pytest.raises(ValueError, match="call integrated_gradients for its delta"):
        cl.noise_tunnel("ig", net, x, targets, return_delta=True)
    with pytest.raises(ValueError, match="unknown attribution method 'gradcm'"):
        cl.noise_tunnel("gradcm", net, x, targets)
    with pytest.raises(cl.ConvlensError, match="out of range: the model has 10 outputs"):
        cl.grad_cam(net, x, 12)


def test_a_unit_target_gives_the_cam_of_that_activation():
    net = alex_like()
    x, _ = inputs()
    unit = cl.Unit("features.6", 2, 3, 3)
    cam = cl.grad_cam(net, x, unit, layer="features.4", upsample=False)
    acts = net.features[:5](x).detach().requires_grad_(True)
    top = net.features[5:](acts)
    (g,) = torch.autograd.grad(top[:, 2, 3, 3].sum(), acts)
    expected = F.relu((g.mean((2, 3), keepdim=True) * acts).sum(1))
    torch.testing.assert_close(cam, expected.detach())
    with pytest.raises(cl.ConvlensError, match="runs after the target unit's layer"):
        cl.grad_cam(net, x, cl.Unit("features.4", 0), layer="features.6")


def test_gradient_methods_work_inside_a_callers_no_grad():
    net = alex_like()
    x, targets = inputs()
    expected = {name: METHODS[name](net, x, targets) for name in ("gradient", "gradcam", "ig")}
    with torch.no_grad():
        for name, values in expected.items():
            torch.testing.assert_close(METHODS[name](net, x, targets), values)
