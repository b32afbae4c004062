"""Unit-sized synthesis: the canvas holds the receptive field, the redirected ReLU gradient moves
silent units, and on the trained network the unit images beat the best test image."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import Subset

import convlens as cl
from convlens.hooks import capture
from convlens.models.layers import default_layers
from convlens.rules import backward_rule
from convlens.synthesis import synthesize_units, unit_canvas


@pytest.mark.parametrize("layer", ["features.1", "features.4", "features.7", "features.11"])
def test_the_canvas_is_the_smallest_input_holding_a_whole_receptive_field(layer):
    model = torchvision.models.alexnet().eval()
    canvas = unit_canvas(model, layer, (3, 224, 224))
    field = cl.receptive_field(model, layer, (3, 224, 224))
    top, left, bottom, right = field.box(canvas.y, canvas.x)
    assert top >= 0 and left >= 0 and bottom <= canvas.side and right <= canvas.side
    assert canvas.side - field.size[0] < field.stride[0]  # no room for a smaller canvas
    with capture(model, [layer], stop=True) as acts, torch.no_grad():
        acts.forward(torch.zeros(1, 3, canvas.side, canvas.side))
    assert canvas.y < acts[layer].shape[-2] and canvas.x < acts[layer].shape[-1]


def test_a_receptive_field_larger_than_the_input_gets_the_input_and_its_centre():
    model = torchvision.models.resnet18().eval()
    assert unit_canvas(model, "layer4", (3, 224, 224)) == cl.synthesis.Canvas(224, 3, 3)
    assert unit_canvas(model, "maxpool", (3, 224, 224)).side == 14


@pytest.mark.parametrize("preset", ["lucid", "yosinski-2", "yosinski-4"])
def test_chunks_of_units_give_the_images_of_one_batch(preset):
    torch.manual_seed(0)
    model = torchvision.models.alexnet().eval()
    units = list(range(7))
    whole, _ = synthesize_units(model, "features.4", units, preset=preset, steps=4, seed=3)
    split, _ = synthesize_units(
        model, "features.4", units, preset=preset, steps=4, seed=3, batch_size=3
    )
    torch.testing.assert_close(split.inputs, whole.inputs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(split.trace, whole.trace, atol=1e-4, rtol=1e-4)
    assert split.objective == whole.objective and split.images.shape == whole.images.shape


def test_the_redirected_relu_gradient_follows_lucid():
    x = torch.tensor([[-1.0, 2.0, -3.0], [-1.0, -2.0, -3.0]], requires_grad=True)
    upstream = torch.tensor([[0.5, -1.0, -2.0], [0.5, -1.0, -2.0]])  # d loss / d relu(x)
    with backward_rule("redirected", whole=False):
        y = torch.relu(x)
    (grad,) = torch.autograd.grad(y, x, upstream)
    # image 0 has a live unit: the plain gradient; image 1 is silent everywhere: the gradient
    # passes except where it would push an already negative input lower (d loss > 0)
    torch.testing.assert_close(grad, torch.tensor([[0.0, -1.0, 0.0], [0.0, -1.0, -2.0]]))


def test_a_unit_silent_at_the_start_still_moves():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    with torch.no_grad():
        net[0].bias.fill_(-100.0)  # silent on every image the optimiser starts from
    made, _ = synthesize_units(net, "1", [0, 1], steps=3)
    assert made.images.flatten(1).std(dim=1).min() > 0  # the image moved (not flat grey)


@pytest.mark.slow
def test_unit_images_beat_the_best_test_image_for_nine_in_ten_firing_units(trained_default):
    from convlens.atlas.unit_images import UNIT_LR, UNIT_STEPS

    loaded, _ = trained_default
    data = Subset(cl.data.FashionMNIST("test", transform=loaded.transform), range(2000))
    layers = default_layers(loaded.model)
    best = cl.scan(loaded.model, data, layers, k=1)
    firing = beaten = 0
    for layer in layers:
        top1 = best[layer].values[:, 0]
        units = range(len(top1))
        made, canvas = synthesize_units(loaded, layer, units, steps=UNIT_STEPS, lr=UNIT_LR)
        with capture(loaded.model, [layer], stop=True) as acts, torch.no_grad():
            acts.forward(made.inputs)
        reached = acts[layer][list(units), list(units), canvas.y, canvas.x]
        fires = top1 > 0
        firing += int(fires.sum())
        beaten += int((reached > top1)[fires].sum())
        assert made.images.flatten(1).std(dim=1).min() > 0.02, layer  # none is flat
    assert beaten / firing >= 0.9, (beaten, firing)
