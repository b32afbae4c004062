"""Receptive fields and layer tables, checked against gradient-support probing and hand values."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import TinyResNet, small_sequential
from torch import nn

import convlens as cl
from convlens.hooks import capture


def probed_box(
    model: nn.Module, layer: str, size: int, y: int, x: int
) -> tuple[int, int, int, int]:
    """The bounding box of the input pixels that reach position (y, x) of `layer`, found by
    back-propagating from that single activation through all-positive weights."""
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.abs() + 0.05)
    image = torch.ones(1, 2, size, size, requires_grad=True)
    with capture(model, [layer], detach=False) as acts:
        model(image)
    acts[layer][0, :, y, x].sum().backward()
    support = image.grad[0].abs().sum(0).nonzero()
    return (
        int(support[:, 0].min()),
        int(support[:, 1].min()),
        int(support[:, 0].max()) + 1,
        int(support[:, 1].max()) + 1,
    )


def clipped(box: tuple[int, int, int, int], size: int) -> tuple[int, int, int, int]:
    top, left, bottom, right = box
    return max(top, 0), max(left, 0), min(bottom, size), min(right, size)


@pytest.mark.parametrize(
    ("build", "layer", "corners"),
    [
        (lambda: small_sequential(nn.AvgPool2d), "0", True),
        (lambda: small_sequential(nn.AvgPool2d), "2", True),
        (lambda: small_sequential(nn.AvgPool2d), "3", False),
        (lambda: small_sequential(nn.AvgPool2d), "6", False),
        (lambda: TinyResNet(nn.AvgPool2d), "conv2", True),
        (lambda: TinyResNet(nn.AvgPool2d), "conv3", True),
        (lambda: TinyResNet(nn.AvgPool2d), "down", True),
    ],
)
def test_receptive_field_matches_gradient_support(build, layer, corners):
    # Average pooling has the geometry of max pooling but passes gradient to its whole window,
    # so the gradient support is the full receptive field (clipped to the image).
    size = 48
    model = build()
    rf = cl.receptive_field(model, layer, (2, size, size))
    with capture(model, [layer]) as acts:
        model(torch.zeros(1, 2, size, size))
    height, width = acts[layer].shape[-2:]
    positions = [(height // 2, width // 2), (height // 2 - 1, width // 2 + 1)]
    if corners:  # after a dilated conv, a tap that lands in padding can skip the image border
        positions += [(0, 0), (height - 1, width - 1), (1, width - 2)]
    for y, x in positions:
        assert probed_box(build(), layer, size, y, x) == clipped(rf.box(y, x), size), (y, x)


def test_residual_sum_takes_the_union_of_both_paths():
    # After `conv3(out) + down(out)` the field is the larger of the two aligned paths.
    model = TinyResNet()
    conv3 = cl.receptive_field(model, "conv3", 32)
    down = cl.receptive_field(model, "down", 32)
    assert down.size[0] < conv3.size[0]
    assert conv3.offset[0] <= down.offset[0]


def test_max_and_average_pool_have_the_same_geometry():
    for layer in ["2", "3", "5"]:
        assert cl.receptive_field(
            small_sequential(nn.MaxPool2d), layer, (2, 40, 40)
        ) == cl.receptive_field(small_sequential(nn.AvgPool2d), layer, (2, 40, 40))


def test_alexnet_values_worked_out_by_hand():
    # conv11/4 p2 → pool3/2 → conv5 p2 → pool3/2 → conv3 p1 (x3): sizes 11, 19, 51, 67, 99, 131, 163.
    model = torchvision.models.alexnet()
    expected = {"features.0": (11, 4, -2), "features.2": (19, 8, -2), "features.3": (51, 8, -18),
                "features.5": (67, 16, -18), "features.6": (99, 16, -34), "features.8": (131, 16, -50),
                "features.10": (163, 16, -66), "features.12": (195, 32, -66)}  # fmt: skip
    infos = cl.trace_layers(model, 224)
    for layer, (size, stride, offset) in expected.items():
        rf = infos[layer].receptive_field
        assert (rf.size, rf.stride, rf.offset) == ((size,) * 2, (stride,) * 2, (offset,) * 2), layer


def test_vgg16_values_worked_out_by_hand():
    # Each 3x3/p1 conv adds 2*stride to the size and -stride to the offset; each 2x2 pool doubles the stride.
    infos = cl.trace_layers(torchvision.models.vgg16(), 224)
    assert infos["features.28"].receptive_field.size == (196, 196)  # conv5_3
    assert infos["features.28"].receptive_field.stride == (16, 16)
    assert infos["features.28"].receptive_field.offset == (-90, -90)
    assert infos["features.30"].receptive_field.size == (212, 212)  # pool5
    assert infos["features.30"].output_shape == (512, 7, 7)


def test_resnet18_layer4_receptive_field():
    rf = cl.receptive_field(torchvision.models.resnet18(), "layer4", 224)
    assert rf.size == (435, 435) and rf.stride == (32, 32)


def test_unknown_layer_lists_close_matches():
    with pytest.raises(cl.ConvlensError, match=r"closest: 'features\.10'"):
        cl.receptive_field(torchvision.models.alexnet(), "features.100", 224)


def test_trace_leaves_no_hooks_and_restores_mode():
    model = TinyResNet().train()
    model.conv1.eval()
    cl.trace_layers(model, 32)
    assert model.training and not model.conv1.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet18", ["maxpool", "layer1", "layer2", "layer3", "layer4"]),
        ("regnet_x_400mf", ["stem", *(f"trunk_output.block{i}" for i in range(1, 5))]),
        ("convnext_tiny", ["features.0", "features.1", "features.3", "features.5", "features.7"]),
        ("alexnet", ["features.1", "features.4", "features.7", "features.9", "features.11"]),
    ],
)
def test_default_layers_are_the_stem_and_stages_of_deep_networks(name, expected):
    import torchvision

    from convlens.models.layers import default_layers

    assert default_layers(torchvision.models.get_model(name)) == expected


def test_parallel_branches_are_not_stages():
    import torchvision

    from convlens.models.layers import conv_layers, default_layers, stages

    model = torchvision.models.googlenet(init_weights=False, aux_logits=False)
    assert stages(model) == [] and len(default_layers(model)) == len(conv_layers(model))
