"""Fashion-MNIST from its idx `.gz` files: found locally first, downloaded only as a last resort."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from convlens._errors import ConvlensError
from convlens._paths import cache_dir

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
HOW_TO_GET = (
    "install Debian's package (`apt-get install dataset-fashion-mnist`), or put the four idx .gz "
    "files in a folder and pass it (or set CONVLENS_DATA to it)"
)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (gzipped or not) into a numpy array of the shape its header gives.

    Example:
        >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape
        (10000,)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:
        raise ConvlensError(f"cannot read idx file {path}: {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ConvlensError(f"{path} is not an idx file (bad magic number)")
    dims = data[3]
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * dims :]
    if len(body) != expected:
        raise ConvlensError(
            f"{path} is truncated: {len(body)} bytes of data, header says {expected}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _candidates(root: str | Path | None) -> list[Path]:
    places = [Path(root)] if root else []
    if os.environ.get("CONVLENS_DATA"):
        places.append(Path(os.environ["CONVLENS_DATA"]))
    places += [DEBIAN_DIR, cache_dir() / "fashion-mnist", cache_dir() / "FashionMNIST" / "raw"]
    return places


def find_fashion_mnist(root: str | Path | None = None, *, download: bool = True) -> Path:
    """The folder holding the Fashion-MNIST idx files.

    Looked for in this order: `root`, `$CONVLENS_DATA`, `/usr/share/datasets/fashion-mnist`
    (Debian's `dataset-fashion-mnist`), the user cache; then, if `download`, fetched with
    torchvision into the cache. Offline, a ConvlensError says how to get the files.
    """
    needed = [name for pair in FILES.values() for name in pair]
    for place in _candidates(root):
        if all((place / name).is_file() for name in needed):
            return place
    if root is not None and not download:
        raise ConvlensError(f"no Fashion-MNIST idx files in {root}; {HOW_TO_GET}")
    if download:
        return _download()
    raise ConvlensError(f"Fashion-MNIST not found; {HOW_TO_GET}")


def _download() -> Path:
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

    try:
        TorchvisionFashionMNIST(str(cache_dir()), train=True, download=True)
        TorchvisionFashionMNIST(str(cache_dir()), train=False, download=True)
    except (OSError, RuntimeError) as error:
        raise ConvlensError(
            f"Fashion-MNIST is not on this machine and downloading it failed ({error}); {HOW_TO_GET}"
        ) from None
    return cache_dir() / "FashionMNIST" / "raw"


class FashionMNIST(Dataset):
    """The Fashion-MNIST `split` ("train" or "test") as `(image, label)` pairs.

    `images` holds the raw uint8 pixels (N, 28, 28); items are passed through `transform`
    (a callable taking a uint8 (1, 28, 28) tensor), or are float tensors in [0, 1] without one.

    Example:
        >>> len(FashionMNIST("test"))
        10000
    """

    def __init__(self, split: str = "test", root: str | Path | None = None, transform=None):
        if split not in FILES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        folder = find_fashion_mnist(root)
        image_file, label_file = FILES[split]
        self.images = torch.from_numpy(read_idx(folder / image_file).copy())
        self.labels = torch.from_numpy(read_idx(folder / label_file).astype(np.int64))
        if len(self.images) != len(self.labels):
            raise ConvlensError(
                f"{folder}: {len(self.images)} images but {len(self.labels)} labels"
            )
        self.transform = transform
        self.split = split
        self.root = folder

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].unsqueeze(0)
        image = self.transform(image) if self.transform else image.float() / 255
        return image, int(self.labels[index])

    def raw_image(self, index: int) -> torch.Tensor:
        """The un-normalised image as uint8 (1, 28, 28), for display."""
        return self.images[index].unsqueeze(0)
