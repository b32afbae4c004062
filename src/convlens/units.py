"""`Unit`: one activation of a named layer, the target of projections, scans and synthesis."""

from __future__ import annotations

from dataclasses import dataclass


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
