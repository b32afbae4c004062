"""Deconvnet, guided backprop, gradient and saliency against explicit reference computations."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyResNet
from torch import nn

import convlens as cl
from convlens.attribution import METHODS, deconvnet, gradient, guided_backprop, saliency
from convlens.normalization import LocalResponseNorm

PIXEL_METHODS = ["deconvnet", "gradient", "guided", "saliency"]  # those with Unit targets here


def zeiler_net(lrn: type[nn.Module] = nn.LocalResponseNorm) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, stride=2, return_indices=False),
        lrn(3),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.ReLU(),
    )


def explicit_projection(
    net: nn.Sequential, x: torch.Tensor, channel: int, rule: str
) -> torch.Tensor:
    """Zeiler & Fergus by hand: forward recording switches and ReLU masks, then unpool with the
    switches, rectify the signal, and apply the transposed filters, layer by layer."""
    conv1, _, _, lrn, conv2, _ = net
    pre1 = conv1(x)
    pooled, switches = F.max_pool2d(F.relu(pre1), 2, 2, return_indices=True)
    pre2 = conv2(lrn(pooled))
    top = F.relu(pre2)
    flat = top[:, channel].flatten(1).argmax(1)
    signal = torch.zeros_like(top)
    for i, index in enumerate(flat.tolist()):
        y, xx = divmod(index, top.shape[-1])
        signal[i, channel, y, xx] = top[i, channel, y, xx] if rule == "deconvnet" else 1.0

    def relu_backward(s: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        if rule == "deconvnet":
            return F.relu(s)
        if rule == "guided":
            return F.relu(s) * (pre > 0)
        return s * (pre > 0)

    signal = relu_backward(signal, pre2)
    signal = F.conv_transpose2d(signal, conv2.weight, padding=1)  # LRN passed through
    signal = F.max_unpool2d(signal, switches, 2, 2, output_size=pre1.shape[-2:])
    signal = relu_backward(signal, pre1)
    return F.conv_transpose2d(signal, conv1.weight, padding=1)


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
@pytest.mark.parametrize("lrn", [nn.LocalResponseNorm, LocalResponseNorm])
def test_unit_projection_matches_the_explicit_zeiler_deconvnet(rule, lrn):
    net = zeiler_net(lrn)
    if rule == "guided":  # guided backprop differentiates through the LRN; take it out
        net[3] = nn.Identity()
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        expected = explicit_projection(net, x, channel=2, rule=rule)
    unit = cl.Unit("5", 2)
    got = (
        deconvnet(net, x, unit)
        if rule == "deconvnet"
        else guided_backprop(net, x, unit, strict=True)
    )
    assert expected.abs().sum() > 0
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_gradient_through_lrn_matches_the_explicit_chain_rule_without_it():
    # With the LRN removed, the explicit chain rule is the plain gradient.
    net = zeiler_net()
    net[3] = nn.Identity()
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        expected = explicit_projection(net, x, channel=1, rule="gradient")
    torch.testing.assert_close(gradient(net, x, cl.Unit("5", 1)), expected, atol=1e-5, rtol=1e-5)


def test_deconvnet_can_backpropagate_through_normalisation_instead():
    net = zeiler_net()
    x = torch.randn(2, 3, 12, 12)
    passed = deconvnet(net, x, cl.Unit("5", 0))
    through = deconvnet(net, x, cl.Unit("5", 0), normalization="gradient")
    assert not torch.allclose(passed, through)


def hand_net(relu: nn.Module | None = None) -> nn.Sequential:
    """f = relu(x) - relu(-x) = x through two 1x1 conv layers: gradient 1, guided (x > 0),
    deconvnet passes the activation's own sign back."""
    net = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=False), relu or nn.ReLU(), nn.Conv2d(2, 1, 1, bias=False)
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        net[2].weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
    return net


def test_hand_weighted_net_maps_computed_by_hand():
    net = hand_net()
    x = torch.tensor([[[[-2.0, 3.0], [1.0, -1.0]]]])
    at_negative, at_positive = cl.Unit("2", 0, 0, 0), cl.Unit("2", 0, 0, 1)
    zeros = torch.zeros(1, 1, 2, 2)

    def only(y: int, xx: int, value: float) -> torch.Tensor:
        out = zeros.clone()
        out[0, 0, y, xx] = value
        return out

    torch.testing.assert_close(gradient(net, x, at_negative), only(0, 0, 1.0))
    torch.testing.assert_close(guided_backprop(net, x, at_negative), zeros)
    torch.testing.assert_close(deconvnet(net, x, at_negative), only(0, 0, -2.0))
    torch.testing.assert_close(gradient(net, x, at_positive), only(0, 1, 1.0))
    torch.testing.assert_close(guided_backprop(net, x, at_positive), only(0, 1, 1.0))
    torch.testing.assert_close(deconvnet(net, x, at_positive), only(0, 1, 3.0))


class Twin(nn.Module):
    """conv → ReLU → pool → LRN → conv → ReLU → linear, with the ReLUs applied as `kind`."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.conv1, self.pool, self.lrn = (
            nn.Conv2d(3, 6, 3, padding=1),
            nn.MaxPool2d(2),
            nn.LocalResponseNorm(3),
        )
        self.conv2, self.head = nn.Conv2d(6, 5, 3, padding=1), nn.Linear(5 * 6 * 6, 4)
        self.relu1, self.relu2 = nn.ReLU(inplace=True), nn.ReLU()

    def act(self, h: torch.Tensor, module: nn.Module) -> torch.Tensor:
        if self.kind == "module":
            return module(h)
        if self.kind == "torch.relu_":
            torch.relu_(h)  # result unused: the in-place effect must count
            return h
        return {"F.relu": F.relu, "torch.relu": torch.relu, "method": torch.Tensor.relu}[self.kind](
            h
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv1(x), self.relu1)
        h = self.act(self.conv2(self.lrn(self.pool(h))), self.relu2)
        return self.head(h.flatten(1))


@pytest.mark.parametrize("kind", ["F.relu", "torch.relu", "torch.relu_", "method"])
@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient"])
def test_functional_relu_agrees_with_its_module_twin(kind, method):
    x = torch.randn(3, 3, 12, 12)
    targets = [0, 3, 1]
    expected = METHODS[method](Twin("module"), x, targets)
    torch.testing.assert_close(METHODS[method](Twin(kind), x, targets), expected)
    if method != "gradient":
        assert not torch.allclose(expected, gradient(Twin("module"), x, targets))


def separate_relus(model: TinyResNet) -> nn.Module:
    """The same network with a fresh ReLU module for each call of the reused one."""

    class Separate(TinyResNet):
        def forward(self, x):
            x = self.pool(F.relu(self.stem(x)))
            out = self.relu_a(self.conv1(x))
            out = self.conv2(out)
            out += x
            out = self.relu_b(out)
            out = torch.relu(self.conv3(out)) + self.down(out)
            return self.head(out.mean((2, 3)))

    twin = Separate()
    twin.load_state_dict(model.state_dict())
    twin.relu_a, twin.relu_b = nn.ReLU(inplace=True), nn.ReLU(inplace=True)
    return twin


@pytest.mark.parametrize("method", ["deconvnet", "guided"])
def test_resnet_with_a_reused_relu_module(resnet_net, method):
    x = torch.randn(2, 2, 16, 16)
    got = METHODS[method](resnet_net, x, [0, 2])
    torch.testing.assert_close(got, METHODS[method](separate_relus(resnet_net), x, [0, 2]))
    assert not torch.allclose(got, gradient(resnet_net, x, [0, 2]))
    unit = deconvnet(resnet_net, x, cl.Unit("conv2", 1))
    assert unit.abs().sum() > 0


def test_batch_with_a_target_per_image_equals_one_call_per_image():
    net = zeiler_net()
    x = torch.randn(3, 3, 12, 12)
    units = [cl.Unit("5", 0), cl.Unit("4", 4, 2, 3), cl.Unit("2", 1)]
    batched = deconvnet(net, x, units)
    for i, unit in enumerate(units):
        torch.testing.assert_close(batched[i : i + 1], deconvnet(net, x[i : i + 1], unit))


def test_saliency_is_the_channel_max_of_the_absolute_gradient():
    model = Twin("module")
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    model(x)[torch.arange(2), torch.tensor([1, 2])].sum().backward()
    torch.testing.assert_close(saliency(model, x.detach(), [1, 2]), x.grad.abs().amax(1))
    assert all(p.grad is None for p in model.parameters()) is False  # our own backward above did
    fresh = Twin("module")
    saliency(fresh, x.detach(), [1, 2])
    assert all(p.grad is None for p in fresh.parameters())


def test_uncovered_nonlinearities_are_named_once_and_strict_refuses():
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.ReLU(),
        nn.Conv2d(2, 2, 3),
        nn.GELU(),
        nn.Flatten(),
        nn.Linear(2, 2),
        nn.SiLU(),
    )
    x = torch.randn(1, 1, 5, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deconvnet(net, x, 0)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "GELU, SiLU" in messages[0]
    with pytest.raises(cl.ConvlensError, match="GELU, SiLU"):
        guided_backprop(net, x, 0, strict=True)


def test_a_model_without_relus_is_refused_for_deconvnet():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(18, 2))
    with pytest.raises(cl.ConvlensError, match="needs ReLUs"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deconvnet(net, torch.randn(1, 1, 5, 5), 0)
    saliency(net, torch.randn(1, 1, 5, 5), 0)  # the plain gradient still works


class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


@pytest.mark.parametrize("name", PIXEL_METHODS)
@pytest.mark.parametrize("raises", [False, True])
def test_no_hook_or_mode_or_grad_left_behind(name, raises):
    net = zeiler_net().train()
    net[3].eval()
    frozen = net[0].bias
    frozen.requires_grad_(False)
    if raises:
        net[4] = Exploding()  # between the input and the unit's layer
    x = torch.randn(2, 3, 12, 12)
    if raises:
        with pytest.raises(RuntimeError, match="boom"):
            METHODS[name](net, x, cl.Unit("5", 0))
    else:
        METHODS[name](net, x, cl.Unit("5", 0))
    assert all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in net.modules()
    )
    assert net.training and not net[3].training and net[0].training
    assert not frozen.requires_grad and net[0].weight.requires_grad
    assert all(p.grad is None for p in net.parameters())
    assert not torch.overrides._get_current_function_mode_stack()


@pytest.mark.parametrize("name", PIXEL_METHODS)
def test_a_unit_projection_stops_the_forward_after_the_units_layer(name):
    net = zeiler_net().eval()
    x = torch.randn(2, 3, 12, 12)
    expected = METHODS[name](net, x, cl.Unit("5", 1))
    net.append(Exploding())  # never reached
    torch.testing.assert_close(METHODS[name](net, x, cl.Unit("5", 1)), expected)


def test_bad_targets_and_shapes_are_clear_errors():
    net = Twin("module")
    with pytest.raises(cl.ConvlensError, match="out of range: the model has 4 outputs"):
        gradient(net, torch.randn(1, 3, 12, 12), 7)
    with pytest.raises(ValueError, match=r"add a batch axis"):
        gradient(net, torch.randn(3, 12, 12), 0)
    with pytest.raises(cl.ConvlensError, match="channel 9 out of range"):
        deconvnet(net, torch.randn(1, 3, 12, 12), cl.Unit("conv2", 9))
    with pytest.raises(cl.ConvlensError, match="closest: 'conv2'"):
        deconvnet(net, torch.randn(1, 3, 12, 12), cl.Unit("conv_2", 0))
