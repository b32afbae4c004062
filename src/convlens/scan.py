"""Top-k dataset examples of every feature map (Zeiler & Fergus Fig. 2): one streaming pass,
memory O(layers x channels x k), resumable from a checkpoint, shardable over processes.

An image's score for a channel is the max over positions of that channel's map (the module's
output); each image appears at most once per channel; ties go to the lower dataset index.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from convlens._errors import ConvlensError
from convlens.analysis.filters import conv_layers, rectified_output
from convlens.data import BatchStream
from convlens.hooks import capture, model_device, preserved_state, resolve_layer
from convlens.models.loading import safetensors_metadata
from convlens.report import write_checkpoint

_NO_INDEX = torch.iinfo(torch.int64).max  # an empty slot: loses every tie


@dataclass(frozen=True)
class TopK:
    """The k strongest images of each channel of one layer: `values (C, k)` descending,
    `indices (C, k)` dataset indices (-1 where the dataset had fewer than k images),
    `positions (C, k, 2)` (y, x) of the max in the layer's map."""

    values: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor


@dataclass
class ScanResult:
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
        """Tensors as safetensors at `path`, metadata as JSON beside it (`.json`), atomically."""
        path = Path(path)
        tensors = {
            f"{layer}/{name}": getattr(top, name).contiguous()
            for layer, top in self.layers.items()
            for name in ("values", "indices", "positions")
        }
        write_checkpoint(path, tensors, self.meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ScanResult:
        """Read a result written by `save`."""
        path = Path(path)
        if not path.exists():
            raise ConvlensError(f"no scan result at {path}")
        tensors = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        layers = {
            layer: TopK(
                tensors[f"{layer}/values"],
                tensors[f"{layer}/indices"],
                tensors[f"{layer}/positions"],
            )
            for layer in meta["layers"]
        }
        return cls(layers, meta)


def default_layers(model: nn.Module) -> list[str]:
    """The rectified output of every conv layer (the conv itself where no ReLU module follows)."""
    return [rectified_output(model, conv) for conv in conv_layers(model)]


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


def _empty(channels: int, k: int, device: torch.device) -> TopK:
    return TopK(
        torch.full((channels, k), float("-inf"), device=device),
        torch.full((channels, k), _NO_INDEX, dtype=torch.long, device=device),
        torch.full((channels, k, 2), -1, dtype=torch.long, device=device),
    )


def channel_maxima(activation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's score per channel (max over positions) and its (y, x), first in row-major
    order on ties: (B, C) and (B, C, 2). Taken inside the forward hook, so no map is copied.

    One pass over the map in its own storage order: a max over the flattened map for the default
    format, a whole-map max pool for channels-last (both keep the first maximum; a max with
    indices over a channels-last map would be ~20x slower).
    """
    if activation.dim() != 4:
        raise ConvlensError(
            f"scan needs (N, C, H, W) feature maps; got a layer output of shape {tuple(activation.shape)}"
        )
    width = activation.shape[3]
    if activation.is_contiguous() or not activation.is_contiguous(
        memory_format=torch.channels_last
    ):
        values, flat = activation.flatten(2).max(dim=2)
    else:
        values, flat = F.max_pool2d(activation, activation.shape[2:], return_indices=True)
        values, flat = values.flatten(1), flat.flatten(1)
    return values.float(), torch.stack([flat // width, flat % width], dim=-1)


def batch_candidates(
    maxima: Sequence[tuple[torch.Tensor, torch.Tensor]], indices: torch.Tensor
) -> TopK:
    """A batch's candidates from the `channel_maxima` of each layer, the channels of all layers
    stacked: (ΣC, B), so one merge per batch serves every layer."""
    values = torch.cat([layer_values for layer_values, _ in maxima], dim=1)
    positions = torch.cat([layer_positions for _, layer_positions in maxima], dim=1)
    return TopK(
        values.t(),
        indices.to(values.device).unsqueeze(0).expand(values.shape[1], -1),
        positions.transpose(0, 1),
    )


def split_layers(stacked: TopK, layers: Sequence[str], widths: Sequence[int]) -> dict[str, TopK]:
    """Per-layer views of a state whose channels stack `layers` of `widths` channels."""
    parts = [
        torch.split(getattr(stacked, name), list(widths))
        for name in ("values", "indices", "positions")
    ]
    return {layer: TopK(*pieces) for layer, *pieces in zip(layers, *parts)}


def fingerprint(model: nn.Module) -> str:
    """A short hash of the model's parameters and buffers, so a changed model is detected:
    names, shapes, each tensor's sum and norm, and up to 4096 of its values (hashing every byte of
    a large model would cost more than a short scan)."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().flatten()
        sample = flat[:: max(1, flat.numel() // 4096)].cpu().contiguous()
        values = flat.float() if flat.is_floating_point() else flat.double()
        summary = f"{values.sum().item()!r}{torch.linalg.vector_norm(values).item()!r}"
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}{summary}".encode())
        digest.update(sample.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _finish(layers: dict[str, TopK]) -> dict[str, TopK]:
    return {
        layer: TopK(
            top.values.cpu(),
            torch.where(top.indices == _NO_INDEX, -1, top.indices).cpu(),
            top.positions.cpu(),
        )
        for layer, top in layers.items()
    }


def scan(
    model: nn.Module,
    data: Dataset | DataLoader,
    layers: Sequence[str] | None = None,
    k: int = 9,
    *,
    batch_size: int = 64,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 20,
    shard: tuple[int, int] = (0, 1),
    description: dict | None = None,
    progress: bool = False,
    channels_last: bool = True,
) -> ScanResult:
    """The k dataset images that excite each channel of each layer most, in one pass.

    Example:
        >>> result = scan(model, FashionMNIST("test", transform=loaded.transform), ["features.13"])  # doctest: +SKIP
        >>> result["features.13"].indices[5]  # the 9 test images that excite channel 5 most
        tensor([...])

    Args:
        model: any CNN; left as found.
        data: a Dataset of images or (image, label) pairs (preprocessed), or a DataLoader.
        layers: named modules to record (default: every conv layer's rectified output).
        k: how many images per channel.
        checkpoint: a file to keep the running state in, written atomically every
            `checkpoint_every` batches; a scan started again with the same file resumes from it
            and ends with exactly the result of an unbroken run. A different model, dataset,
            layer list or k is refused.
        shard: (rank, world): scan dataset indices rank, rank + world, ... only.
        description: model and data specs recorded in the result's metadata.
        channels_last: run convolutions in channels-last memory format (same values, faster on CPU).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    layers = list(layers) if layers else default_layers(model)
    for layer in layers:
        resolve_layer(model, layer)
    device = model_device(model)
    rank, world = shard
    total = len(data.dataset) if isinstance(data, DataLoader) else len(data)
    indices = None if world == 1 else range(rank, total, world)
    stream = BatchStream(data, batch_size, indices=indices)
    meta = {
        "layers": layers,
        "k": k,
        "dataset_size": total,
        "batch_size": batch_size,
        "shard": [rank, world],
        "model_fingerprint": fingerprint(model),
        **(description or {}),
    }
    running, widths, done = (
        _resume(Path(checkpoint), meta, device) if checkpoint else (None, None, 0)
    )
    started = time.perf_counter()
    with (
        preserved_state(model),
        capture(model, layers, stop=True, reduce=channel_maxima) as acts,
        torch.inference_mode(),
    ):
        bar = tqdm(stream, desc="scan", unit="batch", disable=not progress, initial=done)
        for number, batch in enumerate(_skip(stream, done), start=done + 1):
            images = batch.images.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            acts.forward(images)
            maxima = [acts[layer] for layer in layers]
            widths = widths or [layer_values.shape[1] for layer_values, _ in maxima]
            candidates = batch_candidates(maxima, batch.indices)
            if running is None:
                running = _empty(sum(widths), k, candidates.values.device)
            running = merge_topk(running, candidates, k)
            bar.update(1)
            bar.set_postfix(
                images_per_s=f"{number * batch_size / max(time.perf_counter() - started, 1e-9):.0f}",
                refresh=False,
            )
            if checkpoint and number % checkpoint_every == 0:
                _save_state(Path(checkpoint), meta, split_layers(running, layers, widths), number)
        bar.close()
    if checkpoint and Path(checkpoint).exists():
        Path(checkpoint).unlink()
        Path(checkpoint).with_suffix(".json").unlink(missing_ok=True)
    meta["skipped"] = stream.skipped
    found = split_layers(running, layers, widths) if running is not None else {}
    return ScanResult(_finish(found), meta)


def _skip(stream: BatchStream, done: int):
    """The stream's batches after the first `done` (already in a resumed state)."""
    if done == 0:
        yield from stream
        return
    batches = iter(stream)
    if isinstance(stream.data, DataLoader):
        for _ in range(done):
            next(batches)
        yield from batches
        return
    order = list(stream.indices) if stream.indices is not None else list(range(len(stream.data)))
    rest = BatchStream(stream.data, stream.batch_size, indices=order[done * stream.batch_size :])
    yield from rest
    stream.skipped.extend(rest.skipped)


def _save_state(path: Path, meta: dict, running: dict[str, TopK], batches: int) -> None:
    tensors = {
        f"{layer}/{name}": getattr(top, name).cpu().contiguous()
        for layer, top in running.items()
        for name in ("values", "indices", "positions")
    }
    write_checkpoint(path, tensors, {**meta, "batches_done": batches})


def _resume(
    path: Path, meta: dict, device: torch.device
) -> tuple[TopK | None, list[int] | None, int]:
    """The saved state with every layer's channels stacked, the layers' widths and the number of
    batches done; (None, None, 0) when there is no checkpoint."""
    if not path.exists():
        return None, None, 0
    saved = safetensors_metadata(path)
    batches = saved.pop("batches_done")
    changed = [key for key in meta if saved.get(key) != meta[key]]
    if changed:
        raise ConvlensError(
            f"{path} holds a scan of a different {', '.join(changed)}; it is not mixed in. "
            "Delete it to start afresh, or scan into another folder"
        )
    tensors = load_file(str(path))
    stacked = TopK(
        *(
            torch.cat([tensors[f"{layer}/{name}"] for layer in meta["layers"]]).to(device)
            for name in ("values", "indices", "positions")
        )
    )
    widths = [tensors[f"{layer}/values"].shape[0] for layer in meta["layers"]]
    return stacked, widths, batches


def gather_shards(result: ScanResult, k: int) -> ScanResult:
    """Merge every rank's result exactly (torch.distributed all-gather); every rank gets the whole."""
    import torch.distributed as dist

    world = dist.get_world_size()
    merged = {}
    for layer, top in result.layers.items():
        parts = []
        for name in ("values", "indices", "positions"):
            local = getattr(top, name).contiguous()
            gathered = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(gathered, local)
            parts.append(gathered)
        pieces = [TopK(v, torch.where(i < 0, _NO_INDEX, i), p) for v, i, p in zip(*parts)]
        combined = pieces[0]
        for piece in pieces[1:]:
            combined = merge_topk(combined, piece, k)
        merged[layer] = TopK(
            combined.values,
            torch.where(combined.indices == _NO_INDEX, -1, combined.indices),
            combined.positions,
        )
    meta = {**result.meta, "shard": [0, 1], "world_size": world}
    return ScanResult(merged, meta)


@contextmanager
def sharded() -> Iterator[tuple[int, int]]:
    """(rank, world) from torchrun's environment; (0, 1) for a single process. With more than
    one, torch.distributed is initialised for the block (gloo on CPU, nccl on GPUs) and torn down
    after it, so no process exits with its communication threads still running."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        if owned:
            dist.destroy_process_group()
