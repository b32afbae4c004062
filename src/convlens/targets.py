"""What a method explains: a class index (its pre-softmax score) or a `Unit`, one activation of
a named layer. `Target` is the type every method's `target` argument takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from convlens._errors import ConvlensError


@dataclass(frozen=True)
class Unit:
    """Channel `channel` of layer `layer` at position (`y`, `x`) of its map.

    `y, x = None` means the spatial argmax of that channel, per image. `Unit.parse` reads the
    CLI's `LAYER:CHANNEL[:Y:X]` form.

    Example:
        >>> Unit.parse("features.10:5")
        Unit(layer='features.10', channel=5, y=None, x=None)
    """

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise TypeError(f"Unit.layer must be a layer name, got {self.layer!r}")
        if int(self.channel) < 0:
            raise ValueError(f"Unit.channel must be >= 0, got {self.channel}")
        if (self.y is None) != (self.x is None):
            raise ValueError("give both y and x, or neither (the channel's argmax)")

    @classmethod
    def parse(cls, text: str) -> Unit:
        """`LAYER:CHANNEL` or `LAYER:CHANNEL:Y:X` → Unit."""
        parts = text.rsplit(":", 3) if text.count(":") >= 3 else text.rsplit(":", 1)
        try:
            numbers = [int(p) for p in parts[1:]]
        except ValueError:
            numbers = []
        if len(parts) not in (2, 4) or len(numbers) != len(parts) - 1:
            raise ValueError(f"expected LAYER:CHANNEL or LAYER:CHANNEL:Y:X, got {text!r}")
        return cls(parts[0], *numbers)


Target = int | Sequence[int] | torch.Tensor | Unit | Sequence[Unit]


def target_units(target: Target, count: int) -> list[Unit] | None:
    """One Unit per image when `target` is a Unit or a sequence of them, else None (a class)."""
    if isinstance(target, Unit):
        return [target] * count
    if isinstance(target, (list, tuple)) and target and all(isinstance(t, Unit) for t in target):
        if len(target) != count:
            raise ValueError(f"{len(target)} units for {count} images")
        return list(target)
    return None


def class_indices(target: Target, count: int, classes: int) -> torch.Tensor:
    """(count,) class indices from one int or one per image, checked against `classes`."""
    indices = torch.as_tensor(target).long().flatten()
    if indices.numel() == 1:
        indices = indices.expand(count)
    if indices.numel() != count:
        raise ValueError(f"{indices.numel()} targets for {count} images")
    if bool(((indices < 0) | (indices >= classes)).any()):
        raise ConvlensError(
            f"target class out of range: the model has {classes} outputs (0..{classes - 1})"
        )
    return indices


def select_targets(target: Target, count: int, indices: torch.Tensor) -> Target:
    """The targets of images `indices` out of `count`: a list of Units, or a tensor of classes
    (range-checked later, against the model's outputs)."""
    units = target_units(target, count)
    if units is not None:
        return [units[i] for i in indices.tolist()]
    classes = torch.as_tensor(target).long().flatten()
    if classes.numel() == 1:
        classes = classes.expand(count)
    if classes.numel() != count:
        raise ValueError(f"{classes.numel()} targets for {count} images")
    return classes[indices.cpu()]
