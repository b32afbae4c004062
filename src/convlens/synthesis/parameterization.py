"""How a synthesised image is parameterised. Each returns images in the model's input space.

- `PixelImage`: the input tensor itself (Simonyan 2014, Yosinski 2015); in-place image priors
  (decay, blur, clipping) act on it directly.
- `FourierImage`: a scaled spectrum turned into pixels by an inverse real FFT, colours
  decorrelated for 3-channel images, squashed to [0, 1] by a sigmoid and then normalised like
  the model's input (Olah et al. 2017, Lucid). Low frequencies get most of the step, which
  removes the high-frequency noise plain pixel ascent produces.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# The square root of ImageNet's colour correlation, as Lucid uses it (columns normalised by
# their largest norm before use): a step in these coordinates changes colour the way natural
# images vary, not channel by channel.
COLOR_CORRELATION_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]
)
FOURIER_SCALE = 4.0  # Lucid's constant dividing the inverse FFT (keeps the sigmoid unsaturated)


def _image_seed(base: int, index: int) -> int:
    """A non-negative 63-bit seed for image `index` of a batch seeded `base` (Python's hash of
    a tuple of ints is the same in every run)."""
    return hash((base, index)) & 0x7FFF_FFFF_FFFF_FFFF


def per_image_normal(
    shape: tuple[int, ...], generator: torch.Generator, skip: int = 0
) -> torch.Tensor:
    """Standard normal draws of `shape` (N, ...), image i from its own generator, seeded by
    `generator`'s seed and i + `skip`: image i of a batch starting at `skip` gets the numbers
    image skip + i of one whole batch gets, so a batch split in chunks starts as the whole would
    (and no chunk pays for drawing the ones before it)."""
    base = generator.initial_seed()
    single = (1, *shape[1:])
    return torch.cat(
        [
            torch.randn(
                single, generator=torch.Generator().manual_seed(_image_seed(base, skip + i))
            )
            for i in range(shape[0])
        ]
    )


class PixelImage:
    """The input-space image (N, C, H, W) is the parameter; init 0 (the mean image) or noise of
    std `init_std` (a number, or one per channel (1, C, 1, 1)); `skip` as `per_image_normal`."""

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        generator: torch.Generator,
        device: torch.device,
        init_std: float | torch.Tensor = 0.0,
        skip: int = 0,
    ) -> None:
        self.tensor = (per_image_normal(shape, generator, skip) * init_std).to(device)
        self.tensor.requires_grad_(True)

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.tensor]

    def __call__(self) -> torch.Tensor:
        return self.tensor


def spectrum_scale(height: int, width: int, decay_power: float = 1.0) -> torch.Tensor:
    """(H, W // 2 + 1): 1 / frequency ** decay_power, frequencies below 1 / max(H, W) clamped."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    frequency = (fy**2 + fx**2).sqrt()
    return 1.0 / frequency.clamp(min=1.0 / max(height, width)) ** decay_power


class FourierImage:
    """A spectral parameterisation with decorrelated colour (see the module docstring)."""

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        generator: torch.Generator,
        device: torch.device,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        sd: float = 0.01,
        decay_power: float = 1.0,
        decorrelate: bool = True,
        skip: int = 0,
    ) -> None:
        count, channels, height, width = shape
        self.size = (height, width)
        self.normalize = normalize
        self.scale = spectrum_scale(height, width, decay_power).to(device)[..., None]
        spectrum = per_image_normal((count, channels, height, width // 2 + 1, 2), generator, skip)
        self.spectrum = (spectrum * sd).to(device).requires_grad_(True)
        colour = COLOR_CORRELATION_SQRT / COLOR_CORRELATION_SQRT.norm(dim=0).max()
        self.colour = colour.to(device) if decorrelate and channels == 3 else None

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.spectrum]

    def __call__(self) -> torch.Tensor:
        spectrum = torch.view_as_complex((self.scale * self.spectrum).contiguous())
        image = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / FOURIER_SCALE
        if self.colour is not None:
            image = torch.einsum("nchw,dc->ndhw", image, self.colour)
        return self.normalize(torch.sigmoid(image))
