"""Feature evolution over training (Zeiler & Fergus Fig. 4): for chosen feature maps, the
strongest activation over a dataset at each training checkpoint, found by a k=1 scan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from convlens._errors import ConvlensError
from convlens._shown import Shown
from convlens.analysis.filters import layer_maps
from convlens.attribution import deconvnet
from convlens.data.select import item
from convlens.models.layers import ReceptiveField, receptive_field
from convlens.models.loading import LoadedModel, load_model
from convlens.render import crop_padded
from convlens.scan import ScanResult, TopK, scan
from convlens.targets import Unit


@dataclass(frozen=True)
class Evolution(Shown):
    """One k=1 scan per checkpoint (`results[i]` for `checkpoints[i]`), the channels shown per
    layer, and `projections[layer]` (shown channels, checkpoints, C, s, s): each shown
    channel's strongest activation at each checkpoint projected by the deconvnet and cropped to
    its receptive field (Fig. 4)."""

    checkpoints: list[str]
    results: list[ScanResult]
    channels: dict[str, list[int]]
    projections: dict[str, torch.Tensor] = field(default_factory=dict)

    def strongest(self, layer: str, channel: int) -> list[tuple[float, int, tuple[int, int]]]:
        """(value, dataset index, (y, x)) of the channel's strongest activation per checkpoint."""
        return [
            (
                float(result[layer].values[channel, 0]),
                int(result[layer].indices[channel, 0]),
                tuple(int(v) for v in result[layer].positions[channel, 0]),
            )
            for result in self.results
        ]


def checkpoint_label(path: str | Path) -> str:
    """'epoch 5' for epoch-005.safetensors, 'final' for final.safetensors, else the file stem."""
    stem = Path(path).stem
    if stem.startswith("epoch-") and stem.removeprefix("epoch-").isdigit():
        return f"epoch {int(stem.removeprefix('epoch-'))}"
    return stem


def evolution(
    checkpoints: Sequence[str | Path],
    data: Dataset,
    layers: Sequence[str],
    channels: Sequence[int] | None = None,
    *,
    spec: str = "zfnet-fashion",
    batch_size: int = 256,
    progress: bool = False,
    known: tuple[nn.Module, ScanResult] | None = None,
) -> Evolution:
    """Scan `data` once per checkpoint (weights files of the model `spec`) with k=1, recording
    `layers`; `channels` picks the feature maps shown (default: the first 8 of each layer).
    `known`: a model and its scan of the same `data` and `layers` (any k); a checkpoint with
    that model's weights takes its top-1 instead of being scanned again (the atlas's final
    checkpoint is the model it has just scanned).

    Example:
        >>> evo = evolution(sorted(folder.glob("epoch-*.safetensors")), test_set, ["features.13"])  # doctest: +SKIP
        >>> evo.strongest("features.13", 3)  # (value, image, position) at each epoch
    """
    models = [load_model(spec, str(c)).model for c in checkpoints]
    first = models[0]
    widths = {
        layer: len(maps) for layer, maps in layer_maps(first, item(data, 0)[0], layers).items()
    }
    chosen = {
        layer: list(channels) if channels is not None else list(range(min(8, widths[layer])))
        for layer in layers
    }
    for layer, shown in chosen.items():
        if shown and max(shown) >= widths[layer]:
            raise ConvlensError(
                f"channel {max(shown)} is out of range: layer {layer!r} has {widths[layer]} channels"
            )
    results = [
        _top1(known[1], layers)
        if known is not None and _same_weights(model, known[0])
        else scan(model, data, layers, k=1, batch_size=batch_size, progress=progress)
        for model in models
    ]
    evo = Evolution([str(c) for c in checkpoints], results, chosen)
    size = tuple(item(data, 0)[0].shape)
    projections = {}
    for layer, shown in chosen.items():
        box = receptive_field(first, layer, size)
        cells = [evolution_projections(evo, models, data, layer, c, box) for c in shown]
        if cells:
            projections[layer] = torch.stack(cells)
    return replace(evo, projections=projections)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold equal state (same names, equal tensors)."""
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(
        torch.equal(left[name].cpu(), right[name].cpu()) for name in left
    )


def _top1(result: ScanResult, layers: Sequence[str]) -> ScanResult:
    """The k=1 scan contained in a scan of any k (its first column: the same image, value and
    position, ties to the lower index in both)."""
    return ScanResult(
        {
            layer: TopK(top.values[:, :1], top.indices[:, :1], top.positions[:, :1])
            for layer, top in ((layer, result[layer]) for layer in layers)
        },
        {**result.meta, "k": 1},
    )


def loaded_checkpoints(evo: Evolution, spec: str) -> list[LoadedModel]:
    """The models of an evolution's checkpoints, for rendering projections."""
    return [load_model(spec, checkpoint) for checkpoint in evo.checkpoints]


def evolution_projections(
    evo: Evolution,
    models: Sequence[nn.Module],
    data: Dataset,
    layer: str,
    channel: int,
    field: ReceptiveField,
) -> torch.Tensor:
    """(checkpoints, C, s, s): per checkpoint, the deconvnet projection of the channel's
    strongest activation on its image, cropped to that position's receptive field `field`."""
    cells = []
    for model, (_, index, (y, x)) in zip(models, evo.strongest(layer, channel)):
        image = item(data, index)[0]
        projected = deconvnet(model, image[None], Unit(layer, channel, y, x))[0].detach().cpu()
        cells.append(crop_padded(projected, field.box(y, x)))
    return torch.stack(cells)
