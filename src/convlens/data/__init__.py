"""Data: Fashion-MNIST, image files and folders, sample photos, and one batching loop for all."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from convlens._errors import ConvlensError
from convlens.data.fashion_mnist import FashionMNIST, find_fashion_mnist, read_idx
from convlens.data.images import (
    SAMPLE_PHOTOS,
    CorruptImageError,
    ImageFiles,
    open_image,
    read_image,
    sample_photo,
    warn_skipped,
)

__all__ = [
    "SAMPLE_PHOTOS",
    "Batch",
    "BatchStream",
    "CorruptImageError",
    "FashionMNIST",
    "ImageFiles",
    "SamplePhotos",
    "find_fashion_mnist",
    "open_data",
    "open_image",
    "read_idx",
    "read_image",
    "sample_photo",
]


class SamplePhotos(Dataset):
    """scikit-image photos by name as a dataset (label -1)."""

    def __init__(self, names: Sequence[str], transform: Callable | None = None):
        self.names = list(names)
        self.transform = transform
        self.classes: list[str] = []

    def __len__(self) -> int:
        return len(self.names)

    def raw_image(self, index: int):
        return sample_photo(self.names[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.raw_image(index)
        return (self.transform(image) if self.transform else image), -1


def open_data(spec: str | Path, transform: Callable | None = None) -> Dataset:
    """A dataset from a spec string.

    Specs: `fashion-mnist` (test split), `fashion-mnist:train`, `fashion-mnist:PATH` (a folder
    of idx files), `sample:chelsea[,coffee,...]`, an image file, or a folder of images.

    Example:
        >>> len(open_data("fashion-mnist"))
        10000
    """
    spec = str(spec)
    if spec == "fashion-mnist" or spec.startswith("fashion-mnist:"):
        rest = spec.partition(":")[2]
        if rest in ("", "test", "train"):
            return FashionMNIST(rest or "test", transform=transform)
        return FashionMNIST("test", root=rest, transform=transform)
    if spec.startswith("sample:"):
        names = spec.removeprefix("sample:").split(",")
        for name in names:
            sample_photo(name)  # fails early, with close matches, on a bad name
        return SamplePhotos(names, transform)
    return ImageFiles(spec, transform)


@dataclass(frozen=True)
class Batch:
    """Images with their dataset indices and labels (-1 where there is no label)."""

    indices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor


class BatchStream:
    """Batches over a Dataset in index order (or over a DataLoader as it yields).

    Unreadable images are skipped and listed in `.skipped`, with one warning at the end,
    never a crash halfway. `indices` restricts the pass to those dataset indices.

    Example:
        >>> for batch in BatchStream(dataset, batch_size=64):  # doctest: +SKIP
        ...     model(batch.images)
    """

    def __init__(
        self, data: Dataset | DataLoader, batch_size: int = 64, indices: Sequence[int] | None = None
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data = data
        self.batch_size = batch_size
        self.indices = indices
        self.skipped: list[int] = []

    def __len__(self) -> int:
        if isinstance(self.data, DataLoader):
            return len(self.data)
        count = len(self.indices) if self.indices is not None else len(self.data)
        return -(-count // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if isinstance(self.data, DataLoader):
            yield from self._from_loader()
            return
        order = list(self.indices) if self.indices is not None else range(len(self.data))
        for start in range(0, len(order), self.batch_size):
            batch = self._collect(order[start : start + self.batch_size])
            if batch is not None:
                yield batch
        warn_skipped(self.skipped, self.data)

    def _collect(self, chunk: Sequence[int]) -> Batch | None:
        indices, images, labels = [], [], []
        for index in chunk:
            try:
                image, label = _split_item(self.data[index])
            except CorruptImageError:
                self.skipped.append(index)
                continue
            indices.append(index)
            images.append(image)
            labels.append(label)
        if not images:
            return None
        return Batch(torch.tensor(indices), _stack(images), torch.tensor(labels))

    def _from_loader(self) -> Iterator[Batch]:
        seen = 0
        for item in self.data:
            images, labels = item if isinstance(item, (tuple, list)) else (item, None)
            count = len(images)
            if labels is None:
                labels = torch.full((count,), -1)
            yield Batch(torch.arange(seen, seen + count), images, torch.as_tensor(labels))
            seen += count


def _split_item(item: object) -> tuple[torch.Tensor, int]:
    if isinstance(item, (tuple, list)):
        return item[0], int(item[1]) if len(item) > 1 else -1
    return item, -1


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise ConvlensError(
            f"images of different shapes in one batch ({sorted(shapes)[:3]}); "
            "apply the model's transform (it resizes and crops) to the dataset"
        )
    return torch.stack(images)
