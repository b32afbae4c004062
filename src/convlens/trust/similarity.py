"""How alike two attribution maps are, the measures of the sanity checks (Adebayo et al. 2018):
Spearman rank correlation of |map| and of the signed map, SSIM, and the correlation of their
HOG features. A map (C, H, W) is first reduced to (H, W): summed over channels (signed), or its
|values| summed over channels (magnitude).

What a map is compared by (its standardised ranks, its [0, 1] magnitude, its standardised HOG
features) is computed once per batch of maps (`features`), so the randomisation test compares
every step's maps with the original ones without ranking the originals again."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from skimage.feature import hog
from skimage.metrics import structural_similarity

from convlens.attribution.score import unit_scaled

METRICS = ("spearman_abs", "spearman", "ssim", "hog")


@dataclass(frozen=True)
class Features:
    """A batch of N maps as the metrics see them: `ranks_abs` and `ranks` (N, H*W) the average
    ranks of |map| and of the signed map, `hog` (N, F) HOG features, each row centred and
    scaled to unit length (0 for a constant row), so a correlation is a row-wise dot product;
    `unit` (N, H, W) |map| scaled to [0, 1] for SSIM."""

    ranks_abs: np.ndarray
    ranks: np.ndarray
    unit: np.ndarray
    hog: np.ndarray

    def rolled(self) -> Features:
        """The same maps, image i in place i - 1 (the first last)."""
        return Features(
            **{f.name: np.roll(getattr(self, f.name), -1, axis=0) for f in fields(self)}
        )


def reduce_map(values: torch.Tensor, magnitude: bool) -> np.ndarray:
    """(N, H, W) float64 maps from (N, H, W) or (N, C, H, W) attributions."""
    values = values.detach().double().cpu()
    if magnitude:
        values = values.abs()
    if values.dim() == 4:
        values = values.sum(1)
    return values.numpy()


def average_ranks(rows: np.ndarray) -> np.ndarray:
    """Each row's ranks from 1, ties sharing their average rank (as `scipy.stats.rankdata`),
    for (N, P) rows at once."""
    values, order = torch.sort(torch.from_numpy(np.ascontiguousarray(rows)), dim=1, stable=True)
    count, width = values.shape
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    group = (starts.cumsum(1) - 1 + width * torch.arange(count)[:, None]).flatten()
    places = torch.arange(1, width + 1, dtype=torch.float64).repeat(count)
    sums = torch.zeros(count * width, dtype=torch.float64).index_add_(0, group, places)
    sizes = torch.zeros(count * width, dtype=torch.float64).index_add_(
        0, group, torch.ones_like(places)
    )
    ranks = torch.empty(count, width, dtype=torch.float64)
    ranks.scatter_(1, order, (sums[group] / sizes[group]).view(count, width))
    return ranks.numpy()


def _standardised(rows: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit length; 0 for a constant row."""
    centred = rows - rows.mean(1, keepdims=True)
    length = np.sqrt((centred * centred).sum(1, keepdims=True))
    return np.where(length > 0, centred / np.where(length > 0, length, 1.0), 0.0)


def _hog(image: np.ndarray) -> np.ndarray:
    """HOG features of a [0, 1] map: 9 orientations, cells of an eighth of the side (at least 2
    pixels), 2x2 blocks."""
    cell = max(2, min(image.shape) // 8)
    return hog(image, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2))


def features(maps: torch.Tensor) -> Features:
    """What the metrics compare of each of `maps` ((N, H, W) or (N, C, H, W))."""
    signed, magnitude = reduce_map(maps, False), reduce_map(maps, True)
    unit = unit_scaled(torch.from_numpy(magnitude)).numpy()
    return Features(
        ranks_abs=_standardised(average_ranks(magnitude.reshape(len(maps), -1))),
        ranks=_standardised(average_ranks(signed.reshape(len(maps), -1))),
        unit=unit,
        hog=_standardised(np.stack([_hog(image) for image in unit])),
    )


def compare(first: Features, second: Features) -> dict[str, np.ndarray]:
    """Per image (N,), each of `METRICS` between two batches of maps of the same images."""
    ssim = [structural_similarity(x, y, data_range=1.0) for x, y in zip(first.unit, second.unit)]
    return {
        "spearman_abs": (first.ranks_abs * second.ranks_abs).sum(1),
        "spearman": (first.ranks * second.ranks).sum(1),
        "ssim": np.asarray(ssim),
        "hog": (first.hog * second.hog).sum(1),
    }


def similarity(first: torch.Tensor, second: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image (N,), each of `METRICS` between two batches of maps of the same images."""
    return compare(features(first), features(second))


def baseline(found: Features) -> dict[str, float]:
    """The randomisation baseline (Arun et al. 2021): the mean similarity between maps of
    different images of the unchanged model, each image paired with the next (the last with
    the first). A map that moved no further than this from the original says nothing about the
    weights."""
    if len(found.unit) < 2:
        return {metric: float("nan") for metric in METRICS}
    return {
        metric: float(values.mean()) for metric, values in compare(found, found.rolled()).items()
    }
