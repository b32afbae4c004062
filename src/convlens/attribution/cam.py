"""Class activation maps from a layer's activations `A` (N, K, h, w) and the target's gradient
there `g`: Grad-CAM (Selvaraju 2017), Grad-CAM++ (Chattopadhyay 2018), LayerCAM (Jiang 2021)
and guided Grad-CAM, each one forward and a backward that ends at the layer (nothing below it
is differentiated). Score-CAM, which needs no gradient, is in `convlens.attribution.score`.

Every map is `(N, H, W)` upsampled bilinearly (align_corners=False) to the input, or `(N, h, w)`
with `upsample=False`. `layer=None` takes the last default layer: the last conv layer's
rectified output, or a staged network's last stage (a ResNet's `layer4`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from convlens._errors import ConvlensError
from convlens.attribution.backward import Backward, backward, check_images
from convlens.attribution.pixel import guided_backprop
from convlens.attribution.result import AttributionMap, Origin, labelled, origin
from convlens.models.layers import default_layers, trace_layers
from convlens.targets import Target


def cam_layer(model: nn.Module, layer: str | None) -> str:
    """`layer`, or the default: the last of `default_layers` (a spatial map)."""
    if layer is not None:
        return layer
    found = default_layers(model)
    if not found:
        raise ConvlensError("the model has no conv layer; name a layer with a spatial map")
    return found[-1]


def not_spatial(model: nn.Module, images: torch.Tensor, layer: str, shape: tuple) -> ConvlensError:
    """The error for a layer without an (N, K, h, w) output, naming the layers that have one."""
    traced = trace_layers(model, tuple(images.shape[1:]))
    spatial = [
        name for name, info in traced.items() if info.output_shape and len(info.output_shape) == 3
    ]
    return ConvlensError(
        f"layer {layer!r} has output shape {shape}, not a spatial map (N, K, h, w); layers "
        f"with one: {', '.join(spatial[-8:]) or 'none'}"
    )


def layer_backward(
    model: nn.Module, images: torch.Tensor, target: Target, layer: str | None
) -> tuple[str, Backward]:
    """The layer's activations and the target's gradient there, checked to be spatial."""
    check_images(images)
    name = cam_layer(model, layer)
    found = backward(model, images, target, layer=name)
    if found.values.dim() != 4:
        raise not_spatial(model, images, name, tuple(found.values.shape))
    return name, found


def finish(
    cam: torch.Tensor, made_from: Origin, upsample: bool, method: str, layer: str
) -> AttributionMap:
    """A (N, h, w) map, upsampled to its images' size when asked, labelled."""
    if upsample:
        size = made_from.images.shape[-2:]
        cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return labelled(cam, method, made_from, layer)


def _cam(
    method: str,
    weights: Callable[[Backward], torch.Tensor],
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    layer: str | None,
    upsample: bool,
) -> AttributionMap:
    """ReLU(sum_k weights_k * A_k) for per-channel (or per-position) weights."""
    name, found = layer_backward(model, images, target, layer)
    values = (weights(found) * found.values).sum(1).clamp_min(0)
    return finish(values, origin(model, images, target), upsample, method, name)


def _grad_cam_weights(found: Backward) -> torch.Tensor:
    return found.grad.mean((2, 3), keepdim=True)


def _grad_cam_plus_plus_weights(found: Backward) -> torch.Tensor:
    """w_k = sum_hw ReLU(g) a, a = g^2 / (2 g^2 + sum_hw(A_k) g^3), 0 where g or the
    denominator is 0 (no epsilon)."""
    g, total = found.grad, found.values.sum((2, 3), keepdim=True)
    square = g * g
    denominator = 2 * square + total * square * g
    usable = (g != 0) & (denominator != 0)
    alpha = torch.where(usable, square / torch.where(usable, denominator, 1), 0)
    return (g.clamp_min(0) * alpha).sum((2, 3), keepdim=True)


def _layer_cam_weights(found: Backward) -> torch.Tensor:
    return found.grad.clamp_min(0)


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    layer: str | None = None,
    *,
    upsample: bool = True,
) -> AttributionMap:
    """Grad-CAM (Selvaraju 2017): ReLU(sum_k mean_hw(g_k) A_k), (N, H, W).

    Example:
        >>> grad_cam(model, images, 3).layer  # doctest: +SKIP
        'features.11'
    """
    return _cam("gradcam", _grad_cam_weights, model, images, target, layer, upsample)


def grad_cam_plus_plus(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    layer: str | None = None,
    *,
    upsample: bool = True,
) -> AttributionMap:
    """Grad-CAM++ (Chattopadhyay 2018): ReLU(sum_k w_k A_k) with w_k = sum_hw ReLU(g_k) a_k,
    a_k = g_k^2 / (2 g_k^2 + sum_hw(A_k) g_k^3), (N, H, W)."""
    return _cam("gradcam++", _grad_cam_plus_plus_weights, model, images, target, layer, upsample)


def layer_cam(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    layer: str | None = None,
    *,
    upsample: bool = True,
) -> AttributionMap:
    """LayerCAM (Jiang 2021): ReLU(sum_k ReLU(g_k) * A_k), (N, H, W)."""
    return _cam("layercam", _layer_cam_weights, model, images, target, layer, upsample)


def guided_grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    layer: str | None = None,
    *,
    strict: bool = False,
) -> AttributionMap:
    """Guided Grad-CAM (Selvaraju 2017): guided backprop times the upsampled Grad-CAM,
    (N, C, H, W).

    Example:
        >>> guided_grad_cam(model, images, 3).shape  # doctest: +SKIP
        torch.Size([8, 3, 224, 224])
    """
    cam = grad_cam(model, images, target, layer)
    guided = guided_backprop(model, images, target, strict=strict)
    values = guided * cam[:, None].to(guided.device)
    return labelled(values, "guided-gradcam", cam.origin, cam.layer)
