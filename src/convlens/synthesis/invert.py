"""Inverting a representation (Mahendran & Vedaldi 2015): find an image whose code at a layer
matches a given image's code, under natural-image priors.

    minimise  ||Phi(x) - Phi0||^2 / ||Phi0||^2  +  lambda_a * R_a(x)  +  lambda_tv * R_tv(x)

with R_a(x) = sum |x / B|^alpha / (H W) (the alpha-norm; alpha = 6) and
R_tv(x) = sum ((dx^2 + dy^2) / V^2)^(beta / 2) / (H W) (total variation; beta = 2), where B is
how far a valid pixel can lie from the mean (the paper fixes 80 of 0-255 for ImageNet; here it
comes from the model's normalisation, so it fits any data) and V = B / 6.5, the paper's
normalisation under which lambdas near 1 weigh data and priors alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convlens._progress import tqdm
from convlens._shown import Shown
from convlens.hooks import capture, model_device, preserved_state, resolve_layer
from convlens.models.loading import LoadedModel
from convlens.models.preprocess import Preprocess
from convlens.synthesis.optimize import resolve_model, total_variation

TV_RATIO = 6.5  # V = B / 6.5


def pixel_bound(prep: Preprocess) -> torch.Tensor:
    """B in input units (1, C, 1, 1): how far a valid pixel (0..1) lies from the mean at most."""
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    return torch.maximum(mean, 1 - mean) / std


@dataclass(frozen=True)
class Inversion(Shown):
    """`images` (N, C, H, W) in [0, 1], `inputs` in input space, `distance` (steps, N): the
    normalised feature distance ||Phi(x) - Phi0||^2 / ||Phi0||^2 per step; `originals` the
    images inverted, in [0, 1]."""

    images: torch.Tensor
    inputs: torch.Tensor
    distance: torch.Tensor
    layer: str
    originals: torch.Tensor | None = None


def feature_distance(code: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||code - target||^2 / ||target||^2 per image (N,)."""
    return (code - target).flatten(1).pow(2).sum(1) / target.flatten(1).pow(2).sum(1).clamp_min(
        1e-12
    )


def invert(
    model: nn.Module | LoadedModel,
    layer: str,
    images: torch.Tensor,
    *,
    steps: int = 300,
    lr: float = 0.05,
    alpha: float = 6.0,
    beta: float = 2.0,
    lambda_alpha: float = 1.0,
    lambda_tv: float = 1.0,
    seed: int = 0,
    preprocess: Preprocess | None = None,
    progress: bool = False,
) -> Inversion:
    """Reconstruct images (N, C, H, W) (or one (C, H, W)) from their code at `layer`.

    Example:
        >>> result = invert(loaded, "features.9", image)  # doctest: +SKIP
        >>> float(result.distance[-1, 0])  # how close the reconstruction's code is
        0.04

    The optimiser is Adam (the paper used momentum SGD with a hand-tuned schedule).
    """
    module, prep = resolve_model(model, preprocess)
    resolve_layer(module, layer)
    images = images.unsqueeze(0) if images.dim() == 3 else images
    device = model_device(module)
    images = images.to(device)
    bound = pixel_bound(prep).to(device)
    variation = bound / TV_RATIO
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(images.shape, generator=generator).to(device) * bound * 0.01
    x = start.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    pixels = images.shape[-2] * images.shape[-1]
    distances: list[torch.Tensor] = []
    with (
        preserved_state(module, training=False, frozen=True),
        capture(module, [layer], detach=False, stop=True) as acts,
    ):
        with torch.no_grad():
            acts.forward(images)
            target = acts[layer].detach()
        for _ in tqdm(range(steps), desc="invert", disable=not progress):
            acts.forward(x)
            distance = feature_distance(acts[layer], target)
            norm = (x / bound).abs().pow(alpha).flatten(1).sum(1) / pixels
            smooth = total_variation(x / variation, beta) / pixels
            loss = (distance + lambda_alpha * norm + lambda_tv * smooth).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            distances.append(distance.detach().cpu())
    final = x.detach()
    shown = prep.denormalize(final)
    return Inversion(shown, final, torch.stack(distances), layer, prep.denormalize(images.cpu()))
