"""What an attribution method returns: a tensor that also says what it is and what it was made
from, so that it can show itself (`convlens._shown`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convlens._shown import MAX_IMAGES, Shown
from convlens.models.card import ModelCard, card_of
from convlens.targets import Target


@dataclass(frozen=True)
class Origin:
    """What a map was made from, for its picture: the model's card, a CPU copy of the first
    `MAX_IMAGES` images (input space; never the whole batch, which may sit on a GPU) and the
    target."""

    card: ModelCard
    images: torch.Tensor
    target: Target


def origin(model: nn.Module, images: torch.Tensor, target: Target) -> Origin:
    """The origin of maps of `images` by `model` for `target`."""
    shown = images[:MAX_IMAGES].detach().to("cpu", copy=True)
    return Origin(card_of(model), shown, target)


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

    def __reduce_ex__(self, protocol: int) -> object:
        """Saved (`torch.save`, pickle) as the plain tensor: loadable with weights_only=True."""
        return self.as_subclass(torch.Tensor).__reduce_ex__(protocol)

    def __deepcopy__(self, memo: dict) -> AttributionMap:
        """A copy of the values, with the same method, layer and origin."""
        values = self.as_subclass(torch.Tensor).clone()
        return labelled(values, self.method, self.origin, self.layer)


def labelled(
    values: torch.Tensor, method: str, made_from: Origin, layer: str | None = None
) -> AttributionMap:
    """`values` as an AttributionMap of `method` (at `layer`), made from `made_from`."""
    result = values.detach().as_subclass(AttributionMap)
    result.method = method
    result.layer = layer
    result.origin = made_from
    return result
