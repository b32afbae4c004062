"""The cone forward against the plain forward's whole map at the same position."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torchvision
from conftest import DataDependent, TinyResNet, batchnorm_net, random_builtin, small_sequential
from torch import nn

import convlens.synthesis.units as units
from convlens._errors import ConvlensError
from convlens.cone import Cone
from convlens.hooks import capture
from convlens.locality import Untraceable
from convlens.models.zoo import BUILTIN_MODELS


class Excitation(nn.Module):
    """A squeeze-and-excitation block between two convs: a global pool (not local) scaling a
    map through a broadcast multiply."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.squeeze = nn.Conv2d(4, 4, 1)
        self.out = nn.Conv2d(4, 3, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        scale = torch.sigmoid(self.squeeze(nn.functional.adaptive_avg_pool2d(x, 1)))
        return self.out(x * scale)


class Sized(nn.Module):
    """Reads its map's size (a non-tensor node feeding a view) and pads by hand with a
    non-square, strided, average-pooled path beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, (3, 5), stride=(2, 1), padding=(1, 2))
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = y.view(y.size(0), 3, y.shape[2], -1)
        return self.out(torch.relu(self.pool(y)))


MODELS = {
    "sequential": (lambda: small_sequential(), 2, 23, "5"),
    "sized": (lambda: Sized(), 2, 19, "out"),
    "resnet": (lambda: TinyResNet(), 2, 21, "conv3"),
    "batchnorm": (lambda: batchnorm_net(), 2, 15, "4"),
    "excitation": (lambda: Excitation(), 2, 17, "out"),
    "torchvision-resnet18": (lambda: torchvision.models.resnet18(num_classes=7), 3, 64, "layer3"),
    "builtin": (lambda: BUILTIN_MODELS["zfnet-fashion"].build(), 1, 28, "features.12"),
}


def positions(height: int, width: int) -> list[tuple[int, int]]:
    """The corners (where the windows run into the padding) and the centre."""
    return sorted(
        {
            (0, 0),
            (0, width - 1),
            (height - 1, 0),
            (height - 1, width - 1),
            (height // 2, width // 2),
        }
    )


@pytest.mark.parametrize("name", MODELS)
def test_the_cone_equals_the_whole_map_at_its_position_and_so_does_the_gradient(name):
    make, channels, size, layer = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    images = torch.randn(3, channels, size, size, requires_grad=True)
    with capture(model, [layer], detach=False, stop=True) as acts:
        acts.forward(images)
    whole = acts[layer]
    for y, x in positions(*whole.shape[2:]):
        expected = whole[:, :, y : y + 1, x : x + 1]
        weights = torch.randn_like(expected)
        (expected_grad,) = torch.autograd.grad(
            (expected * weights).sum(), images, retain_graph=True
        )
        cone = Cone(model, layer, (channels, size, size), (y, x))
        got = cone(images)
        (grad,) = torch.autograd.grad((got * weights).sum(), images)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-5)


def test_capture_records_the_cone_output_under_the_layer_name():
    model = small_sequential().eval()
    cone = Cone(model, "3", (2, 23, 23), (2, 2))
    images = torch.randn(2, 2, 23, 23)
    with capture(cone, ["3"]) as acts:
        out = cone(images)
    torch.testing.assert_close(acts["3"], out)
    assert out.shape == (2, 4, 1, 1)


def test_the_work_is_the_share_of_multiply_adds_over_the_cone():
    """Two 3x3 convs (padding 1) on a 9x9 input, one position of the second: it reads a 3x3
    box of the first conv's output, so the convs do 9 + 1 of 81 + 81 positions."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))
    cone = Cone(model, "2", (1, 9, 9), (4, 4))
    first, second = (model[i].weight.numel() for i in (0, 2))
    assert cone.work == pytest.approx((9 * first + second) / (81 * first + 81 * second))


def test_unit_images_run_the_model_itself_when_it_cannot_be_traced():
    with pytest.raises(Untraceable, match=r"torch\.fx could not trace"):
        Cone(DataDependent(), "conv", (1, 9, 9), (1, 1))
    made, _ = units.synthesize_units(DataDependent(), "conv", [0, 1], steps=2)
    assert made.images.shape == (2, 1, 3, 3)


def plain_forward(*_args, **_kwargs):
    raise Untraceable("the plain forward, for comparison")


def test_unit_images_on_the_cone_equal_those_of_the_plain_forward():
    """The first steps agree to float precision; later steps drift apart only as far as a
    chaotic optimisation amplifies rounding, so the objectives reached stay close."""
    loaded = random_builtin()
    canvas = units.unit_canvas(loaded.model, "features.12", loaded.input_size)
    runner, _ = units._runner(loaded.model, "features.12", 1, canvas)
    assert isinstance(runner, Cone)  # 47 % of the work: the cone is what runs
    made = {}
    for runner in ("plain", "cone"):
        with mock.patch.object(units, "Cone", plain_forward if runner == "plain" else Cone):
            made[runner] = [
                units.synthesize_units(loaded, "features.12", range(6), steps=steps, lr=0.1)[0]
                for steps in (2, 48)
            ]
    torch.testing.assert_close(made["cone"][0].inputs, made["plain"][0].inputs, atol=1e-4, rtol=0)
    reached = [made[runner][1].trace[-1] for runner in ("plain", "cone")]
    torch.testing.assert_close(reached[1], reached[0], rtol=0.02, atol=0.0)


def test_a_cone_built_while_the_model_trains_is_planned_for_eval_mode():
    model = batchnorm_net().train()
    cone = Cone(model, "4", (2, 15, 15), (3, 3))
    assert model.training  # left as it was
    assert cone.work < 0.5  # the batch norms counted as pointwise, as in eval mode
    model.eval()
    images = torch.randn(2, 2, 15, 15)
    with capture(model, ["4"], stop=True) as acts:
        acts.forward(images)
    torch.testing.assert_close(cone(images), acts["4"][:, :, 3:4, 3:4], atol=1e-5, rtol=1e-5)


def test_a_position_off_the_map_is_refused():
    with pytest.raises(ConvlensError, match=r"position \(8, 0\) is outside"):
        Cone(small_sequential().eval(), "3", (2, 23, 23), (8, 0))


class TrainingBranch(nn.Module):
    """Dropout as a function of `self.training`: fx freezes the mode it traces in."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(nn.functional.dropout(self.first(x), 0.5, training=self.training))


def test_a_model_that_trains_is_traced_as_it_runs_in_eval_mode():
    model = TrainingBranch().train()
    cone = Cone(model, "second", (1, 12, 12), (4, 4))
    model.eval()
    images = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(cone(images), model(images)[:, :, 4:5, 4:5])


class SharedInPlace(nn.Module):
    """An in-place ReLU on a map that another conv also reads: eager sees the change."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        rectified = nn.functional.relu(y, inplace=True)
        return self.b(y) + rectified


class Upsampled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.up = nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv(x))


def named_work() -> nn.Module:
    """A layer named like the cone's own attribute `work`."""
    model = nn.Sequential()
    model.add_module("work", nn.Conv2d(1, 2, 3))
    return model


@pytest.mark.parametrize(
    "make, layer, match",
    [
        (lambda: TinyResNet(), "relu", "called more than once"),
        (lambda: SharedInPlace(), "b", "overwrites a map"),
        (lambda: Upsampled(), "up", "not local"),
        (named_work, "work", "clashes"),
    ],
)
def test_what_the_cone_cannot_follow_is_refused_so_the_model_runs_instead(make, layer, match):
    model = make().eval()
    channels = next(model.parameters()).shape[1]  # the first conv's input channels
    with pytest.raises(Untraceable, match=match):
        Cone(model, layer, (channels, 16, 16), (2, 2))


def test_a_batch_norm_without_running_statistics_is_computed_whole():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    model.add_module("2", nn.Conv2d(2, 2, 3))
    model.eval()
    cone = Cone(model, "2", (1, 14, 14), (5, 5))
    images = torch.randn(3, 1, 14, 14)
    torch.testing.assert_close(cone(images), model(images)[:, :, 5:6, 5:6])
    first, second = (model[i].weight.numel() for i in (0, 2))  # the first conv: all 12x12
    assert cone.work == pytest.approx((144 * first + second) / (144 * first + 100 * second))


def test_an_input_of_another_size_is_refused():
    cone = Cone(small_sequential().eval(), "3", (2, 23, 23), (2, 2))
    with pytest.raises(ValueError, match=r"takes inputs of \(2, 23, 23\)"):
        cone(torch.randn(1, 2, 24, 24))


def test_in_bfloat16_the_cone_agrees_with_the_model_as_closely_as_bfloat16_allows():
    model = torchvision.models.resnet18(num_classes=3).eval()
    images = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    cone = Cone(model, "layer2", (3, 64, 64), (3, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16), capture(model, ["layer2"], stop=True) as acts:
        acts.forward(images)
        got = cone(images)
    torch.testing.assert_close(
        got.float(), acts["layer2"][:, :, 3:4, 3:4].float(), atol=0.05, rtol=0.05
    )


def test_unit_images_run_the_model_itself_when_the_cone_would_save_little():
    """A layer whose position reads almost its whole input: the cone's work is over
    `CONE_WORK`."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 5))
    canvas = units.unit_canvas(model, "2", (1, 7, 7))
    assert Cone(model, "2", (1, canvas.side, canvas.side), (canvas.y, canvas.x)).work > 0.75
    runner, position = units._runner(model, "2", 1, canvas)
    assert runner is model and position == (canvas.y, canvas.x)
