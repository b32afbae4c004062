"""Maps that know nothing of the model, reported beside every method so that a score can be read
against them: a random map, the image's Sobel edges, and a centred Gaussian (the centre prior
that TorchRay's pointing game found hard to beat)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

REFERENCES = ("random", "edges", "centre")


def random_map(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(N, H, W) uniform noise, seeded."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((len(images), *images.shape[-2:]), generator=generator).to(images.device)


def edge_map(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) the Sobel gradient magnitude of each image, summed over its channels."""
    kernel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([kernel, kernel.t()])[:, None].to(images)
    flat = images.detach().flatten(0, 1)[:, None]
    gradients = F.conv2d(F.pad(flat, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = gradients.pow(2).sum(1).sqrt()
    return magnitude.view(*images.shape).sum(1)


def centre_map(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) a Gaussian centred on the image, sigma a quarter of each side."""
    height, width = images.shape[-2:]
    ys = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    xs = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    gaussian = torch.exp(-((ys[:, None] / (height / 4)) ** 2 + (xs[None] / (width / 4)) ** 2) / 2)
    return gaussian.expand(len(images), height, width).to(images.device)


def reference_maps(images: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Each of `REFERENCES` for `images` (N, C, H, W)."""
    return {
        "random": random_map(images, seed),
        "edges": edge_map(images),
        "centre": centre_map(images),
    }
