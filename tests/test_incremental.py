"""The incremental forward against the plain forward of the whole patched images."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import DataDependent, TinyResNet, batchnorm_net, small_sequential
from torch import nn

from convlens.hooks import capture
from convlens.incremental import IncrementalForward, Patch, Untraceable, _affected
from convlens.models.zoo import BUILTIN_MODELS


def patched_images(base: torch.Tensor, patch: Patch) -> torch.Tensor:
    """The whole images, the patch pasted by slicing, one image at a time."""
    images = base.repeat(len(patch.y), 1, 1, 1)
    height, width = patch.data.shape[2:]
    for i, (y, x) in enumerate(zip(patch.y.tolist(), patch.x.tolist())):
        images[i, :, y : y + height, x : x + width] = patch.data[i]
    return images


def corners_everywhere(size: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Corners at both borders, the middle and off the stride grid."""
    last = size - window
    ys = torch.tensor([0, 0, last, last, last // 2, 1, last - 1, 3])
    xs = torch.tensor([0, last, 0, last, last // 2, last - 2, 2, last])
    return ys, xs


class AvgPoolNet(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(2, 3, 5, stride=2, padding=2),
            nn.GELU(),
            nn.AvgPool2d(3, stride=2, padding=1),
            nn.Conv2d(3, 3, 3, padding=1, groups=3),
            nn.LeakyReLU(0.1),
            nn.Flatten(),
        )


MODELS = {
    "sequential": (lambda: small_sequential(), 2, 23, ["3", "6"]),
    "resnet": (lambda: TinyResNet(), 2, 21, ["conv2", "conv3"]),
    "batchnorm": (lambda: batchnorm_net(), 2, 15, ["2", "4"]),
    "avgpool": (lambda: AvgPoolNet(), 2, 19, ["2"]),
    "torchvision-resnet18": (lambda: torchvision.models.resnet18(num_classes=7), 3, 64, ["layer2"]),
    "builtin": (  # convlens's own local response normalisation, kept as one local module
        lambda: BUILTIN_MODELS["zfnet-fashion"].build(),
        1,
        28,
        ["features.3", "features.12"],
    ),
}


@pytest.mark.parametrize("name", MODELS)
def test_equals_the_plain_forward_of_the_patched_images(name):
    make, channels, size, layers = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    base = torch.randn(1, channels, size, size)
    window = size // 3
    ys, xs = corners_everywhere(size, window)
    patch = Patch(torch.randn(len(ys), channels, window, window), ys, xs, base)
    images = patched_images(base, patch)
    with torch.inference_mode():
        for layer in layers:
            forward = IncrementalForward(model, layer)
            forward.set_base(base)
            output, maps = forward(patch)
            with capture(model, [layer]) as grabbed:
                expected = model(images)
            torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(maps, grabbed[layer], atol=1e-5, rtol=1e-5)


def test_the_recomputed_span_is_what_the_input_span_can_reach():
    """Output o of a conv (kernel k, stride s, pad p, dilation d) reads inputs o*s - p .. o*s - p
    + d*(k - 1); the span recomputed is every output reading the patch, same length for all."""
    start = torch.tensor([4, 0, 9])
    origin, length = _affected(start, 1, 10, kernel=3, stride=1, pad=1, dilation=1)
    assert length == 3 and origin.tolist() == [3, 0, 7]  # clipped spans slide inside the map
    origin, length = _affected(torch.tensor([8]), 4, 8, kernel=3, stride=2, pad=1, dilation=1)
    assert (origin.item(), length) == (4, 3)  # outputs 4..6 read inputs 7..13
    origin, length = _affected(torch.tensor([6]), 2, 10, kernel=3, stride=1, pad=2, dilation=2)
    assert (origin.item(), length) == (4, 6)  # outputs 4..9 read 6 or 7 with dilation 2
    origin, length = _affected(torch.tensor([0]), 30, 10, kernel=3, stride=1, pad=1, dilation=1)
    assert (origin.item(), length) == (0, 10)  # the whole map


def brute_force_reach(start: int, size: int, out_length: int, kernel, stride, pad, dilation):
    return [
        o
        for o in range(out_length)
        if any(start <= o * stride - pad + dilation * t < start + size for t in range(kernel))
    ]


@pytest.mark.parametrize(
    "geometry", [(3, 1, 1, 1), (3, 2, 1, 1), (7, 2, 3, 1), (3, 1, 2, 2), (2, 2, 0, 1)]
)
def test_the_recomputed_span_covers_every_output_the_patch_reaches(geometry):
    kernel, stride, pad, dilation = geometry
    size_in = 20
    out_length = (size_in + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    starts = torch.arange(0, size_in - 4)
    origin, length = _affected(starts, 5, out_length, kernel, stride, pad, dilation)
    for start, first in zip(starts.tolist(), origin.tolist()):
        reached = brute_force_reach(start, 5, out_length, kernel, stride, pad, dilation)
        assert set(reached) <= set(range(first, first + length))
        assert first >= 0 and first + length <= out_length


def test_an_untraceable_model_is_reported():
    with pytest.raises(Untraceable, match=r"torch\.fx could not trace"):
        IncrementalForward(DataDependent())
