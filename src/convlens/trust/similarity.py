"""How alike two attribution maps are, the measures of the sanity checks (Adebayo et al. 2018):
Spearman rank correlation of |map| and of the signed map, SSIM, and the correlation of their
HOG features. A map (C, H, W) is first reduced to (H, W): summed over channels (signed), or its
|values| summed over channels (magnitude)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata
from skimage.feature import hog
from skimage.metrics import structural_similarity

METRICS = ("spearman_abs", "spearman", "ssim", "hog")


def reduce_map(values: torch.Tensor, magnitude: bool) -> np.ndarray:
    """(N, H, W) float64 maps from (N, H, W) or (N, C, H, W) attributions."""
    values = values.detach().double().cpu()
    if magnitude:
        values = values.abs()
    if values.dim() == 4:
        values = values.sum(1)
    return values.numpy()


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho per row of (N, P) arrays (ties take their average rank); 0 for a constant
    row."""
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    return _pearson(ra, rb)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    denominator = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, (a * b).sum(1) / safe, 0.0)


def _rows(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(len(maps), -1)


def _unit_range(maps: np.ndarray) -> np.ndarray:
    """Each (H, W) map scaled to [0, 1] (0 where constant)."""
    low = maps.min((1, 2), keepdims=True)
    span = maps.max((1, 2), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)


def _hog(image: np.ndarray) -> np.ndarray:
    """HOG features of a [0, 1] map: 9 orientations, cells of an eighth of the side (at least 2
    pixels), 2x2 blocks."""
    cell = max(2, min(image.shape) // 8)
    return hog(image, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2))


def similarity(first: torch.Tensor, second: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image (N,), each of `METRICS` between two batches of maps of the same images."""
    signed_a, signed_b = reduce_map(first, False), reduce_map(second, False)
    abs_a, abs_b = reduce_map(first, True), reduce_map(second, True)
    unit_a, unit_b = _unit_range(abs_a), _unit_range(abs_b)
    ssim = [structural_similarity(x, y, data_range=1.0) for x, y in zip(unit_a, unit_b)]
    hogs = _pearson(np.stack([_hog(x) for x in unit_a]), np.stack([_hog(y) for y in unit_b]))
    return {
        "spearman_abs": _rank_correlation(_rows(abs_a), _rows(abs_b)),
        "spearman": _rank_correlation(_rows(signed_a), _rows(signed_b)),
        "ssim": np.asarray(ssim),
        "hog": hogs,
    }


def baseline(maps: torch.Tensor) -> dict[str, float]:
    """The randomisation baseline (Arun et al. 2021): the mean similarity between maps of
    different images of the unchanged model, each image paired with the next (the last with
    the first). A map that moved no further than this from the original says nothing about the
    weights."""
    if len(maps) < 2:
        return {metric: float("nan") for metric in METRICS}
    shifted = torch.roll(maps, shifts=-1, dims=0)
    return {metric: float(values.mean()) for metric, values in similarity(maps, shifted).items()}
