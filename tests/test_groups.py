"""Neuron groups: NMF of one image's activations finds groups planted in them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convlens as cl


def planted() -> torch.Tensor:
    """Activations (4, 6, 6): maps 0 and 1 fire on the left half, maps 2 and 3 on the right,
    in fixed proportions, so exactly two groups explain them."""
    acts = torch.zeros(4, 6, 6)
    acts[0, :, :3], acts[1, :, :3] = 1.0, 0.5
    acts[2, :, 3:], acts[3, :, 3:] = 2.0, 1.0
    return acts * torch.linspace(0.5, 1.5, 6)[None, :, None]  # stronger lower down


def test_nmf_recovers_two_planted_groups_where_and_in_which_channels_they_fire():
    net = nn.Sequential(nn.Identity())  # layer "0" outputs the image: the planted activations
    found = cl.neuron_groups(net, planted(), "0", groups=2)
    assert found.error < 1e-4
    sides = {}
    for values, direction in zip(found.maps, found.directions):
        left, right = values[:, :3].sum(), values[:, 3:].sum()
        side = "left" if left > right else "right"
        assert min(left, right) < 1e-4 * max(left, right)  # all of a group on one side
        sides[side] = set(direction.argsort(descending=True)[:2].tolist())
        ratio = direction[[0, 2][side == "right"]] / direction[[1, 3][side == "right"]]
        assert float(ratio) == pytest.approx(2.0, rel=1e-3)  # the planted proportions
    assert sides == {"left": {0, 1}, "right": {2, 3}}


def test_neuron_groups_refuse_bad_requests_before_factorising():
    net = nn.Sequential(nn.Identity(), nn.Flatten())
    with pytest.raises(ValueError, match="at most 4"):
        cl.neuron_groups(net, planted(), "0", groups=5)
    with pytest.raises(ValueError, match="groups must be an integer"):
        cl.neuron_groups(net, planted(), "0", groups=0)
    with pytest.raises(cl.ConvlensError, match="no spatial map"):
        cl.neuron_groups(net, planted(), "1")
    with pytest.raises(cl.ConvlensError, match="zero everywhere"):
        cl.neuron_groups(net, torch.zeros(4, 6, 6), "0", groups=2)
