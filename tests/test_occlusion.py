"""Occlusion maps against a plain loop that occludes one position at a time, and an analytic case."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyResNet, batchnorm_net, small_sequential
from torch import nn

from convlens import ConvlensError, occlusion


def classifier() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        small_sequential(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 5)
    ).train()


class Untraceable(nn.Module):
    """Control flow on values: torch.fx cannot trace it, so occlusion runs whole images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).relu()
        y = y if y.sum() > 0 else -y
        return self.head(y.mean((2, 3)))


def brute_force(model, image, target, window, stride, fill, layer):
    """One forward per occluder position, the square set by slicing; the layer's maps captured
    with a hook of its own; sensitivity averaged pixel by pixel."""
    model.eval()
    grabbed = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda _m, _i, out: grabbed.__setitem__("map", out.detach().clone())
    )
    with torch.no_grad():
        base = model(image[None]).softmax(1)[0]
        target = int(base.argmax()) if target is None else target
        channel = int(grabbed["map"][0].sum((1, 2)).argmax())
        height, width = image.shape[1:]
        ys, xs = range(0, height - window + 1, stride), range(0, width - window + 1, stride)
        prob = torch.zeros(len(ys), len(xs))
        argmax = torch.zeros(len(ys), len(xs), dtype=torch.long)
        activation = torch.zeros(len(ys), len(xs))
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                occluded = image.clone()
                occluded[:, y : y + window, x : x + window] = fill
                probs = model(occluded[None]).softmax(1)[0]
                prob[i, j], argmax[i, j] = probs[target], probs.argmax()
                activation[i, j] = grabbed["map"][0, channel].sum()
    handle.remove()
    sensitivity = torch.zeros(height, width)
    for py in range(height):
        for px in range(width):
            drops = [
                float(base[target] - prob[i, j])
                for i, y in enumerate(ys)
                for j, x in enumerate(xs)
                if y <= py < y + window and x <= px < x + window
            ]
            sensitivity[py, px] = sum(drops) / len(drops) if drops else 0.0
    return prob, argmax, activation, channel, target, sensitivity


@pytest.mark.parametrize(
    ("make", "layer", "size"),
    [
        (classifier, "0.3", (2, 19, 17)),
        (lambda: TinyResNet().train(), "conv2", (2, 16, 16)),
        (lambda: batchnorm_net().train(), "2", (2, 12, 12)),  # batch norm folded for the pass
        (lambda: Untraceable().train(), "conv", (2, 11, 11)),
    ],
)
@pytest.mark.parametrize("batch_size", [None, 7])
def test_maps_equal_one_forward_per_position(make, layer, size, batch_size):
    model = make()
    torch.manual_seed(1)
    image = torch.randn(*size)
    result = occlusion(
        model, image, window=5, stride=3, fill=0.5, layer=layer, batch_size=batch_size
    )
    assert model.training  # mode restored
    prob, argmax, activation, channel, target, sensitivity = brute_force(
        model, image, None, 5, 3, 0.5, layer
    )
    assert int(result.target[0]) == target and int(result.channel[0]) == channel
    torch.testing.assert_close(result.prob[0], prob, atol=1e-5, rtol=0)
    assert torch.equal(result.argmax[0], argmax)
    torch.testing.assert_close(result.activation[0], activation, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(result.sensitivity[0], sensitivity, atol=1e-5, rtol=0)


def test_several_images_and_explicit_targets_match_one_at_a_time():
    model = classifier()
    images = torch.randn(3, 2, 12, 12)
    together = occlusion(model, list(images), [4, 0, 2], window=4, stride=2, layer="0.5")
    for i, image in enumerate(images):
        alone = occlusion(model, image, [4, 0, 2][i], window=4, stride=2, layer="0.5")
        torch.testing.assert_close(together.prob[i], alone.prob[0])
        torch.testing.assert_close(together.activation[i], alone.activation[0])
        assert torch.equal(together.channel[i], alone.channel[0])


class TopLeftQuadrant(nn.Module):
    """Class 0's score is the sum of the image's top-left 4x4 quadrant; class 1's is 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x[:, :, :4, :4].sum((1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def test_a_model_that_only_sees_one_quadrant():
    result = occlusion(TopLeftQuadrant(), torch.ones(1, 8, 8), window=4, stride=2)
    corners = torch.tensor([0, 2, 4])
    overlap = (4 - corners).clamp(min=0)
    covered = overlap[:, None] * overlap[None, :]  # occluded pixels of the quadrant
    expected = torch.sigmoid(16.0 - covered.float())
    assert torch.equal(result.ys, corners) and torch.equal(result.xs, corners)
    torch.testing.assert_close(result.prob[0], expected)
    assert bool((result.argmax == 0).all())  # a 0-0 tie at (0, 0) goes to the first class
    assert float(result.sensitivity[0, 6:, 6:].abs().max()) == 0.0  # only windows off the quadrant
    assert float(result.sensitivity[0, 0, 0]) > float(result.sensitivity[0, 3, 3]) > 0


def test_fast_mode_stays_close_to_exact():
    model = classifier()
    image = torch.randn(2, 24, 24)
    exact = occlusion(model, image, window=6, stride=2, layer="0.3")
    fast = occlusion(model, image, window=6, stride=2, layer="0.3", fast=True)
    assert all(param.dtype == torch.float32 for param in model.parameters())  # a copy was cast
    for a, b in [(exact.prob, fast.prob), (exact.activation, fast.activation)]:
        correlation = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert correlation > 0.98


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 13, "stride": 2}, "does not fit"),
        ({"window": 0, "stride": 2}, "does not fit"),
        ({"window": 4, "stride": 0}, "stride must be"),
        ({"window": 4, "stride": 2, "target": 5}, "out of range"),
        ({"window": 4, "stride": 2, "layer": "0.33"}, "0.3"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    with pytest.raises((ConvlensError, ValueError), match=message):
        occlusion(classifier(), torch.randn(2, 12, 12), **kwargs)


def test_wrong_image_shape_is_named():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        occlusion(classifier(), torch.randn(12, 12), window=4, stride=2)
