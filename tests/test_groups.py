"""Neuron groups: NMF of one image's activations finds groups planted in them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convlens as cl
from convlens.data.fashion_mnist import FashionMNIST
from convlens.hooks import capture


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
    with pytest.raises(cl.ConvlensError, match="at most 4"):
        cl.neuron_groups(net, planted(), "0", groups=5)
    with pytest.raises(ValueError, match="groups must be an integer"):
        cl.neuron_groups(net, planted(), "0", groups=0)
    with pytest.raises(cl.ConvlensError, match="not a spatial map"):
        cl.neuron_groups(net, planted(), "1")
    with pytest.raises(cl.ConvlensError, match="zero everywhere"):
        cl.neuron_groups(net, torch.zeros(4, 6, 6), "0", groups=2)


def test_direction_objectives_equal_the_projection_computed_by_hand():
    torch.manual_seed(0)
    acts = {"L": torch.randn(2, 3, 4, 5)}
    vector = torch.tensor([1.0, -2.0, 2.0])
    unit = vector / 3.0
    by_hand = torch.einsum("nkhw,k->nhw", acts["L"], unit)
    mean = cl.synthesis.direction("L", vector)(acts, None)
    assert torch.allclose(mean, by_hand.mean(dim=(1, 2)), atol=1e-6)
    centre = cl.synthesis.direction_neuron("L", vector)(acts, None)
    assert torch.allclose(centre, by_hand[:, 2, 2], atol=1e-6)
    cosine = by_hand[:, 1, 3] / acts["L"][:, :, 1, 3].norm(dim=1)
    powered = cl.synthesis.direction_neuron("L", vector, 1, 3, cosine_power=2)(acts, None)
    assert torch.allclose(powered, by_hand[:, 1, 3] * cosine.clamp_min(0.1) ** 2, atol=1e-6)
    per_image = torch.stack([vector, -vector])  # one direction per image
    both = cl.synthesis.direction_neuron("L", per_image)(acts, None)
    assert torch.allclose(both, by_hand[:, 2, 2] * torch.tensor([1.0, -1.0]), atol=1e-6)
    with pytest.raises(cl.ConvlensError, match=r"give \(3,\) or \(2, 3\)"):
        cl.synthesis.direction("L", torch.ones(4))(acts, None)


def test_each_group_icon_points_its_layer_along_its_own_direction_more_than_the_others(
    trained_default,
):
    loaded, _ = trained_default
    model, transform = loaded.model, loaded.transform
    image = FashionMNIST("test", transform=transform)[0][0]
    found = cl.neuron_groups(model, image, "features.13", 4, icons=True)
    assert found.icons.shape == (4, 1, 28, 28)
    assert bool((found.icons.std(dim=(1, 2, 3)) > 0.05).all())  # none flat
    with capture(model, ["features.13"]) as acts, torch.no_grad():
        acts.forward(transform.normalize(found.icons))
    centre = acts["features.13"][:, :, 3, 3]  # the canvas position of a 7x7 map: (icons, K)
    cosines = F.normalize(centre, dim=1) @ F.normalize(found.directions, dim=1).T
    own = cosines.diagonal().clone()
    assert bool((own > cosines.fill_diagonal_(-1).amax(dim=1)).all())
