"""Activation atlas (Carter et al. 2019): a layer seen as a whole. Activation vectors sampled at
random positions over a dataset, laid out in 2-D by t-SNE, averaged over the cells of a grid;
each cell gets a synthesised icon, its count and the class the network predicts most there.

Memory is bounded by `samples` whatever the dataset's size: a Dataset is read at `samples`
random images, a DataLoader streamed through a reservoir."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from convlens._errors import ConvlensError
from convlens._progress import tqdm
from convlens._shown import Shown
from convlens.analysis.groups import ICON_STEPS, direction_icons
from convlens.data import BatchStream
from convlens.embedding import principal_components, tsne
from convlens.hooks import capture, model_device, preserved_state
from convlens.models.card import UNKNOWN, ModelCard, card_for_inputs


@dataclass(frozen=True)
class ActivationAtlas(Shown):
    """`layer`'s atlas on a `grid` x `grid` layout. Per sample (S of them): `vectors` (S, K),
    `xy` (S, 2) its place in [0, 1]^2 (x right, y down), `classes` (S,) the class the model
    predicts for the image it came from. Per cell holding samples (M of them): `cells` (M, 2)
    its (row, column), `means` (M, K) the mean vector, `counts` (M,), `dominant` (M,) the class
    predicted most there and `share` (M,) its fraction, `icons` (M, C, s, s) in [0, 1] (None
    when not synthesised). `only` is the class of a class-filtered atlas (`class_atlas`)."""

    layer: str
    grid: int
    vectors: torch.Tensor
    xy: np.ndarray
    classes: np.ndarray
    cells: np.ndarray
    means: torch.Tensor
    counts: np.ndarray
    dominant: np.ndarray
    share: np.ndarray
    icons: torch.Tensor | None = None
    card: ModelCard = UNKNOWN
    only: int | None = None

    def layout(self) -> np.ndarray:
        """(grid, grid) the index of each cell's entry in `cells`/`means`/`icons`, -1 if empty."""
        found = np.full((self.grid, self.grid), -1, dtype=np.int64)
        found[self.cells[:, 0], self.cells[:, 1]] = np.arange(len(self.cells))
        return found

    def class_counts(self) -> np.ndarray:
        """(classes, grid, grid): how many samples of each predicted class fall in each cell
        (where in the layer's layout the network sees each class)."""
        row_col = _grid_places(self.xy, self.grid)
        counts = np.zeros((int(self.classes.max()) + 1, self.grid, self.grid), dtype=np.int64)
        known = self.classes >= 0
        np.add.at(counts, (self.classes[known], row_col[known, 0], row_col[known, 1]), 1)
        return counts


def activation_atlas(
    model: nn.Module,
    data: Dataset | DataLoader,
    layer: str,
    grid: int = 20,
    samples: int = 10_000,
    **options: object,
) -> ActivationAtlas:
    """The activation atlas of `layer` (a layer with a spatial map) over `data`.

    One activation vector per image, at a random position where the layer is not silent, is
    kept in a reservoir of `samples` (uniform over the dataset; memory bounded by `samples`).
    The vectors, scaled to unit length, are laid out by t-SNE (openTSNE, `convlens.embedding.tsne`;
    exact duplicates share one place), the layout cut into a `grid` x `grid` grid, and every
    cell's vectors averaged. With `icons` (default True), each cell's mean gets an image
    maximising it (`direction_neuron` with cosine power 1 on the layer's unit canvas,
    `icon_steps` steps, all cells optimised together, `icon_batch` at a time). `options`:
    icons, icon_steps, icon_batch, seed, batch_size, progress (see `activation_atlases`).

    Example:
        >>> found = activation_atlas(loaded.model, test_set, "features.13", grid=12)  # doctest: +SKIP
        >>> found.icons.shape[0] == len(found.cells)
        True
    """
    return activation_atlases(model, data, [layer], grid, samples, **options)[layer]


def activation_atlases(
    model: nn.Module,
    data: Dataset | DataLoader,
    layers: Sequence[str],
    grid: int = 20,
    samples: int = 10_000,
    *,
    icons: bool = True,
    icon_steps: int = ICON_STEPS,
    icon_batch: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, ActivationAtlas]:
    """`activation_atlas` of several layers from one pass over the data (each layer's atlas
    equals the one made alone)."""
    _check_sizes(grid, samples, icon_steps)
    sampled = sample_activations(
        model, data, layers, samples, seed=seed, batch_size=batch_size, progress=progress
    )
    shape = next(iter(BatchStream(data, 1))).images.shape[1:]
    found, card = {}, card_for_inputs(model, shape)
    for layer, (vectors, classes) in sampled.items():
        xy = place(vectors, seed)
        atlas = ActivationAtlas(
            layer, grid, vectors, xy, classes, *_cells(xy, grid, vectors, classes), card=card
        )
        found[layer] = with_icons(atlas, model, icon_steps, icon_batch, seed) if icons else atlas
    return found


def _check_sizes(grid: int, samples: int, icon_steps: int) -> None:
    for name, value, low in (
        ("grid", grid, 1),
        ("samples", samples, 2),
        ("icon_steps", icon_steps, 1),
    ):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def class_atlas(
    found: ActivationAtlas,
    model: nn.Module,
    label: int,
    *,
    icons: bool = True,
    icon_steps: int = ICON_STEPS,
    icon_batch: int | None = None,
    seed: int = 0,
) -> ActivationAtlas:
    """`found` kept to the samples of images the model predicts as class `label`, on the same
    layout: where in the layer the network sees that class. Cells are averaged again from those
    samples only, and get new icons.

    Example:
        >>> boots = class_atlas(found, loaded.model, 9)  # doctest: +SKIP
    """
    keep = found.classes == label
    if not keep.any():
        present = sorted(set(found.classes.tolist()))
        raise ConvlensError(
            f"no sample of the atlas is predicted as class {label}; classes present: {present}"
        )
    vectors, xy, classes = (
        found.vectors[torch.from_numpy(keep)],
        found.xy[keep],
        found.classes[keep],
    )
    kept = ActivationAtlas(
        found.layer, found.grid, vectors, xy, classes, *_cells(xy, found.grid, vectors, classes),
        card=found.card, only=label,
    )  # fmt: skip
    return with_icons(kept, model, icon_steps, icon_batch, seed) if icons else kept


def with_icons(
    found: ActivationAtlas, model: nn.Module, steps: int, batch: int | None, seed: int
) -> ActivationAtlas:
    """`found` with a synthesised icon for every cell's mean vector."""
    drawn = direction_icons(
        model, found.layer, found.means, steps, seed, batch, found.card.transform
    )
    return replace(found, icons=drawn)


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
    reservoir (Vitter's algorithm R), so memory is bounded by `samples` either way. One pass
    for all layers; the same seed gives the same sample whatever `batch_size` and the other
    layers."""
    places = {layer: torch.Generator().manual_seed(seed) for layer in layers}
    kept = {layer: Reservoir(samples, seed + 1) for layer in layers}
    stream = BatchStream(data, batch_size, _drawn_images(data, samples, seed))
    device = model_device(model)
    with preserved_state(model), capture(model, layers) as acts, torch.inference_mode():
        for batch in tqdm(stream, desc="activation atlas", unit="batch", disable=not progress):
            predicted = _predicted(model(batch.images.to(device)))
            for layer in layers:
                vectors, chosen = _one_position(_spatial(acts[layer], layer), places[layer])
                kept[layer].add(vectors, predicted[chosen])
    for layer, reservoir in kept.items():
        if reservoir.seen < 2:
            raise ConvlensError(f"{layer!r} fired on {reservoir.seen} image(s): nothing to lay out")
    return {layer: (r.vectors, r.classes.numpy()) for layer, r in kept.items()}


def _drawn_images(data: Dataset | DataLoader, samples: int, seed: int) -> list[int] | None:
    """`samples` image indices drawn without replacement, in order, when `data` is a Dataset
    longer than that; else None (every image)."""
    if isinstance(data, DataLoader) or len(data) <= samples:
        return None
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(len(data), generator=generator)[:samples].tolist())


def _spatial(output: torch.Tensor, layer: str) -> torch.Tensor:
    """`output` as float on the CPU, refused when it has no spatial map."""
    if output.dim() != 4:
        raise ConvlensError(
            f"layer {layer!r} has no spatial map (output {tuple(output.shape[1:])}); "
            "an activation atlas needs a conv layer's output"
        )
    return output.float().cpu()


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
    """A uniform sample of at most `capacity` rows from a stream (Vitter's algorithm R): row t
    of the stream replaces a random kept row with probability capacity / (t + 1)."""

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


LAYOUT_ITERATIONS = 250
"""t-SNE iterations after the early exaggeration: on 1,000 activations of the built-in network
250 keep as many of each point's 10 nearest neighbours as 500 (0.58 at features.5, 0.51 at
features.13) in 70 % of the time."""


def place(vectors: torch.Tensor, seed: int = 0) -> np.ndarray:
    """(S, 2) places in [0, 1]^2 of unit-length `vectors`: t-SNE (perplexity 30, lower for few
    points; `LAYOUT_ITERATIONS`), principal components for under 10 distinct vectors; exact duplicates are laid out
    once and share their place."""
    unit = torch.nn.functional.normalize(vectors.float(), dim=1).numpy()
    distinct, inverse = np.unique(unit, axis=0, return_inverse=True)
    if len(distinct) < 10:
        xy = principal_components(distinct.astype(np.float64), 2)
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    else:
        perplexity = min(30.0, (len(distinct) - 1) / 3.5)
        xy = tsne(distinct, perplexity=perplexity, iterations=LAYOUT_ITERATIONS, seed=seed)
    low, high = xy.min(axis=0), xy.max(axis=0)
    xy = (xy - low) / np.where(high > low, high - low, 1.0)
    return xy[inverse.reshape(-1)]


def _cells(
    xy: np.ndarray, grid: int, vectors: torch.Tensor, classes: np.ndarray
) -> tuple[np.ndarray, torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """The occupied cells of the grid over `xy`: (row, column), mean vector, count, dominant
    class and its share."""
    row_col = _grid_places(xy, grid)
    flat = row_col[:, 0] * grid + row_col[:, 1]
    occupied, which, counts = np.unique(flat, return_inverse=True, return_counts=True)
    index = torch.from_numpy(which.reshape(-1))
    sums = torch.zeros(len(occupied), vectors.shape[1]).index_add_(0, index, vectors.float())
    means = sums / torch.from_numpy(counts)[:, None].float()
    tally = np.zeros((len(occupied), int(classes.max()) + 2), dtype=np.int64)
    np.add.at(tally, (which.reshape(-1), classes + 1), 1)  # column 0: no class (-1)
    dominant = tally.argmax(axis=1) - 1
    share = tally.max(axis=1) / counts
    cells = np.stack([occupied // grid, occupied % grid], axis=1)
    return cells, means, counts, dominant, share


def _grid_places(xy: np.ndarray, grid: int) -> np.ndarray:
    """(S, 2) the (row, column) of the grid cell of each place in [0, 1]^2 (x right, y down)."""
    return np.minimum((xy[:, ::-1] * grid).astype(np.int64), grid - 1)
