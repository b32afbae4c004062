"""Preprocessing: what turns a picture into the tensor a model expects, and back for display."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

ImageLike = Image.Image | torch.Tensor


@dataclass(frozen=True)
class Preprocess:
    """Convert to the model's channel count, resize, centre-crop, scale to [0, 1], normalise.

    Accepts a PIL image or a uint8 tensor (H, W) or (C, H, W); grey and RGB are converted to
    what the model expects.

    Example:
        >>> prep = Preprocess(channels=1, size=(28, 28), mean=(0.5,), std=(0.5,))
        >>> prep(torch.zeros(3, 56, 56, dtype=torch.uint8)).shape
        torch.Size([1, 28, 28])
    """

    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None

    def geometry(self, image: ImageLike) -> torch.Tensor:
        """The image as the model sees it before normalisation: uint8 (C, H, W)."""
        tensor = _as_uint8_tensor(image)
        if tensor.shape[0] != self.channels:
            tensor = _convert_channels(tensor, self.channels)
        if self.resize is not None:
            tensor = TF.resize(tensor, self.resize, antialias=True)
            tensor = TF.center_crop(tensor, list(self.size))
        elif tuple(tensor.shape[-2:]) != tuple(self.size):
            tensor = TF.resize(tensor, list(self.size), antialias=True)
        return tensor

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float (…, C, H, W) → the model's input space."""
        if image.dtype == torch.uint8:
            image = image.float() / 255
        mean = torch.tensor(self.mean, device=image.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=image.device).view(-1, 1, 1)
        return (image - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input space (…, C, H, W) → [0, 1] floats for display (clamped)."""
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def __call__(self, image: ImageLike) -> torch.Tensor:
        return self.normalize(self.geometry(image))


def _as_uint8_tensor(image: ImageLike) -> torch.Tensor:
    if isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            if image.mode == "RGBA":
                image = image.convert("RGB")
        return TF.pil_to_tensor(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"expected a PIL image or a tensor, got {type(image).__name__}")
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(
            f"expected an image of shape (H, W) or (C, H, W) with C in 1, 3, 4, got {tuple(image.shape)}"
        )
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image[:3]


def _convert_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 1:
        return TF.rgb_to_grayscale(image, num_output_channels=1)
    if channels == 3 and image.shape[0] == 1:
        return image.expand(3, -1, -1).clone()
    raise ValueError(f"cannot convert a {image.shape[0]}-channel image to {channels} channels")
