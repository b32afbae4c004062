"""Top-k dataset examples of every feature map (Zeiler & Fergus Fig. 2): one streaming pass,
memory O(layers x channels x k), resumable from a checkpoint, shardable over processes.

An image's score for a channel is the max over positions of that channel's map (the module's
output); each image appears at most once per channel; ties go to the lower dataset index.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from convlens._errors import ConvlensError
from convlens._io import read_checkpoint, read_checkpoint_meta, remove_checkpoint, write_checkpoint
from convlens._progress import tqdm
from convlens._shown import Shown
from convlens.attribution import deconvnet
from convlens.data import BatchStream
from convlens.data.select import take
from convlens.hooks import capture, model_device, preserved_state, resolve_layer
from convlens.models.card import UNKNOWN, ModelCard, card_of
from convlens.models.layers import ReceptiveField, default_layers, receptive_field
from convlens.targets import Unit
from convlens.topk import ScanResult, TopK, merge_topk

__all__ = [
    "ScanResult",
    "TopExamples",
    "TopK",
    "batch_candidates",
    "channel_maxima",
    "fingerprint",
    "scan",
    "top_examples",
]


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


def fingerprint(model: nn.Module) -> str:
    """A short hash of the model's parameters and buffers, so a changed model is detected:
    names, shapes, each tensor's sum and norm, and up to 4096 of its values (hashing every byte of
    a large model would cost more than a short scan)."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().flatten()
        sample = flat[:: max(1, flat.numel() // 4096)].cpu().contiguous()
        values = flat.double()  # rounded: the same whatever the reduction order (threads)
        norm = torch.linalg.vector_norm(values).item()
        summary = f"{norm:.12g}{values.sum().item() / max(norm, 1e-300):.9f}"
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}{summary}".encode())
        digest.update(sample.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


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
        checkpoint: a file for the running state, written atomically every `checkpoint_every`
            batches; the same scan started again resumes from it and ends with exactly the
            result of an unbroken run (a different model, dataset, layers or k is refused).
        shard: (rank, world): scan dataset indices rank, rank + world, ... only.
        description: model and data specs recorded in the result's metadata.
        channels_last: run convolutions in channels-last memory format (same values, faster on CPU).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    layers = list(layers) if layers else default_layers(model)
    for layer in layers:
        resolve_layer(model, layer)
    stream, meta = _plan(model, data, batch_size, shard)
    meta = {"layers": layers, "k": k, **meta, **(description or {})}
    state = _State.resume(checkpoint, meta, model_device(model))
    with (
        preserved_state(model),
        capture(model, layers, stop=True, reduce=channel_maxima) as acts,
        torch.inference_mode(),
    ):
        bar = tqdm(stream, desc="scan", unit="batch", disable=not progress, initial=state.done)
        for batch in _skip(stream, state.done):
            memory_format = torch.channels_last if channels_last else torch.contiguous_format
            acts.forward(batch.images.to(state.device, memory_format=memory_format))
            state.add([acts[layer] for layer in layers], batch.indices, k)
            bar.update(1)
            bar.set_postfix(images_per_s=f"{state.rate(batch_size):.0f}", refresh=False)
            if checkpoint and state.done % checkpoint_every == 0:
                state.save(checkpoint, meta)
        bar.close()
    if checkpoint:
        remove_checkpoint(checkpoint)
    return ScanResult(state.layers(layers), {**meta, "skipped": stream.skipped})


def _plan(
    model: nn.Module, data: Dataset | DataLoader, batch_size: int, shard: tuple[int, int]
) -> tuple[BatchStream, dict]:
    """The batches of this shard, and the metadata a resumed scan must match."""
    rank, world = shard
    total = len(data.dataset) if isinstance(data, DataLoader) else len(data)
    indices = None if world == 1 else range(rank, total, world)
    meta = {
        "dataset_size": total,
        "batch_size": batch_size,
        "shard": [rank, world],
        "model_fingerprint": fingerprint(model),
    }
    return BatchStream(data, batch_size, indices=indices), meta


@dataclass(frozen=True)
class TopExamples(Shown):
    """What Fig. 2 shows of one channel: its top images (k, C, H, W), the deconvnet projection
    of each recorded activation alone (k, C, H, W), each activation's receptive-field box
    (top, left, bottom, right) in the image, and the images' dataset indices; which channel
    of which layer, and the model's card, for the picture."""

    images: torch.Tensor
    projections: torch.Tensor
    boxes: list[tuple[int, int, int, int]]
    indices: list[int]
    layer: str = ""
    channel: int = -1
    card: ModelCard = UNKNOWN


def top_examples(
    model: nn.Module,
    data: Dataset,
    top: ScanResult | TopK,
    layer: str,
    channel: int,
    field: ReceptiveField | None = None,
) -> TopExamples:
    """Zeiler & Fergus Fig. 2 for one channel of a scanned layer: its top images and their
    projections (one batch). `top` is the scan (or its TopK of `layer`); `field` the layer's
    receptive field (None: computed for the size of the data's images).

    Example:
        >>> found = scan(model, data, ["features.4"])  # doctest: +SKIP
        >>> top_examples(model, data, found, "features.4", 7)  # shows itself in Jupyter  # doctest: +SKIP
    """
    top = top[layer] if isinstance(top, ScanResult) else top
    if not 0 <= channel < len(top.values):
        raise ConvlensError(
            f"channel must be in 0..{len(top.values) - 1} of {layer}, got {channel}"
        )
    if field is None:
        field = receptive_field(model, layer, tuple(take(data, [0])[0].shape[1:]))
    return top_examples_of(model, data, top, layer, [channel], field)[0]


def top_examples_of(
    model: nn.Module,
    data: Dataset,
    top: TopK,
    layer: str,
    channels: Sequence[int],
    field: ReceptiveField,
) -> list[TopExamples]:
    """`top_examples` of several channels, their projections in one deconvnet batch (the
    images of all of them): fewer, larger passes, each image's projection its own."""
    found = []
    for channel in channels:
        keep = top.indices[channel] >= 0
        positions = [(int(y), int(x)) for y, x in top.positions[channel][keep].tolist()]
        indices = top.indices[channel][keep].tolist()
        found.append((channel, positions, indices, take(data, indices)[0]))
    images = torch.cat([f[3] for f in found])
    units = [Unit(layer, channel, y, x) for channel, positions, _, _ in found for y, x in positions]
    projections = deconvnet(model, images, units).split([len(f[2]) for f in found])
    card = card_of(model)
    return [
        TopExamples(
            chosen, projected, [field.box(y, x) for y, x in positions], indices, layer, c, card
        )
        for (c, positions, indices, chosen), projected in zip(found, projections)
    ]


class _State:
    """The running top-k of a scan: every layer's channels stacked, the layers' widths, the
    number of batches done."""

    def __init__(self, device: torch.device, running: TopK | None = None, widths=None, done=0):
        self.device, self.running, self.widths, self.done = device, running, widths, done
        self.started, self.resumed_at = time.perf_counter(), done

    def add(self, maxima: list[tuple[torch.Tensor, torch.Tensor]], indices: torch.Tensor, k: int):
        """Merge one batch's candidates, from the `channel_maxima` of each layer."""
        candidates = batch_candidates(maxima, indices)
        self.widths = self.widths or [layer_values.shape[1] for layer_values, _ in maxima]
        if self.running is None:
            self.running = TopK.empty(candidates.values.shape[0], k, candidates.values.device)
        self.running = merge_topk(self.running, candidates, k)
        self.done += 1

    def rate(self, batch_size: int) -> float:
        """Images per second since this process started."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return (self.done - self.resumed_at) * batch_size / elapsed

    def layers(self, names: Sequence[str]) -> dict[str, TopK]:
        """The finished result per layer (empty when no batch was read)."""
        if self.running is None:
            return {}
        return {name: top.finished() for name, top in zip(names, self.running.split(self.widths))}

    def save(self, path: str | Path, meta: dict) -> None:
        """Write the state atomically, with the metadata that a resume must match."""
        tensors = {}
        for name, top in zip(meta["layers"], self.running.split(self.widths)):
            tensors |= top.to_tensors(name)
        write_checkpoint(path, tensors, {**meta, "batches_done": self.done})

    @classmethod
    def resume(cls, path: str | Path | None, meta: dict, device: torch.device) -> _State:
        """The state saved at `path` (a fresh one when there is none); a state of a different
        model, dataset, layer list or k is refused."""
        if path is None or not Path(path).exists():
            return cls(device)
        saved = read_checkpoint_meta(path)
        changed = [key for key in meta if saved.get(key) != meta[key]]
        if changed:
            raise ConvlensError(
                f"{path} holds a scan of a different {', '.join(changed)}; it is not mixed in. "
                "Delete it to start afresh, or scan into another folder"
            )
        tensors, saved = read_checkpoint(path)
        tops = [TopK.from_tensors(tensors, layer).running() for layer in meta["layers"]]
        stacked = TopK(*(tensor.to(device) for tensor in vars(TopK.stack(tops)).values()))
        return cls(device, stacked, [top.values.shape[0] for top in tops], saved["batches_done"])


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
