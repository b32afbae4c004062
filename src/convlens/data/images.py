"""Image files, folders of them (ImageFolder layout) and scikit-image's bundled sample photos."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from convlens._errors import ConvlensError, unknown_name_error

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SAMPLE_PHOTOS = (
    "astronaut",
    "camera",
    "cat",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "motorcycle_left",
)


class CorruptImageError(ConvlensError):
    """An image file that cannot be read or decoded."""


def read_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, or raise CorruptImageError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise ConvlensError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise CorruptImageError(f"cannot read image {path}: {error}") from None


def sample_photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photos by name (`chelsea`, `coffee`, `astronaut`, ...)."""
    import skimage.data

    if name not in SAMPLE_PHOTOS:
        raise unknown_name_error("sample photo", name, SAMPLE_PHOTOS)
    array = getattr(skimage.data, name)()
    return Image.fromarray(array)


def open_image(spec: str | Path) -> Image.Image:
    """A single picture from a file path or a `sample:<name>` spec."""
    spec = str(spec)
    if spec.startswith("sample:"):
        return sample_photo(spec.removeprefix("sample:"))
    return read_image(spec)


class ImageFiles(Dataset):
    """Image files as `(image, label)` pairs: a single file, a flat folder, or an ImageFolder tree
    (one subfolder per class, class names from the folder names; label -1 for a flat folder).

    A file that cannot be decoded raises CorruptImageError when read; `convlens.data.batches`
    skips it with a warning and counts it.

    Example:
        >>> data = ImageFiles("photos/", transform=loaded.transform)  # doctest: +SKIP
    """

    def __init__(self, root: str | Path, transform: Callable | None = None):
        root = Path(root)
        if not root.exists():
            raise ConvlensError(f"no such file or folder: {root}")
        self.root = root
        self.transform = transform
        if root.is_file():
            self.classes: list[str] = []
            self.samples = [(root, -1)]
        else:
            self.classes = sorted(
                p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
            if self.classes:
                self.samples = [
                    (file, label)
                    for label, name in enumerate(self.classes)
                    for file in _image_files(root / name)
                ]
            else:
                self.samples = [(file, -1) for file in _image_files(root)]
        if not self.samples:
            raise ConvlensError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root}")

    def __len__(self) -> int:
        return len(self.samples)

    def raw_image(self, index: int) -> Image.Image:
        """The decoded file, before any transform."""
        return read_image(self.samples[index][0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.raw_image(index)
        tensor = self.transform(image) if self.transform else TF.pil_to_tensor(image)
        return tensor, self.samples[index][1]


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def warn_skipped(skipped: list[int], dataset: Dataset) -> None:
    """One warning naming how many unreadable images were skipped (and the first few)."""
    if not skipped:
        return
    names = (
        [str(dataset.samples[i][0]) for i in skipped[:3]]
        if hasattr(dataset, "samples")
        else skipped[:3]
    )
    more = ", ..." if len(skipped) > 3 else ""
    warnings.warn(
        f"skipped {len(skipped)} unreadable image(s): {', '.join(map(str, names))}{more}",
        stacklevel=3,
    )
