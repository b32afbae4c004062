"""What an attribution method returns: a tensor that also says what it is and what it was made
from, so that it can show itself (`convlens._shown`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convlens._shown import Shown
from convlens.models.card import ModelCard, card_of
from convlens.targets import Target


@dataclass(frozen=True)
class Origin:
    """What a map was made from: the model's card, the images (input space; the caller's
    tensor, not a copy) and the target."""

    card: ModelCard
    images: torch.Tensor
    target: Target


def origin(model: nn.Module, images: torch.Tensor, target: Target) -> Origin:
    """The origin of maps of `images` by `model` for `target`."""
    return Origin(card_of(model), images.detach(), target)


class AttributionMap(Shown, torch.Tensor):
    """An attribution map: a tensor of the documented shape, plus `method` (its name), `layer`
    (the layer a class activation map was taken at; None for pixel-space methods) and `origin`.
    Every operation on it returns a plain tensor, so nothing downstream sees the subclass; in a
    notebook it shows each image with its map.

    Example:
        >>> cam = grad_cam(model, images, 3)  # doctest: +SKIP
        >>> cam.layer, cam.shape  # doctest: +SKIP
        ('features.11', torch.Size([8, 224, 224]))
    """

    __torch_function__ = torch._C._disabled_torch_function_impl
    method: str
    layer: str | None
    origin: Origin


def labelled(
    values: torch.Tensor, method: str, made_from: Origin, layer: str | None = None
) -> AttributionMap:
    """`values` as an AttributionMap of `method` (at `layer`), made from `made_from`."""
    result = values.detach().as_subclass(AttributionMap)
    result.method = method
    result.layer = layer
    result.origin = made_from
    return result
