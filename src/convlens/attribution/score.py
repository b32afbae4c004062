"""Score-CAM (Wang et al. 2020): each channel of a layer, upsampled and scaled to [0, 1], masks
the image; the target's softmax probability on the masked image weighs that channel.

Batched: the masked images of every (image, channel) pair go through the model `batch_size` at
a time, whatever the number of images and channels, and a channel that is constant on an image
(its mask is 0, so its term is 0) is not run at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from convlens._errors import ConvlensError
from convlens.attribution.backward import as_input, check_images
from convlens.attribution.cam import cam_layer, not_spatial
from convlens.attribution.result import AttributionMap, labelled, origin
from convlens.hooks import capture, preserved_state
from convlens.models.fusion import bfloat16_copy, fold_batchnorm
from convlens.targets import Target, class_indices, target_units

DEFAULT_BATCH = (
    16  # masked images per forward: faster than 64 on CPU for resnet18, as fast for alexnet
)


def unit_scaled(maps: torch.Tensor) -> torch.Tensor:
    """Each (h, w) map of (B, h, w) min-max scaled to [0, 1]; 0 where it is constant."""
    low = maps.amin((1, 2), keepdim=True)
    span = maps.amax((1, 2), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1), 0)


def _pairs(live: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (image, channel) pairs where `live` (N, K) is true, `batch_size` at a time."""
    images, channels = live.nonzero(as_tuple=True)
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size], channels[start : start + batch_size]


def _forward(model: nn.Module, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output and the model's output for x."""
    with capture(model, [layer]) as acts:
        logits = acts.forward(x)
    return acts[layer], logits


def _runner(model: nn.Module, example: torch.Tensor, fast: bool) -> nn.Module:
    """The network the masked images go through: batch norm folded, bfloat16 when `fast`."""
    runner = fold_batchnorm(model, example)
    return bfloat16_copy(runner, model) if fast else runner


def _check(images: torch.Tensor, target: Target, batch_size: int) -> None:
    check_images(images)
    if target_units(target, len(images)) is not None:
        raise ConvlensError(
            "Score-CAM weighs channels by a class probability; for a unit use grad_cam"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def score_cam(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    layer: str | None = None,
    *,
    upsample: bool = True,
    batch_size: int = DEFAULT_BATCH,
    fast: bool = False,
) -> AttributionMap:
    """Score-CAM: ReLU(sum_k s_k M_k), M_k the layer's channel k upsampled bilinearly to the
    input and min-max scaled to [0, 1] (0 where constant), s_k the target's softmax probability
    for the image times M_k. (N, H, W), or with `upsample=False` (N, h, w), the same weights on
    the layer-resolution maps scaled to [0, 1]. At most `batch_size` masked images are in
    memory at once. The masked images go through a copy of the model with batch norm folded
    into the convolutions (`convlens.models.fusion`), in bfloat16 with `fast` (weights close
    to exact, 1.5-3x faster on CPUs with bfloat16 instructions).

    Example:
        >>> score_cam(model, images, 3, batch_size=32).shape  # doctest: +SKIP
        torch.Size([8, 224, 224])
    """
    _check(images, target, batch_size)
    name = cam_layer(model, layer)
    x = as_input(images, model)
    size = tuple(x.shape[-2:])
    with preserved_state(model, training=False, frozen=True), torch.inference_mode():
        acts, logits = _forward(model, x, name)
        if acts.dim() != 4:
            raise not_spatial(model, images, name, tuple(acts.shape))
        if logits is None or logits.dim() != 2:
            raise ConvlensError(
                f"Score-CAM needs (N, classes) outputs; the model returns {tuple(logits.shape)}"
            )
        classes = class_indices(target, len(x), logits.shape[1]).to(x.device)
        runner = _runner(model, x[:1], fast)
        cam = acts.new_zeros((len(x), *(size if upsample else acts.shape[-2:])))
        for index, channel in _pairs(acts.amax((2, 3)) > acts.amin((2, 3)), batch_size):
            low = acts[index, channel]
            masks = unit_scaled(
                F.interpolate(low[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            )
            masked = (x[index] * masks[:, None]).contiguous(memory_format=torch.channels_last)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=fast):
                scores = runner(masked).float().softmax(1)
            weights = scores[torch.arange(len(index)), classes[index]][:, None, None]
            cam.index_add_(0, index, weights * (masks if upsample else unit_scaled(low)))
    made_from = origin(model, images, target)
    return labelled(
        cam.clamp_min(0).clone(), "scorecam", made_from, name
    )  # clone: not an inference tensor
