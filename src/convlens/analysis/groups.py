"""Neuron groups (Olah et al. 2018, "The Building Blocks of Interpretability"): a layer's
activations on one image factorised into a few groups by non-negative matrix factorisation,
each group a spatial map (where in the image it fires) and a direction in channel space (which
feature maps fire together there)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from convlens._errors import ConvlensError
from convlens._shown import Shown
from convlens.analysis.filters import layer_maps
from convlens.attribution.cam import not_spatial
from convlens.models.card import ModelCard, card_of
from convlens.models.preprocess import Preprocess
from convlens.synthesis.optimize import input_space
from convlens.synthesis.units import UNIT_LR, UNIT_STEPS, synthesize_directions


@dataclass(frozen=True)
class NeuronGroups(Shown):
    """`maps` (groups, h, w): each group's strength at each position of `layer`'s map;
    `directions` (groups, K): each group's weight on each channel; `image` (C, H, W, input
    space) and the model's `card`, for the picture; `error`: the factorisation's relative
    reconstruction error ||A - maps x directions|| / ||A||; `icons` (groups, C, s, s) in [0, 1]
    the image synthesised for each direction (`synthesize_directions`), None when not asked."""

    layer: str
    maps: torch.Tensor
    directions: torch.Tensor
    error: float
    image: torch.Tensor
    card: ModelCard
    icons: torch.Tensor | None = None


def neuron_groups(
    model: nn.Module,
    image: torch.Tensor,
    layer: str,
    groups: int = 6,
    *,
    seed: int = 0,
    icons: bool = False,
    icon_steps: int = UNIT_STEPS,
) -> NeuronGroups:
    """Factorise the output (K, h, w) of `layer` for one image (C, H, W) into `groups` groups
    with scikit-learn's NMF (NNDSVD initialisation, fixed seed): the h*w positions by K
    channels matrix A ~ W H, W >= 0 the groups' spatial maps, H >= 0 their channel directions.
    Negative activations (a layer before its ReLU) are clipped to 0 first. NMF's convergence
    warnings are silenced: the result's `error` says how well the groups explain the layer.

    Example:
        >>> found = neuron_groups(model, image, "features.13", groups=4)  # doctest: +SKIP
        >>> found.directions[0].topk(3).indices  # the maps that make up group 0
    """
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    for name, value in (("groups", groups), ("icon_steps", icon_steps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    acts = layer_maps(model, image, [layer])[layer].detach().float().cpu()
    if acts.dim() != 3:
        raise not_spatial(model, image[None], layer, tuple(acts.shape))
    channels, height, width = acts.shape
    if groups > min(channels, height * width):
        raise ConvlensError(
            f"groups must be at most {min(channels, height * width)} for {layer!r} "
            f"({channels} channels, {height}x{width} positions), got {groups}"
        )
    matrix = acts.clamp_min(0).reshape(channels, -1).T.numpy().astype(np.float64)
    if not matrix.any():
        raise ConvlensError(f"{layer!r} is zero everywhere on this image: nothing to group")
    nmf = NMF(n_components=groups, init="nndsvd", random_state=seed, max_iter=1000)
    with warnings.catch_warnings():  # the result's `error` says how well it fits
        warnings.simplefilter("ignore", ConvergenceWarning)
        spatial = nmf.fit_transform(matrix)
    error = float(np.linalg.norm(matrix - spatial @ nmf.components_) / np.linalg.norm(matrix))
    maps = torch.from_numpy(spatial.T.reshape(groups, height, width)).float()
    directions = torch.from_numpy(nmf.components_).float()
    drawn = None
    if icons:
        space = input_space(model, image.shape)
        drawn = direction_icons(model, layer, directions, icon_steps, seed, None, space)
    return NeuronGroups(layer, maps, directions, error, image.detach().cpu(), card_of(model), drawn)


def direction_icons(
    model: nn.Module,
    layer: str,
    directions: torch.Tensor,
    steps: int = UNIT_STEPS,
    seed: int = 0,
    batch_size: int | None = None,
    preprocess: Preprocess | None = None,
    progress: bool = False,
    fast: bool = False,
) -> torch.Tensor:
    """(M, C, s, s) in [0, 1]: an image per direction (row of `directions`), optimised together
    (`batch_size` at a time; None: as many as fit `PIXEL_BUDGET`) on `layer`'s unit canvas,
    maximising `direction_neuron` with cosine power 1; a direction with no weight (all zero)
    gets a grey image. `preprocess`: the input space (`input_space`; None: `resolve_model`'s);
    `progress`: a bar over each chunk's steps; `fast`: the model in bfloat16 (`synthesize`)."""
    alive = directions.abs().sum(dim=1) > 0
    if not alive.any():
        raise ConvlensError(f"every direction for {layer!r} is zero: nothing to synthesise")
    made, _ = synthesize_directions(
        model,
        layer,
        directions[alive],
        steps=steps,
        lr=UNIT_LR,
        seed=seed,
        batch_size=batch_size,
        preprocess=preprocess,
        progress=progress,
        fast=fast,
    )
    icons = torch.full((len(directions), *made.images.shape[1:]), 0.5)
    icons[alive] = made.images.float().cpu()
    return icons
