"""What an attribution method returns: a tensor that also says what it is."""

from __future__ import annotations

import torch


class AttributionMap(torch.Tensor):
    """An attribution map: a tensor of the documented shape, plus `method` (its name) and `layer`
    (the layer a class activation map was taken at; None for pixel-space methods). Every
    operation on it returns a plain tensor, so nothing downstream sees the subclass.

    Example:
        >>> cam = grad_cam(model, images, 3)  # doctest: +SKIP
        >>> cam.layer, cam.shape  # doctest: +SKIP
        ('features.11', torch.Size([8, 224, 224]))
    """

    __torch_function__ = torch._C._disabled_torch_function_impl
    method: str
    layer: str | None


def labelled(values: torch.Tensor, method: str, layer: str | None = None) -> AttributionMap:
    """`values` as an AttributionMap of `method` (at `layer`)."""
    result = values.detach().as_subclass(AttributionMap)
    result.method = method
    result.layer = layer
    return result
