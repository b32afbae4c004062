"""Capture hooks: removed on exit also when the model raises, modes restored, clones kept."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyResNet
from torch import nn

import convlens as cl
from convlens.hooks import capture, preserved_state


class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def no_hooks(model: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in model.modules()
    )


def test_hooks_removed_and_mode_restored_when_the_model_raises():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), Exploding()).train()
    model[0].eval()  # a mixed mode must come back exactly
    with (
        pytest.raises(RuntimeError, match="boom"),
        preserved_state(model),
        capture(model, ["0", "1"]),
    ):
        assert not model.training
        model(torch.randn(1, 1, 5, 5))
    assert no_hooks(model)
    assert model.training and not model[0].training and model[1].training


def test_in_place_relu_does_not_change_the_captured_conv_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True))
    x = torch.randn(2, 1, 6, 6)
    expected = model[0](x).detach()
    with capture(model, ["0"]) as acts:
        model(x)
    assert (expected < 0).any()
    torch.testing.assert_close(acts["0"], expected)


def test_a_reused_module_is_refused_as_ambiguous():
    model = TinyResNet()
    with pytest.raises(cl.ConvlensError, match="called more than once"), capture(model, ["relu"]):
        model(torch.randn(1, 2, 16, 16))
    assert no_hooks(model)


def test_unknown_layer_names_close_matches():
    model = TinyResNet()
    with pytest.raises(cl.ConvlensError, match="closest: 'conv1'"), capture(model, ["conv_1"]):
        pass
