"""Activation atlas (Carter et al. 2019): a layer seen as a whole. Activation vectors sampled at
random positions over a dataset (`activation_samples`), laid out in 2-D by t-SNE, averaged over
the cells of a grid; each cell gets a synthesised icon, its count and the class the network
predicts most there."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from convlens._errors import ConvlensError
from convlens._shown import Shown
from convlens.analysis.activation_samples import sample_activations
from convlens.analysis.groups import direction_icons
from convlens.data import BatchStream
from convlens.embedding import principal_components, tsne
from convlens.models.card import UNKNOWN, ModelCard, card_of
from convlens.models.preprocess import Preprocess
from convlens.synthesis.optimize import input_space
from convlens.synthesis.units import UNIT_STEPS

MAX_GRID = 100
"""Cells a side at most: a 100 x 100 atlas already draws up to 10,000 icons."""


@dataclass(frozen=True)
class ActivationAtlas(Shown):
    """`layer`'s atlas on a `grid` x `grid` layout. Per sample (S of them): `vectors` (S, K),
    `xy` (S, 2) its place in [0, 1]^2 (x right, y down), `classes` (S,) the class the model
    predicts for the image it came from (-1 for a model without class scores). Per cell
    holding samples (M of them): `cells` (M, 2) its (row, column), `means` (M, K) the mean
    vector, `counts` (M,), `dominant` (M,) the class predicted most there and `share` (M,) its
    fraction, `icons` (M, C, s, s) in [0, 1] (None when not synthesised). `only` is the class
    of a class-filtered atlas (`class_atlas`); `space` the input space icons are optimised in."""

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
    space: Preprocess | None = None

    def layout(self) -> np.ndarray:
        """(grid, grid) the index of each cell's entry in `cells`/`means`/`icons`, -1 if empty."""
        found = np.full((self.grid, self.grid), -1, dtype=np.int64)
        found[self.cells[:, 0], self.cells[:, 1]] = np.arange(len(self.cells))
        return found

    def class_counts(self) -> np.ndarray:
        """(classes, grid, grid): how many samples of each predicted class fall in each cell
        (where in the layer's layout the network sees each class); no rows without classes."""
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

    One activation vector per image, at a random position where the layer is not silent, a
    uniform sample of at most `samples` of them (`sample_activations`: memory bounded by
    `samples`). The vectors, scaled to unit length, are laid out by t-SNE (openTSNE,
    `convlens.embedding.tsne`; exact duplicates share one place), the layout cut into a
    `grid` x `grid` grid, and every cell's vectors averaged. With `icons` (default True), each
    cell's mean gets an image maximising it (`direction_neuron` with cosine power 1 on the
    layer's unit canvas, `icon_steps` steps, `icon_batch` at a time; None: as many as fit
    `PIXEL_BUDGET`). `options`: icons, icon_steps, icon_batch, seed, batch_size, progress,
    fast (the icons' model in bfloat16).

    Example:
        >>> found = activation_atlas(loaded.model, test_set, "features.13", grid=12)  # doctest: +SKIP
        >>> found.icons.shape[0] == len(found.cells)
        True
    """
    found = activation_atlases(model, data, [layer], grid, samples, **options)
    if layer not in found:
        raise ConvlensError(f"{layer!r} fires on at most one image of the data: no atlas")
    return found[layer]


def activation_atlases(
    model: nn.Module,
    data: Dataset | DataLoader,
    layers: Sequence[str],
    grid: int = 20,
    samples: int = 10_000,
    *,
    icons: bool = True,
    icon_steps: int = UNIT_STEPS,
    icon_batch: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
    fast: bool = False,
) -> dict[str, ActivationAtlas]:
    """`activation_atlas` of several layers from one pass over the data (each layer's atlas
    equals the one made alone); a layer silent on all but one image is left out, with a
    warning."""
    _check_sizes(grid, samples, icon_steps, icon_batch)
    if not layers:
        raise ValueError("layers is empty: name at least one layer with a spatial map")
    sampled = sample_activations(
        model, data, layers, samples, seed=seed, batch_size=batch_size, progress=progress
    )
    space = input_space(model, next(iter(BatchStream(data, 1))).images.shape[1:])
    found = {}
    for layer, (vectors, classes) in sampled.items():
        atlas = _atlas(layer, grid, vectors, place(vectors, seed), classes, card_of(model), space)
        if icons:
            atlas = with_icons(atlas, model, icon_steps, icon_batch, seed, progress, fast)
        found[layer] = atlas
    return found


def _check_sizes(grid: int, samples: int, icon_steps: int, icon_batch: int | None) -> None:
    """A ValueError naming the first bad size, before any work."""
    sizes = [("grid", grid, 1), ("samples", samples, 2), ("icon_steps", icon_steps, 1)]
    if icon_batch is not None:
        sizes.append(("icon_batch", icon_batch, 1))
    for name, value, low in sizes:
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if grid > MAX_GRID:
        raise ValueError(f"grid must be at most {MAX_GRID} cells a side, got {grid}")


def _atlas(
    layer: str,
    grid: int,
    vectors: torch.Tensor,
    xy: np.ndarray,
    classes: np.ndarray,
    card: ModelCard,
    space: Preprocess | None,
    only: int | None = None,
) -> ActivationAtlas:
    """The atlas of these samples at these places: its cells computed, no icons yet."""
    cells = _cells(xy, grid, vectors, classes)
    return ActivationAtlas(
        layer, grid, vectors, xy, classes, *cells, card=card, only=only, space=space
    )


def class_atlas(
    found: ActivationAtlas,
    model: nn.Module,
    label: int,
    *,
    icons: bool = True,
    icon_steps: int = UNIT_STEPS,
    icon_batch: int | None = None,
    seed: int = 0,
) -> ActivationAtlas:
    """`found` kept to the samples of images the model predicts as class `label`, on the same
    layout: where in the layer the network sees that class. Cells are averaged again from those
    samples only, and get new icons.

    Example:
        >>> boots = class_atlas(found, loaded.model, 9)  # doctest: +SKIP
    """
    _check_sizes(found.grid, 2, icon_steps, icon_batch)
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
    kept = _atlas(found.layer, found.grid, vectors, xy, classes, found.card, found.space, label)
    return with_icons(kept, model, icon_steps, icon_batch, seed) if icons else kept


def with_icons(
    found: ActivationAtlas,
    model: nn.Module,
    steps: int,
    batch: int | None,
    seed: int,
    progress: bool = False,
    fast: bool = False,
) -> ActivationAtlas:
    """`found` with a synthesised icon for every cell's mean vector (the model in bfloat16 with
    `fast`)."""
    drawn = direction_icons(
        model, found.layer, found.means, steps, seed, batch, found.space, progress, fast
    )
    return replace(found, icons=drawn)


LAYOUT_ITERATIONS = 250
"""t-SNE iterations after the early exaggeration: on 1,000 activations of the built-in network
250 keep as many of each point's 10 nearest neighbours as 500 (0.58 at features.5, 0.51 at
features.13) in 70 % of the time."""


def place(vectors: torch.Tensor, seed: int = 0) -> np.ndarray:
    """(S, 2) places in [0, 1]^2 of unit-length `vectors`: t-SNE (perplexity 30, lower for few
    points; `LAYOUT_ITERATIONS`), principal components for under 10 distinct vectors; exact
    duplicates are laid out once and share their place. Each axis is scaled between its 1st
    and 99th percentile and clipped, so that a few outliers do not squeeze the rest into a
    few cells."""
    unit = torch.nn.functional.normalize(vectors.float(), dim=1).numpy()
    distinct, inverse = np.unique(unit, axis=0, return_inverse=True)
    if len(distinct) < 10:
        xy = principal_components(distinct.astype(np.float64), 2)
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    else:
        perplexity = min(30.0, (len(distinct) - 1) / 3.5)
        xy = tsne(distinct, perplexity=perplexity, iterations=LAYOUT_ITERATIONS, seed=seed)
    low, high = np.percentile(xy, 1, axis=0), np.percentile(xy, 99, axis=0)
    xy = np.clip((xy - low) / np.where(high > low, high - low, 1.0), 0, 1)
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
