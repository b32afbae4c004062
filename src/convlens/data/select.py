"""Taking items out of a dataset: by index (checked, with a clear error), one per class, and the
labels alone. Every command and atlas stage that picks images goes through here."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset, Subset

from convlens._errors import ConvlensError


def item(data: Dataset, index: int) -> tuple[torch.Tensor, int]:
    """(image, label) of one dataset item; label -1 when the dataset has none."""
    found = data[index]
    if isinstance(found, (tuple, list)):
        return found[0], int(found[1]) if len(found) > 1 else -1
    return found, -1


def check_indices(data: Dataset, indices: Sequence[int], what: str = "index") -> list[int]:
    """`indices` as a list, or a ConvlensError naming the first one outside the dataset."""
    size = len(data)
    for index in indices:
        if not 0 <= index < size:
            raise ConvlensError(
                f"{what} {index} is outside the data, which has {size} item(s) (0..{size - 1})"
            )
    return list(indices)


def take(data: Dataset, indices: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """The images (N, C, H, W) and labels of the items `indices`, in that order."""
    items = [item(data, index) for index in check_indices(data, indices)]
    return torch.stack([image for image, _ in items]), [label for _, label in items]


def known_labels(data: Dataset) -> torch.Tensor | None:
    """(N,) every item's label (-1 where unlabelled) when the dataset keeps them apart from its
    images (Fashion-MNIST, an image folder, a Subset of one); None otherwise."""
    if isinstance(data, Subset):
        inner = known_labels(data.dataset)
        return None if inner is None else inner[torch.as_tensor(data.indices, dtype=torch.long)]
    found = getattr(data, "labels", None)
    if found is None and hasattr(data, "samples"):
        found = [label for _, label in data.samples]
    return None if found is None else torch.as_tensor(found, dtype=torch.long)


def labels(data: Dataset) -> torch.Tensor:
    """(N,) the label of every item (-1 where unlabelled), read item by item when the dataset
    does not keep them apart."""
    found = known_labels(data)
    if found is None:
        found = torch.tensor([item(data, i)[1] for i in range(len(data))], dtype=torch.long)
    return found


def is_labelled(data: Dataset) -> bool:
    """Whether the items have labels (for a dataset that does not keep them apart, judged by
    its first item)."""
    found = known_labels(data)
    if found is not None:
        return len(found) > 0 and bool((found >= 0).all())
    return len(data) > 0 and item(data, 0)[1] >= 0


def one_per_class(data: Dataset, count: int) -> list[int]:
    """`count` indices: the first item of each class while classes last, then the next indices
    in order (the first `count` when the labels are unknown or absent)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    found = known_labels(data)
    chosen, seen = [], set()
    for index, label in enumerate([] if found is None else found.tolist()):
        if len(chosen) == count:
            return chosen
        if label >= 0 and label not in seen:
            seen.add(label)
            chosen.append(index)
    taken = set(chosen)
    rest = [i for i in range(len(data)) if i not in taken]
    return chosen + rest[: count - len(chosen)]


def with_transform(data: Dataset, transform: Callable) -> Dataset:
    """A shallow copy of a dataset opened by `open_data` that applies `transform` to its images,
    so the data can be opened (and indices checked) before the model is loaded."""
    copied = copy.copy(data)
    copied.transform = transform
    return copied
