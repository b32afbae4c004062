"""The top-k layout of a scan, written once: `TopK` per layer (and its tensor form for
checkpoints), the exact merge of two candidate sets, and `ScanResult`, saved and loaded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convlens._errors import ConvlensError
from convlens._io import read_checkpoint, write_checkpoint
from convlens._shown import Shown

NO_INDEX = torch.iinfo(torch.int64).max  # an empty slot while scanning: loses every tie
FIELDS = ("values", "indices", "positions")


@dataclass(frozen=True)
class TopK:
    """The k strongest images of each channel of one layer: `values (C, k)` descending,
    `indices (C, k)` dataset indices (-1 where the dataset had fewer than k images),
    `positions (C, k, 2)` (y, x) of the max in the layer's map."""

    values: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor

    @classmethod
    def empty(cls, channels: int, k: int, device: torch.device) -> TopK:
        """A running state with every slot empty (value -inf, index `NO_INDEX`)."""
        return cls(
            torch.full((channels, k), float("-inf"), device=device),
            torch.full((channels, k), NO_INDEX, dtype=torch.long, device=device),
            torch.full((channels, k, 2), -1, dtype=torch.long, device=device),
        )

    @classmethod
    def stack(cls, tops: Sequence[TopK]) -> TopK:
        """The channels of several layers stacked, so one merge serves them all."""
        return cls(*(torch.cat([getattr(top, name) for top in tops]) for name in FIELDS))

    def split(self, widths: Sequence[int]) -> list[TopK]:
        """Undo `stack`: views of `widths` channels each."""
        parts = [torch.split(getattr(self, name), list(widths)) for name in FIELDS]
        return [TopK(*pieces) for pieces in zip(*parts)]

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """`{prefix}/values`, `/indices`, `/positions` on the CPU, for a checkpoint."""
        return {f"{prefix}/{name}": getattr(self, name).cpu().contiguous() for name in FIELDS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> TopK:
        """Read what `to_tensors` wrote."""
        return cls(*(tensors[f"{prefix}/{name}"] for name in FIELDS))

    def finished(self) -> TopK:
        """A running state as a result: empty slots get index -1, tensors go to the CPU."""
        indices = torch.where(self.indices == NO_INDEX, -1, self.indices)
        return TopK(self.values.cpu(), indices.cpu(), self.positions.cpu())

    def running(self) -> TopK:
        """A result as a running state again (index -1 back to `NO_INDEX`), for merging."""
        return TopK(
            self.values, torch.where(self.indices < 0, NO_INDEX, self.indices), self.positions
        )


def merge_topk(a: TopK, b: TopK, k: int) -> TopK:
    """The top k of two candidate sets per channel, by value descending then index ascending.

    Example:
        >>> merged = merge_topk(running, batch_candidates, 9)  # doctest: +SKIP
    """
    values = torch.cat([a.values, b.values], dim=1)
    indices = torch.cat([a.indices, b.indices], dim=1)
    positions = torch.cat([a.positions, b.positions], dim=1)
    by_index = indices.argsort(dim=1, stable=True)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    positions = positions.gather(1, by_index.unsqueeze(-1).expand(-1, -1, 2))
    order = values.argsort(dim=1, descending=True, stable=True)[:, :k]
    return TopK(
        values.gather(1, order),
        indices.gather(1, order),
        positions.gather(1, order.unsqueeze(-1).expand(-1, -1, 2)),
    )


@dataclass
class ScanResult(Shown):
    """`result[layer]` is that layer's TopK; `meta` says what was scanned."""

    layers: dict[str, TopK]
    meta: dict = field(default_factory=dict)

    def __getitem__(self, layer: str) -> TopK:
        if layer not in self.layers:
            raise ConvlensError(
                f"layer {layer!r} was not scanned; scanned: {', '.join(self.layers)}"
            )
        return self.layers[layer]

    def save(self, path: str | Path) -> Path:
        """Tensors as safetensors at `path`, metadata embedded and as JSON beside it, atomically."""
        tensors = {}
        for layer, top in self.layers.items():
            tensors |= top.to_tensors(layer)
        return write_checkpoint(path, tensors, self.meta)

    @classmethod
    def load(cls, path: str | Path) -> ScanResult:
        """Read a result written by `save`."""
        if not Path(path).exists():
            raise ConvlensError(f"no scan result at {path}")
        tensors, meta = read_checkpoint(path)
        return cls({layer: TopK.from_tensors(tensors, layer) for layer in meta["layers"]}, meta)
