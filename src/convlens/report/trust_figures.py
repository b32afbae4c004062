"""The figures of `convlens trust`, each made once from a finished `Trust`: the cascading
randomisation (Adebayo et al. Fig. 2), the similarity curves, and the deletion and insertion
curves. Nothing here runs a model."""

from __future__ import annotations

import numpy as np
import torch

from convlens import charts, render
from convlens.trust.assess import Trust
from convlens.trust.randomisation import DataRandomisation, Randomisation


def magnitude_tile(values: torch.Tensor, size: int) -> np.ndarray:
    """A map's |values| (summed over channels) as a heat map scaled to its own range."""
    magnitude = values.detach().float().cpu().abs()
    magnitude = magnitude.sum(0) if magnitude.dim() == 3 else magnitude
    shown = render.enlarge(
        render.minmax(magnitude), render.display_scale(magnitude.shape[-1], size)
    )
    return render.heatmap(shown)


def randomisation_figure(found: Randomisation, image: int = 0, size: int = 72) -> np.ndarray:
    """Rows: the methods; columns: the original map of image `image`, then the map after each
    further layer is re-initialised from the output down (cascade; columns name the layer),
    each |map| on its own scale."""
    rows = []
    for method, maps in found.maps.items():
        tiles = [magnitude_tile(step[image], size) for step in maps]
        titles = ["original", *[layer[-11:] for layer in found.steps]]
        row = render.panel_row(list(zip(titles, tiles)))
        rows.append(
            render.caption(row, f"{method}: pass" if found.passed[method] else f"{method}: FAIL")
        )
    return render.stacked(rows)


def data_randomisation_figure(
    found: DataRandomisation, image: int = 0, size: int = 72
) -> np.ndarray:
    """Rows: the methods; columns: the map of image `image` by the trained model and by the
    model trained on permuted labels, each |map| on its own scale."""
    rows = []
    for method, maps in found.maps.items():
        tiles = [("trained", magnitude_tile(maps[0][image], size))]
        tiles.append(("permuted labels", magnitude_tile(maps[1][image], size)))
        verdict = "pass" if found.passed[method] else "FAIL"
        rows.append(render.caption(render.panel_row(tiles), f"{method}: {verdict}"))
    return render.stacked(rows)


def similarity_figure(found: Randomisation) -> np.ndarray:
    """Per metric, each method's mean similarity to its original map after each step (the
    baselines are in the table)."""
    steps = list(range(1, len(found.steps) + 1))
    methods = list(found.similarity)
    panels = []
    for metric in ("spearman_abs", "spearman", "ssim", "hog"):
        lines = np.stack([found.similarity[m][metric].mean(1) for m in methods])
        chart = charts.line_plot(steps, lines, "", "steps randomised", names=methods)
        panels.append((metric, chart))
    return render.panel_row(panels)


def faithfulness_figure(found: Trust) -> np.ndarray:
    """The mean deletion and insertion curves of every method and reference map."""
    names = [*found.methods, *found.references]
    panels = []
    for kind, curves in (("deletion", found.deletion), ("insertion", found.insertion)):
        lines = np.stack([curves[name].curve.mean(0).numpy() for name in names])
        fractions = np.linspace(0, 1, lines.shape[1]).tolist()
        chart = charts.line_plot(
            fractions, lines, f"{kind}: p(target)", "fraction of pixels", names=names
        )
        panels.append((kind, chart))
    return render.panel_row(panels)
