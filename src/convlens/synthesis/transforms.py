"""Random image transforms applied before every forward of a synthesis step, so the image must
excite the objective robustly (Lucid's "transformation robustness"). Pure torch, differentiable,
drawn from a seeded generator. Each transform maps (N, C, H, W) → (N, C, H', W')."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _choice(options: Sequence[float], generator: torch.Generator) -> float:
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def _filled(image: torch.Tensor, inside: torch.Tensor, fill: torch.Tensor | float) -> torch.Tensor:
    """`image` (zero where nothing was sampled) with `fill` (a value, or one per channel (C,))
    blended in where `inside` (the sampled weight, 1 inside, 0 outside) is below 1."""
    if not isinstance(fill, torch.Tensor) and fill == 0.0:
        return image
    border = torch.as_tensor(fill, dtype=image.dtype, device=image.device)
    return image + (1 - inside) * border.reshape(1, -1, 1, 1)


def pad(width: int, fill: torch.Tensor | float = 0.0) -> Transform:
    """Pad every side by `width` pixels of `fill` (a value, or one per channel (C,))."""

    def apply(image: torch.Tensor, _generator: torch.Generator) -> torch.Tensor:
        inside = F.pad(torch.ones_like(image[:1, :1]), [width] * 4)
        return _filled(F.pad(image, [width] * 4, value=0.0), inside, fill)

    return apply


def jitter(pixels: int) -> Transform:
    """Shift by a random 0..pixels-1 offset in each axis: a random crop `pixels - 1` smaller."""

    def apply(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        dy, dx = (int(v) for v in torch.randint(pixels, (2,), generator=generator))
        height, width = image.shape[-2:]
        return image[..., dy : height - (pixels - 1) + dy, dx : width - (pixels - 1) + dx]

    return apply


def random_scale(scales: Sequence[float]) -> Transform:
    """Resize by a factor drawn from `scales` (bilinear)."""

    def apply(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        factor = _choice(scales, generator)
        if factor == 1:
            return image
        size = [max(1, math.ceil(factor * side)) for side in image.shape[-2:]]
        return F.interpolate(image, size=size, mode="bilinear", align_corners=True)

    return apply


def random_rotate(degrees: Sequence[float], fill: torch.Tensor | float = 0.0) -> Transform:
    """Rotate about the centre by an angle drawn from `degrees` (bilinear); corners rotated in
    from outside take `fill` (a value, or one per channel (C,))."""

    def apply(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        angle = math.radians(_choice(degrees, generator))
        if angle == 0:
            return image
        cos, sin = math.cos(angle), math.sin(angle)
        matrix = torch.tensor(
            [[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=image.dtype, device=image.device
        )
        grid = F.affine_grid(
            matrix.expand(len(image), 2, 3), list(image.shape), align_corners=False
        )
        turned = F.grid_sample(image, grid, mode="bilinear", align_corners=False)
        inside = F.grid_sample(
            torch.ones_like(image[:, :1]), grid, mode="bilinear", align_corners=False
        )
        return _filled(turned, inside, fill)

    return apply


def fit(size: tuple[int, int]) -> Transform:
    """Bring the image to the model's input `size`: a centre crop when it is larger (padding
    and scaling then keep the image's scale), a bilinear resize when it is smaller (a small
    optimised image upsampled, as Lucid does)."""

    def apply(image: torch.Tensor, _generator: torch.Generator) -> torch.Tensor:
        height, width = image.shape[-2:]
        if (height, width) == tuple(size):
            return image
        if height >= size[0] and width >= size[1]:
            top, left = (height - size[0]) // 2, (width - size[1]) // 2
            return image[..., top : top + size[0], left : left + size[1]]
        return F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=True)

    return apply


def compose(transforms: Sequence[Transform]) -> Transform:
    """Apply `transforms` in order."""

    def apply(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for transform in transforms:
            image = transform(image, generator)
        return image

    return apply
