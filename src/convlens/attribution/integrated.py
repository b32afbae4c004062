"""Integrated gradients (Sundararajan et al. 2017): (x - x') times the path integral of the
target's gradient from the baseline x' to x, by quadrature. The path's points go through the
model `batch_size` images at a time, whatever the number of steps, so memory is bounded by
`batch_size` and not by `steps x N` as when the whole path is expanded at once."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch import nn

from convlens.attribution.backward import backward, check_images, target_scores
from convlens.attribution.result import AttributionMap, labelled, origin
from convlens.targets import Target, select_targets

QUADRATURES = (
    "gausslegendre",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
)
BASELINES = ("zero", "blur", "mean")
DEFAULT_BATCH = 32


def quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) of `steps` points on [0, 1] for the named rule (names as Captum's)."""
    if method not in QUADRATURES:
        raise ValueError(f"method must be one of {', '.join(QUADRATURES)}, got {method!r}")
    minimum = 2 if method == "riemann_trapezoid" else 1
    if not isinstance(steps, int) or steps < minimum:
        raise ValueError(f"steps must be an integer >= {minimum} for {method}, got {steps!r}")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (nodes + 1), 0.5 * weights
    weights = np.full(steps, 1 / steps)
    if method == "riemann_trapezoid":
        weights[[0, -1]] /= 2
        return np.linspace(0, 1, steps), weights
    start = {"riemann_left": 0.0, "riemann_right": 1 / steps, "riemann_middle": 0.5 / steps}
    return start[method] + np.arange(steps) / steps, weights


def make_baseline(images: torch.Tensor, baseline: object) -> torch.Tensor:
    """The baseline for `images` (N, C, H, W): None or "zero" (zeros in the model's input
    space), "blur" (each image Gaussian-blurred, sigma 1/20 of its side), "mean" (each image's
    per-channel mean), a number, or a tensor that broadcasts to the images."""
    if baseline is None or baseline == "zero":
        return torch.zeros_like(images)
    if isinstance(baseline, str):
        if baseline == "mean":
            return images.mean((2, 3), keepdim=True).expand_as(images).clone()
        if baseline == "blur":
            sigma = max(images.shape[-2:]) / 20
            kernel = 2 * int(3 * sigma) + 1
            return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])
        raise ValueError(
            f"baseline must be one of {', '.join(BASELINES)}, a number or a tensor, got {baseline!r}"
        )
    found = torch.as_tensor(baseline, dtype=images.dtype, device=images.device)
    try:
        return torch.broadcast_to(found, images.shape).clone()
    except RuntimeError:
        raise ValueError(
            f"baseline of shape {tuple(found.shape)} does not broadcast to the images {tuple(images.shape)}"
        ) from None


def path_chunks(
    count: int, steps: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(step indices, image indices) of the step-major (step, image) pairs, `batch_size` at a
    time."""
    total = count * steps
    for start in range(0, total, batch_size):
        flat = torch.arange(start, min(start + batch_size, total))
        yield flat // count, flat % count


def integrated_gradients(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    baseline: object = None,
    steps: int = 50,
    method: str = "gausslegendre",
    batch_size: int | None = None,
    return_delta: bool = False,
) -> AttributionMap | tuple[AttributionMap, torch.Tensor]:
    """Integrated gradients, (N, C, H, W): (x - x') * sum_i w_i grad(x' + alpha_i (x - x')) for
    the quadrature `method` with `steps` points. `baseline`: see `make_baseline` (None: zeros).
    `batch_size` path points per forward (None: max(N, 32)). With `return_delta`, also the
    completeness gap per image, sum(attribution) - (f(x) - f(x')), which shrinks as steps grow.

    Example:
        >>> attr, delta = integrated_gradients(model, images, 3, return_delta=True)  # doctest: +SKIP
    """
    check_images(images)
    alphas, weights = quadrature(method, steps)
    batch_size = max(len(images), DEFAULT_BATCH) if batch_size is None else batch_size
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    x = images.detach()
    start = make_baseline(x, baseline)
    alphas_t = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)
    weights_t = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
    total = torch.zeros_like(x)
    for step, index in path_chunks(len(x), steps, batch_size):
        alpha = alphas_t[step].view(-1, 1, 1, 1)
        points = torch.lerp(start[index], x[index], alpha)
        grad = backward(model, points, select_targets(target, len(x), index)).grad
        total.index_add_(
            0, index.to(x.device), grad.to(x.device) * weights_t[step].view(-1, 1, 1, 1)
        )
    attribution = labelled((x - start) * total, "ig", origin(model, images, target))
    if not return_delta:
        return attribution
    ends = target_scores(model, torch.cat([x, start]), _twice(target, len(x)))
    gap = attribution.flatten(1).sum(1) - (ends[: len(x)] - ends[len(x) :]).to(x.device)
    return attribution, gap


def _twice(target: Target, count: int) -> Target:
    """The targets of `count` images, repeated for a second batch of the same images."""
    return select_targets(target, count, torch.arange(2 * count) % count)
