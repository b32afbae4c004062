"""Filters, feature maps and dead units against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import convlens as cl
from convlens import render
from convlens.models.layers import rectified_output


def test_feature_maps_equal_running_the_prefix_of_the_net(sequential_net):
    image = torch.randn(2, 20, 20)
    expected = sequential_net[:5](image.unsqueeze(0))[0]
    torch.testing.assert_close(cl.feature_maps(sequential_net, image, "4"), expected)


def test_filter_rms_by_hand():
    weight = torch.zeros(2, 1, 2, 2)
    weight[0] = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    weight[1, 0, 0, 0] = 2.0
    torch.testing.assert_close(cl.filter_rms(weight), torch.tensor([1.0, 1.0]))


def test_dead_units_match_a_per_image_loop():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3)
    with torch.no_grad():
        conv.bias[:] = torch.tensor([-100.0, 0.0, 100.0, -0.5])  # channel 0 never fires
    model = nn.Sequential(conv, nn.ReLU())
    images = torch.randn(37, 1, 6, 6)
    stats = cl.dead_units(
        model, TensorDataset(images, torch.zeros(37, dtype=torch.long)), ["1"], batch_size=8
    )["1"]
    expected = (
        torch.tensor(
            [[bool((model(img[None])[0, c] == 0).all()) for c in range(4)] for img in images]
        )
        .float()
        .mean(0)
    )
    torch.testing.assert_close(stats.zero_fraction, expected)
    assert stats.dead.tolist() == [True, False, False, False] and stats.images == 37
    with pytest.raises(ValueError, match="threshold"):
        cl.dead_units(model, TensorDataset(images), ["1"], threshold=2)


def test_rectified_output_finds_the_relu_after_each_conv(sequential_net):
    assert [rectified_output(sequential_net, c) for c in cl.conv_layers(sequential_net)] == [
        "1",
        "4",
        "6",
    ]


def test_first_layer_filter_grid_normalises_each_filter_on_its_own():
    weight = torch.stack([torch.arange(9.0).view(1, 3, 3), 100 * torch.arange(9.0).view(1, 3, 3)])
    image = render.filter_grid(weight, first_tile=3)  # one pixel per weight
    tiles = [image[1:4, 1:4, 0], image[1:4, 5:8, 0]]
    for tile in tiles:  # both span black to white despite the 100x scale difference
        assert tile.min() == 0 and tile.max() == 255
    np.testing.assert_array_equal(tiles[0], tiles[1])


def test_deeper_filter_grid_has_a_row_per_filter_of_its_strongest_input_channels():
    image = render.filter_grid(torch.randn(5, 11, 3, 3), deeper_tile=3)
    assert image.shape == (1 + 5 * 4, 1 + 8 * 4, 3)  # 8 of the 11 input channels
    weight = torch.zeros(1, 11, 3, 3)
    weight[0, 4, 1, 1] = -2.0  # the strongest slice, negative
    weight[0, 9] = 0.5  # the second, positive
    tiles = render.strongest_inputs(weight)
    torch.testing.assert_close(
        tiles[0, 0],
        torch.full((3, 3), 0.5).index_put_((torch.tensor(1), torch.tensor(1)), torch.tensor(0.0)),
    )
    torch.testing.assert_close(tiles[1, 0], torch.full((3, 3), 0.625))  # 0.5 of 2 above grey
    torch.testing.assert_close(tiles[2:], torch.full((6, 1, 3, 3), 0.5))  # the zero slices


def test_dead_units_give_the_accuracy_of_the_same_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 3))
    images, labels = torch.randn(41, 1, 6, 6), torch.randint(0, 3, (41,))
    labels[::5] = -1  # unlabelled items do not count
    stats = cl.dead_units(model, TensorDataset(images, labels), ["1"], batch_size=8)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    kept = labels >= 0
    assert stats.accuracy == pytest.approx(float((predicted[kept] == labels[kept]).float().mean()))
    assert cl.dead_units(model, TensorDataset(images), ["1"]).accuracy is None
