"""Invariance (Zeiler & Fergus Fig. 5): how far the representation moves when an image is
translated, scaled or rotated, at a low and a high layer, and what happens to the probability of
the true class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from convlens._errors import ConvlensError, unknown_name_error
from convlens._shown import Shown
from convlens.hooks import capture, model_device, preserved_state

IDENTITY = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}
DEFAULT_VALUES = {
    "translate": tuple(range(-12, 13, 2)),  # pixels, vertical shift as in Fig. 5 (a1)
    "scale": (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4),
    "rotate": tuple(range(0, 361, 30)),  # degrees
}


@dataclass(frozen=True)
class Invariance(Shown):
    """`distance[layer]` (V, N): ||f(T_v x) - f(x)|| / ||f(x)|| per transformation value and
    image (relative, so layers and models compare); `prob` (V, N): the true class's probability
    on the transformed image."""

    transform: str
    values: list[float]
    distance: dict[str, torch.Tensor]
    prob: torch.Tensor


def transformed(images: torch.Tensor, transform: str, value: float) -> torch.Tensor:
    """Images shifted down by `value` pixels, scaled by `value` about the centre or rotated by
    `value` degrees clockwise; uncovered pixels get 0 (the mean for normalised input). The identity
    returns the images themselves."""
    if transform not in IDENTITY:
        raise unknown_name_error("transform", transform, list(IDENTITY))
    if value == IDENTITY[transform]:
        return images
    arguments = {"angle": 0.0, "translate": [0, 0], "scale": 1.0, "shear": [0.0, 0.0]}
    if transform == "translate":
        arguments["translate"] = [0, round(value)]
    elif transform == "scale":
        arguments["scale"] = float(value)
    else:
        arguments["angle"] = float(value)
    return TF.affine(images, **arguments, interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)


def invariance(
    model: nn.Module,
    images: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    layers: Sequence[str],
    transform: str = "translate",
    values: Sequence[float] | None = None,
) -> Invariance:
    """Feature distances and true-class probabilities over a sweep of one transformation.

    Example:
        >>> inv = invariance(model, images, labels, ["features.1", "features.13"], "rotate")  # doctest: +SKIP
        >>> inv.distance["features.13"].shape  # (values, images)
        torch.Size([13, 5])
    """
    values = list(values if values is not None else DEFAULT_VALUES.get(transform, ()))
    if not values:
        raise unknown_name_error("transform", transform, list(IDENTITY))
    device = model_device(model)
    images = images.to(device)
    labels = torch.as_tensor(labels, device=device).long()
    distance: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    probs = []
    with preserved_state(model), torch.inference_mode(), capture(model, layers) as acts:
        logits = model(images)
        if bool(((labels < 0) | (labels >= logits.shape[1])).any()):
            raise ConvlensError("labels must be classes of the model (0..classes-1)")
        reference = {layer: acts[layer].flatten(1).float() for layer in layers}
        for value in values:
            logits = model(transformed(images, transform, value))
            probs.append(logits.float().softmax(dim=1).gather(1, labels[:, None])[:, 0].cpu())
            for layer in layers:
                moved = (acts[layer].flatten(1).float() - reference[layer]).norm(dim=1)
                distance[layer].append(
                    (moved / reference[layer].norm(dim=1).clamp_min(1e-12)).cpu()
                )
    return Invariance(
        transform,
        [float(v) for v in values],
        {layer: torch.stack(rows) for layer, rows in distance.items()},
        torch.stack(probs),
    )
