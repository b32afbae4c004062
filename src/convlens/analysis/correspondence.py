"""Correspondence (Zeiler & Fergus Table 1): does occluding the same object part in different
images change the representation in a consistent way? For masks hiding one part in each image,
eps_i = x_i - x~_i at a layer and Delta = sum over ordered pairs i != j of
H(sign eps_i, sign eps_j), H the Hamming distance divided by the vector length. A lower Delta
than for random masks of the same size means the part is represented consistently."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from convlens._shown import Shown
from convlens.hooks import capture, model_device, preserved_state

Box = tuple[int, int, int, int]  # top, left, bottom, right (exclusive)


@dataclass(frozen=True)
class Correspondence(Shown):
    """Delta for the given masks and its mean and standard deviation over random masks."""

    layer: str
    delta: float
    random_mean: float
    random_std: float


def sign_change(eps: torch.Tensor) -> float:
    """Delta = sum over ordered pairs i != j of the normalised Hamming distance between
    sign(eps_i) and sign(eps_j); `eps` is (N, D)."""
    signs = eps.sign()
    differs = (signs[:, None, :] != signs[None, :, :]).float().mean(dim=2)
    return float(differs.sum())  # the diagonal is zero


def box_masks(boxes: Sequence[Box], size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) boolean masks, True inside each image's box."""
    masks = torch.zeros(len(boxes), *size, dtype=torch.bool)
    for mask, (top, left, bottom, right) in zip(masks, boxes):
        mask[max(top, 0) : bottom, max(left, 0) : right] = True
    return masks


def correspondence(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor | Sequence[Box],
    layer: str,
    *,
    draws: int = 20,
    seed: int = 0,
    fill: float = 0.0,
) -> Correspondence:
    """Delta for `masks` ((N, H, W) booleans, or one box per image) at `layer`, against `draws`
    random boxes of each mask's bounding-box size, placed at one random spot shared by all images
    per draw."""
    size = tuple(images.shape[-2:])
    masks = masks if isinstance(masks, torch.Tensor) else box_masks(masks, size)
    generator = torch.Generator().manual_seed(seed)
    delta = _delta(model, images, masks, layer, fill)
    random = []
    heights = [int(m.any(dim=1).sum()) for m in masks]
    widths = [int(m.any(dim=0).sum()) for m in masks]
    for _ in range(draws):
        top = int(torch.randint(size[0] - max(heights) + 1, (1,), generator=generator))
        left = int(torch.randint(size[1] - max(widths) + 1, (1,), generator=generator))
        boxes = [(top, left, top + h, left + w) for h, w in zip(heights, widths)]
        random.append(_delta(model, images, box_masks(boxes, size), layer, fill))
    spread = torch.tensor(random)
    spread_std = float(spread.std()) if len(random) > 1 else 0.0
    return Correspondence(layer, delta, float(spread.mean()), spread_std)


def _delta(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor, layer: str, fill: float
) -> float:
    device = model_device(model)
    images = images.to(device)
    occluded = torch.where(masks[:, None].to(device), torch.tensor(fill, device=device), images)
    with preserved_state(model), torch.inference_mode(), capture(model, [layer], stop=True) as acts:
        acts.forward(images)
        clean = acts[layer].flatten(1).float()
        acts.forward(occluded)
        eps = clean - acts[layer].flatten(1).float()
    return sign_change(eps)
