"""Activation vectors sampled over a dataset for the activation atlas: one per image, at a
random position where a layer fires, with the class the model predicts for the image. Memory
is bounded by the sample's size whatever the dataset's: a Dataset is read only at the sampled
images, a DataLoader streamed whole through a reservoir."""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from convlens._errors import ConvlensError
from convlens._progress import tqdm
from convlens.attribution.cam import not_spatial
from convlens.data import BatchStream
from convlens.hooks import capture, model_device, preserved_state


def sample_activations(
    model: nn.Module,
    data: Dataset | DataLoader,
    layers: Sequence[str],
    samples: int,
    *,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """Per layer, (S, K) activation vectors, one per image at a random position where the layer
    is not silent, a uniform sample of at most `samples` of them over the whole data; and (S,)
    the class the model predicts for each vector's image (-1 for a model without class scores).

    A Dataset longer than `samples` is read only at `samples` images drawn at random (seeded),
    so the cost follows `samples`, not the dataset; a DataLoader is streamed whole through a
    reservoir (algorithm R), so memory is bounded by `samples` either way. One pass
    for all layers; the same seed gives the same sample whatever `batch_size` and the other
    layers. A layer that fires on fewer than two images is left out, with a warning."""
    _check_spatial(model, data, layers)
    places = {layer: torch.Generator().manual_seed(_layer_seed(seed, layer)) for layer in layers}
    kept = {layer: Reservoir(samples, seed + 1) for layer in layers}
    stream = BatchStream(data, batch_size, _drawn_images(data, samples, seed))
    device = model_device(model)
    with preserved_state(model), capture(model, layers) as acts, torch.inference_mode():
        for batch in tqdm(stream, desc="activation atlas", unit="batch", disable=not progress):
            predicted = _predicted(model(batch.images.to(device)))
            for layer in layers:
                vectors, chosen = _one_position(acts[layer].float().cpu(), places[layer])
                kept[layer].add(vectors, predicted[chosen])
    silent = [layer for layer, reservoir in kept.items() if reservoir.seen < 2]
    if silent:
        warnings.warn(f"left out, silent on all but at most one image: {silent}", stacklevel=3)
    return {  # cloned outside inference mode: tensors the caller may change or differentiate
        layer: (r.vectors.clone(), r.classes.numpy()) for layer, r in kept.items() if r.seen >= 2
    }


def _layer_seed(seed: int, layer: str) -> int:
    """The seed of `layer`'s random positions: its own (layers of the same map size do not all
    pick the same position in an image), the same whatever the other layers."""
    return seed + 2 + zlib.crc32(layer.encode())


def _drawn_images(data: Dataset | DataLoader, samples: int, seed: int) -> list[int] | None:
    """`samples` image indices drawn without replacement, in order, when `data` is a Dataset
    longer than that; else None (every image)."""
    if isinstance(data, DataLoader) or len(data) <= samples:
        return None
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(len(data), generator=generator)[:samples].tolist())


def _check_spatial(model: nn.Module, data: Dataset | DataLoader, layers: Sequence[str]) -> None:
    """Refuse, before the pass over the data, an empty dataset or a layer whose output on the
    first image is not a spatial map (naming the layers that have one)."""
    try:
        first = next(iter(BatchStream(data, 1))).images
    except StopIteration:
        raise ConvlensError("the data is empty: an activation atlas needs images") from None
    with preserved_state(model), capture(model, layers, stop=True) as acts, torch.no_grad():
        acts.forward(first.to(model_device(model)))
    for layer in layers:
        if acts[layer].dim() != 4:
            raise not_spatial(model, first, layer, tuple(acts[layer].shape))


def _predicted(logits: torch.Tensor) -> torch.Tensor:
    """(N,) the predicted class of each image; -1 for a model without (N, classes) scores."""
    if logits.dim() != 2:
        return torch.full((len(logits),), -1, dtype=torch.long)
    return logits.argmax(dim=1).cpu()


def _one_position(
    output: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random non-silent position's channel vector per image of `output` (N, K, h, w), and
    which images had one (an image silent everywhere gives none)."""
    flat = output.flatten(2)  # (N, K, h*w)
    keys = torch.rand(flat.shape[0], flat.shape[2], generator=generator)
    alive = flat.abs().sum(dim=1) > 0
    keys = torch.where(alive, keys, -1.0)
    position = keys.argmax(dim=1)
    chosen = alive.any(dim=1)
    vectors = flat[torch.arange(len(flat)), :, position]
    return vectors[chosen], chosen


class Reservoir:
    """A uniform sample of at most `capacity` rows from a stream (reservoir sampling, algorithm
    R): row t of the stream replaces a random kept row with probability capacity / (t + 1)."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self.generator = torch.Generator().manual_seed(seed)
        self.seen = 0
        self.vectors = torch.empty(0)
        self.classes = torch.empty(0, dtype=torch.long)

    def add(self, vectors: torch.Tensor, classes: torch.Tensor) -> None:
        """Offer rows `vectors` (n, K) with their `classes` (n,), in stream order."""
        count = len(vectors)
        if not count:
            return
        if not len(self.vectors):
            self.vectors = torch.empty(0, vectors.shape[1])
        t = torch.arange(self.seen, self.seen + count)
        draws = (torch.rand(count, generator=self.generator, dtype=torch.float64) * (t + 1)).long()
        slots = torch.where(t < self.capacity, t, draws)
        self.seen += count
        wanted = (slots < self.capacity).nonzero()[:, 0]
        if not len(wanted):
            return
        # a slot drawn twice in one batch keeps the later row, as the one-by-one stream would
        reversed_slots = slots[wanted].flip(0).numpy()
        _, last = np.unique(reversed_slots, return_index=True)
        rows = wanted.flip(0)[torch.from_numpy(last)]
        self._put(slots[rows], vectors[rows], classes[rows])

    def _put(self, slots: torch.Tensor, vectors: torch.Tensor, classes: torch.Tensor) -> None:
        size = min(self.seen, self.capacity)
        if len(self.vectors) < size:  # grow to the rows held so far (never past capacity)
            grown = torch.empty(size, self.vectors.shape[1])
            grown[: len(self.vectors)] = self.vectors
            more = torch.full((size,), -1, dtype=torch.long)
            more[: len(self.classes)] = self.classes
            self.vectors, self.classes = grown, more
        self.vectors[slots] = vectors.float()
        self.classes[slots] = classes.long()
