"""Noise tunnels: a method's maps averaged over noisy copies of each image. SmoothGrad (Smilkov
et al. 2017) averages them, SmoothGrad-squared averages their squares, VarGrad (Adebayo et al.
2018) takes their variance.

Noisy copies go through the method `batch_size` at a time, so memory is bounded by
`batch_size`, not by `samples x N`. The noise of sample s is drawn for all images at once, in
sample order, so a seed gives the same maps whatever `batch_size` is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from convlens.attribution.backward import check_images
from convlens.attribution.methods import method_function
from convlens.attribution.result import AttributionMap, labelled, origin
from convlens.targets import Target, select_targets

KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")
DEFAULT_BATCH = 32

Method = Callable[..., torch.Tensor]


def _noise_scale(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """sigma times each image's value range (max - min), shaped to broadcast."""
    flat = images.flatten(1)
    return (sigma * (flat.amax(1) - flat.amin(1))).view(-1, *[1] * (images.dim() - 1))


def noisy_batches(
    images: torch.Tensor, samples: int, std: torch.Tensor, seed: int | None, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(noisy images, their image indices), `batch_size` at a time, sample by sample."""
    generator = torch.Generator(images.device)
    if seed is None:
        generator.seed()  # fresh noise each call
    else:
        generator.manual_seed(seed)
    count, pending, indices = len(images), [], []
    for _ in range(samples):
        noise = torch.randn(images.shape, generator=generator, device=images.device)
        noisy = images + noise.to(images.dtype) * std
        for start in range(0, count, batch_size):
            pending.append(noisy[start : start + batch_size])
            indices.append(torch.arange(start, min(start + batch_size, count)))
            while sum(map(len, pending)) >= batch_size:
                batch, index = torch.cat(pending), torch.cat(indices)
                yield batch[:batch_size], index[:batch_size]
                pending, indices = [batch[batch_size:]], [index[batch_size:]]
    if pending and sum(map(len, pending)):
        yield torch.cat(pending), torch.cat(indices)


def _check(samples: int, sigma: float, kind: str, batch_size: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    if not (isinstance(sigma, (int, float)) and 0 <= sigma < float("inf")):
        raise ValueError(
            f"sigma must be a number >= 0 (a fraction of the value range), got {sigma!r}"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def noise_tunnel(
    method: str | Method,
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    samples: int = 50,
    sigma: float = 0.15,
    kind: str = "smoothgrad",
    seed: int | None = None,
    batch_size: int | None = None,
    **kwargs: object,
) -> AttributionMap:
    """`method` (a name of `convlens.attribution.METHODS` or a callable `(model, images, target,
    **kwargs) -> maps`) over `samples` copies of each image with Gaussian noise of standard
    deviation `sigma * (max - min)` of that image, combined by `kind`: "smoothgrad" (mean),
    "smoothgrad_sq" (mean of squares) or "vargrad" (variance). `seed` makes it reproducible;
    `batch_size` noisy images per call (None: max(N, 32)); `kwargs` go to the method.

    Example:
        >>> noise_tunnel("gradcam", model, images, 3, samples=20, seed=0).shape  # doctest: +SKIP
        torch.Size([8, 224, 224])
    """
    check_images(images)
    batch_size = max(len(images), DEFAULT_BATCH) if batch_size is None else batch_size
    _check(samples, sigma, kind, batch_size)
    if kwargs.get("return_delta"):
        raise ValueError(
            "a noise tunnel returns maps only; call integrated_gradients for its delta"
        )
    function = method_function(method) if isinstance(method, str) else method
    x = images.detach()
    total = squares = None
    layer = None
    for batch, index in noisy_batches(x, samples, _noise_scale(x, sigma), seed, batch_size):
        maps = function(model, batch, select_targets(target, len(x), index), **kwargs)
        layer = getattr(maps, "layer", None)
        maps = maps.detach().to(x.device)  # a plain tensor
        if total is None:
            total = maps.new_zeros((len(x), *maps.shape[1:]))
            squares = torch.zeros_like(total)
        total.index_add_(0, index.to(x.device), maps)
        squares.index_add_(0, index.to(x.device), maps * maps)
    mean, mean_square = total / samples, squares / samples
    combined = {
        "smoothgrad": mean,
        "smoothgrad_sq": mean_square,
        "vargrad": mean_square - mean * mean,
    }
    name = method if isinstance(method, str) else getattr(method, "__name__", "method")
    return labelled(combined[kind], f"{kind}({name})", origin(model, images, target), layer)
