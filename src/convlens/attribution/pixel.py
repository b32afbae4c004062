"""Pixel-space attributions: gradient, saliency (Simonyan 2014), deconvnet (Zeiler & Fergus
2014) and guided backprop (Springenberg 2015), each one backward pass with a ReLU rule
(`convlens.attribution.backward`)."""

from __future__ import annotations

import torch
from torch import nn

from convlens.attribution.backward import backward
from convlens.attribution.result import AttributionMap, labelled, origin
from convlens.targets import Target


def project(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    *,
    rule: str = "gradient",
    normalization: str = "gradient",
    strict: bool = False,
) -> torch.Tensor:
    """The target's backward under `rule` down to the input, (N, C, H, W).

    Example:
        >>> project(model, images, Unit("features.10", 5), rule="deconvnet")  # doctest: +SKIP
    """
    return backward(
        model, images, target, rule=rule, normalization=normalization, strict=strict
    ).grad


def gradient(model: nn.Module, images: torch.Tensor, target: Target) -> AttributionMap:
    """d target / d input, (N, C, H, W).

    Example:
        >>> gradient(model, images, 3).shape  # doctest: +SKIP
        torch.Size([8, 1, 28, 28])
    """
    values = project(model, images, target, rule="gradient")
    return labelled(values, "gradient", origin(model, images, target))


def saliency(model: nn.Module, images: torch.Tensor, target: Target) -> AttributionMap:
    """Simonyan et al. (2014) image-specific class saliency: max over channels of |gradient|,
    (N, H, W)."""
    values = project(model, images, target, rule="gradient").abs().amax(dim=1)
    return labelled(values, "saliency", origin(model, images, target))


def deconvnet(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    *,
    normalization: str = "identity",
    strict: bool = False,
) -> AttributionMap:
    """Zeiler & Fergus deconvnet projection, (N, C, H, W): every ReLU's backward is
    `relu(grad)`, max-pooling routes through the forward switches, convolutions use the
    transposed filters, and local response normalisation is passed through (`normalization=
    "gradient"` back-propagates through it instead).

    Example:
        >>> deconvnet(model, images, Unit("features.12", 3)).shape  # doctest: +SKIP
        torch.Size([8, 1, 28, 28])
    """
    values = project(
        model, images, target, rule="deconvnet", normalization=normalization, strict=strict
    )
    return labelled(values, "deconvnet", origin(model, images, target))


def guided_backprop(
    model: nn.Module, images: torch.Tensor, target: Target, *, strict: bool = False
) -> AttributionMap:
    """Guided backpropagation, (N, C, H, W): ReLU backward is `relu(grad) * (input > 0)`."""
    values = project(model, images, target, rule="guided", strict=strict)
    return labelled(values, "guided", origin(model, images, target))
