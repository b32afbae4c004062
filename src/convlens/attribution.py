"""Pixel-space attributions: gradient, saliency (Simonyan 2014), deconvnet (Zeiler & Fergus
2014) and guided backprop (Springenberg 2015), all one backward pass with a ReLU rule.

`target` is a class index (an int, or one per image), a `Unit`, or one Unit per image. A class
target back-propagates from its pre-softmax score; a Unit target keeps that one activation of its
layer, zeroes every other, and projects it down.
"""

from __future__ import annotations

import torch
from torch import nn

from convlens._errors import ConvlensError
from convlens.hooks import capture, model_device, preserved_state
from convlens.rules import backward_rule
from convlens.targets import Target, Unit, class_indices, target_units


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor (N, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        hint = " (one image: add a batch axis with image[None])" if images.dim() == 3 else ""
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}{hint}")


def _unit_seeds(
    units: list[Unit], activations: dict[str, torch.Tensor], keep_value: bool
) -> dict[str, torch.Tensor]:
    """One gradient seed per captured layer: zero except each image's chosen activation, which is
    1 (a derivative) or the activation itself (a deconvnet projection)."""
    seeds = {layer: torch.zeros_like(act) for layer, act in activations.items()}
    for i, unit in enumerate(units):
        act = activations[unit.layer][i]
        if act.dim() != 3:
            if unit.y is not None or act.dim() != 1:
                raise ConvlensError(
                    f"layer {unit.layer!r} has output shape {tuple(act.shape)}; a Unit needs (C, H, W) or (C,)"
                )
            position = (unit.channel,)
        else:
            position = (unit.channel, *_position(unit, act))
        if unit.channel >= act.shape[0]:
            raise ConvlensError(
                f"channel {unit.channel} out of range: layer {unit.layer!r} has {act.shape[0]} channels"
            )
        seeds[unit.layer][(i, *position)] = act[position].detach() if keep_value else 1.0
    return seeds


def _position(unit: Unit, act: torch.Tensor) -> tuple[int, int]:
    height, width = act.shape[-2:]
    if unit.y is None:
        if unit.channel >= act.shape[0]:
            raise ConvlensError(
                f"channel {unit.channel} out of range: layer {unit.layer!r} has {act.shape[0]} channels"
            )
        flat = int(act[unit.channel].detach().flatten().argmax())
        return flat // width, flat % width
    if not (0 <= unit.y < height and 0 <= unit.x < width):
        raise ConvlensError(
            f"position ({unit.y}, {unit.x}) outside layer {unit.layer!r}'s {height}x{width} map"
        )
    return unit.y, unit.x


def project(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    *,
    rule: str = "gradient",
    normalization: str = "gradient",
    strict: bool = False,
) -> torch.Tensor:
    """The one mechanism behind every method here: forward under `rule`, seed the target,
    back-propagate to the input. Returns (N, C, H, W).

    Example:
        >>> project(model, images, Unit("features.10", 5), rule="deconvnet")  # doctest: +SKIP
    """
    _check_images(images)
    count = len(images)
    units = target_units(target, count)
    x = images.detach().to(model_device(model)).requires_grad_(True)
    with preserved_state(model, training=False, frozen=True):
        layers = sorted({unit.layer for unit in units}) if units else []
        with (
            capture(model, layers, detach=False, stop=bool(units)) as acts,
            backward_rule(rule, normalization=normalization, strict=strict, whole=not units),
        ):
            logits = acts.forward(x)  # for units, the forward stops after their layers
        if units:
            seeds = _unit_seeds(units, acts, keep_value=rule == "deconvnet")
            outputs, grads = [acts[layer] for layer in seeds], list(seeds.values())
        else:
            if logits.dim() != 2:
                raise ConvlensError(
                    f"a class target needs (N, classes) outputs; the model returns {tuple(logits.shape)}"
                )
            indices = class_indices(target, count, logits.shape[1]).to(logits.device)
            seed = torch.zeros_like(logits)
            seed[torch.arange(count), indices] = 1.0
            outputs, grads = [logits], [seed]
        (grad,) = torch.autograd.grad(outputs, x, grads)
    return grad


def gradient(model: nn.Module, images: torch.Tensor, target: Target) -> torch.Tensor:
    """d target / d input, (N, C, H, W).

    Example:
        >>> gradient(model, images, 3).shape  # doctest: +SKIP
        torch.Size([8, 1, 28, 28])
    """
    return project(model, images, target, rule="gradient")


def saliency(model: nn.Module, images: torch.Tensor, target: Target) -> torch.Tensor:
    """Simonyan et al. (2014) image-specific class saliency: max over channels of |gradient|,
    (N, H, W)."""
    return gradient(model, images, target).abs().amax(dim=1)


def deconvnet(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    *,
    normalization: str = "identity",
    strict: bool = False,
) -> torch.Tensor:
    """Zeiler & Fergus deconvnet projection, (N, C, H, W): every ReLU's backward is
    `relu(grad)`, max-pooling routes through the forward switches, convolutions use the
    transposed filters, and local response normalisation is passed through (`normalization=
    "gradient"` back-propagates through it instead).

    Example:
        >>> deconvnet(model, images, Unit("features.12", 3)).shape  # doctest: +SKIP
        torch.Size([8, 1, 28, 28])
    """
    return project(
        model, images, target, rule="deconvnet", normalization=normalization, strict=strict
    )


def guided_backprop(
    model: nn.Module, images: torch.Tensor, target: Target, *, strict: bool = False
) -> torch.Tensor:
    """Guided backpropagation, (N, C, H, W): ReLU backward is `relu(grad) * (input > 0)`."""
    return project(model, images, target, rule="guided", strict=strict)


METHODS = {
    "deconvnet": deconvnet,
    "guided": guided_backprop,
    "saliency": saliency,
    "gradient": gradient,
}
