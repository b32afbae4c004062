"""Every result shows itself in a notebook: one drawer per result type, registered on
`convlens._shown.shown`, each built from the same figures the CLI and the atlas write
(`convlens.report.figures`, `trust_figures`), never from a second plotting path. `show` lays
several results out side by side.

Example:
    >>> cl.show(cl.saliency(m, x, 3), cl.guided_backprop(m, x, 3), shared_scale=True)  # doctest: +SKIP
"""

from __future__ import annotations

import html

import numpy as np
import torch

from convlens import charts, render
from convlens._shown import MAX_IMAGES, Page, Picture, shown
from convlens.analysis.activation_atlas import ActivationAtlas
from convlens.analysis.correspondence import Correspondence
from convlens.analysis.evolution import Evolution
from convlens.analysis.filters import DeadUnits, DeadUnitsByLayer, FeatureMaps, Filters
from convlens.analysis.groups import NeuronGroups
from convlens.analysis.invariance import Invariance
from convlens.attribution import AttributionMap, ChannelScores
from convlens.embedding import Embedding, Neighbours
from convlens.occlusion import Occlusion
from convlens.report import figures, trust_figures
from convlens.report.figures import target_name
from convlens.scan import TopExamples
from convlens.synthesis import Fooling, Inversion, Synthesis
from convlens.topk import ScanResult
from convlens.trust.assess import Trust
from convlens.trust.faithfulness import Curve, SoftMask
from convlens.trust.randomisation import DataRandomisation, Randomisation


def titled(array: np.ndarray, title: str) -> Picture:
    """A Picture of `array` with `title` written above it."""
    return Picture(render.caption(array, title), title)


def first(count: int) -> tuple[range, str]:
    """The images drawn of `count`, and the title's note when some are left out."""
    drawn = min(count, MAX_IMAGES)
    return range(drawn), f" (first {drawn} of {count})" if count > drawn else ""


@shown.register
def _attribution(maps: AttributionMap) -> Picture:
    return show(maps)


@shown.register
def _channels(scores: ChannelScores) -> Picture:
    _, note = first(len(scores))
    title = f"{scores.origin.card.name}: the channels of {scores.layer} behind each decision{note}"
    return titled(figures.channel_figure(scores), title)


@shown.register
def _neuron_groups(found: NeuronGroups) -> Picture:
    title = (
        f"{found.card.name}: {len(found.maps)} neuron groups of {found.layer} "
        f"(reconstruction error {found.error:.2f})"
    )
    return titled(figures.neuron_groups_figure(found), title)


@shown.register
def _activation_atlas(found: ActivationAtlas) -> Picture:
    title = f"{found.card.name}: activation atlas of {found.layer}, {found.grid}x{found.grid} grid"
    return titled(render.stacked(list(figures.activation_atlas_figures(found).values())), title)


@shown.register
def _occlusion(maps: Occlusion) -> Picture:
    drawn, note = first(len(maps.prob))
    rows = [render.panel_row(figures.occlusion_panels(maps[i])) for i in drawn]
    return titled(render.stacked(rows), f"{maps.card.name}: occlusion, window {maps.window}{note}")


@shown.register
def _top_examples(examples: TopExamples) -> Picture:
    name = examples.card.name
    title = (
        f"{name}: {examples.layer} channel {examples.channel}, its top {len(examples.indices)} "
        "images (right) and their deconvnet projections (left)"
    )
    return titled(figures.top_examples_figure(examples), title)


@shown.register
def _synthesis(result: Synthesis) -> Picture:
    title = f"synthesis of {result.objective} ({result.preset.name})"
    return titled(figures.synthesis_grid(result), title)


@shown.register
def _inversion(result: Inversion) -> Picture:
    drawn, note = first(len(result.images))
    rows = [render.panel_row(figures.inversion_panels(result, i)) for i in drawn]
    return titled(render.stacked(rows), f"inversion of the code at {result.layer}{note}")


@shown.register
def _fooling(fooled: Fooling) -> Picture:
    verdict = "fooled" if fooled.fooled else "not fooled"
    title = f"fooling image: {verdict} after {fooled.steps} steps"
    return titled(render.panel_row(figures.fooling_panels(fooled)), title)


@shown.register
def _embedding(found: Embedding) -> Picture:
    pictures = figures.embedding_figures(found)  # the scatter alone when the data is unknown
    name = found.card.name
    title = f"{name}: t-SNE of the codes of {len(found.indices)} images"
    return titled(render.side_by_side(list(pictures.values())), title)


@shown.register
def _neighbours(found: Neighbours) -> Picture | Page:
    if found.queries is None or found.gallery is None:  # made by hand: the indices only
        rows = [
            {"query": q, "feature space": str(f.tolist()), "pixel space": str(p.tolist())}
            for q, (f, p) in enumerate(zip(found.feature_indices, found.pixel_indices))
        ]
        return Page("nearest neighbours (gallery indices)", table(rows))
    name = found.card.name
    title = f"{name}: nearest neighbours in feature space and in pixel space"
    return titled(figures.neighbours_figure(found), title)


@shown.register
def _evolution(evo: Evolution) -> Picture | Page:
    if not evo.projections:
        return Page("feature evolution", "<p>no feature maps were chosen (channels=[])</p>")
    figure = render.side_by_side(
        [figures.evolution_figure(evo, layer) for layer in evo.projections]
    )
    return titled(figure, f"feature evolution over {', '.join(evo.checkpoints)}")


@shown.register
def _invariance(result: Invariance) -> Picture:
    return titled(figures.invariance_figure(result), f"invariance to {result.transform}")


def _dead_chart(stats: DeadUnits) -> np.ndarray:
    share = np.sort(stats.zero_fraction.numpy())[::-1][None]
    chart = charts.line_plot(
        list(range(share.shape[1])), share, "zero on share of images", "channels, sorted"
    )
    dead = f"{stats.dead_count} of {len(stats.dead)} dead (> {stats.threshold:g})"
    return render.caption(chart, f"{stats.layer}: {dead}")


@shown.register
def _dead_units(stats: DeadUnits) -> Picture:
    return titled(_dead_chart(stats), f"dead units over {stats.images} images")


@shown.register
def _dead_units_by_layer(stats: DeadUnitsByLayer) -> Picture | Page:
    if not stats:
        return Page("dead units", "<p>no layers were measured</p>")
    images = next(iter(stats.values())).images if stats else 0
    charts_ = [_dead_chart(layer_stats) for layer_stats in stats.values()]
    return titled(render.side_by_side(charts_), f"dead units over {images} images")


@shown.register
def _filters(weight: Filters) -> Picture:
    title = f"{weight.layer}: {weight.shape[0]} filters of {weight.shape[1]} channels"
    return titled(render.filter_grid(weight.as_subclass(torch.Tensor)), title)


@shown.register
def _feature_maps(maps: FeatureMaps) -> Picture:
    values = maps.as_subclass(torch.Tensor).float().cpu()
    if values.dim() == 3:
        return titled(render.map_grid(values), f"{maps.layer}: {len(values)} feature maps")
    flat = values.flatten()
    chart = charts.line_plot(list(range(len(flat))), flat[None].numpy(), "activation", "unit")
    return titled(chart, f"{maps.layer}: {len(flat)} activations")


@shown.register
def _randomisation(found: Randomisation) -> Picture:
    figure = render.stacked(
        [trust_figures.randomisation_figure(found), trust_figures.similarity_figure(found)]
    )
    return titled(figure, f"model randomisation test ({found.order})")


@shown.register
def _data_randomisation(found: DataRandomisation) -> Picture:
    return titled(trust_figures.data_randomisation_figure(found), "data randomisation test")


@shown.register
def _curve(curve: Curve) -> Picture:
    mean = curve.curve.mean(0).numpy()[None]
    fractions = np.linspace(0, 1, mean.shape[1]).tolist()
    chart = charts.line_plot(fractions, mean, f"{curve.kind}: p(target)", "fraction of pixels")
    title = f"{curve.kind}: mean AUC {float(curve.auc.mean()):.3f} over {len(curve.auc)} images"
    return titled(chart, title)


@shown.register
def _soft_mask(scores: SoftMask) -> Page:
    rows = [
        {
            "average drop (%)": scores.average_drop,
            "increase in confidence (%)": scores.increase_in_confidence,
            "images": len(scores.drop),
        }
    ]
    return Page("maps as soft masks (Chattopadhyay et al. 2018)", table(rows))


@shown.register
def _trust(found: Trust) -> Page:
    pictures = [
        trust_figures.randomisation_figure(found.randomisation),
        trust_figures.faithfulness_figure(found),
    ]
    body = table(found.table()) + "".join(Picture(p, "").html() for p in pictures)
    return Page("can I trust these maps?", body)


@shown.register
def _scan(result: ScanResult) -> Page:
    rows = [
        {
            "layer": layer,
            "channels": top.values.shape[0],
            "k": top.values.shape[1],
            "strongest activation": float(top.values[:, 0].max()),
            "strongest channel": int(top.values[:, 0].argmax()),
        }
        for layer, top in result.layers.items()
    ]
    scanned = result.meta.get("dataset_size", "?")
    return Page(f"top-{result.meta.get('k', '?')} scan of {scanned} images", table(rows))


@shown.register
def _correspondence(found: Correspondence) -> Page:
    rows = [
        {
            "layer": found.layer,
            "delta": found.delta,
            "random masks: mean": found.random_mean,
            "random masks: std": found.random_std,
        }
    ]
    return Page("correspondence (Zeiler & Fergus Table 1)", table(rows))


def table(rows: list[dict]) -> str:
    """Rows of equal keys as an HTML table, every cell escaped, floats to 4 places."""
    if not rows:
        return "<p>(empty)</p>"

    def cell(value: object) -> str:
        text = "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
        return f"<td>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(str(key))}</th>" for key in rows[0])
    body = "".join("<tr>" + "".join(cell(v) for v in row.values()) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def show(*results: object, shared_scale: bool = False) -> Picture:
    """Several results side by side in one picture. Attribution maps of the same images are
    laid out per image after the image itself (`figures.attribution_row`), on one colour
    scale with `shared_scale`; any other results are placed left to right."""
    if not results:
        raise ValueError("show() needs at least one result")
    if all(isinstance(r, AttributionMap) for r in results):
        return _attribution_rows(list(results), shared_scale)
    if shared_scale:
        raise ValueError("shared_scale compares attribution maps of the same images only")
    pictures = [shown(r) for r in results]
    for result, picture in zip(results, pictures):
        if not isinstance(picture, Picture):
            raise TypeError(f"a {type(result).__name__} shows as a table; display it on its own")
    title = "; ".join(p.title for p in pictures)
    return Picture(render.side_by_side([p.array for p in pictures]), title)


def _attribution_rows(maps: list[AttributionMap], shared_scale: bool) -> Picture:
    """Each image, then its map by each method (`figures.attribution_row`), one row per image,
    captioned with the target; when the maps differ in target or model, each panel names its
    own."""
    made, count = maps[0].origin, len(maps[0])
    if any(len(m) != count or not _same_images(m.origin.images, made.images) for m in maps):
        raise ValueError("show() puts maps side by side only when they are of the same images")
    drawn, note = first(count)
    models = list(dict.fromkeys(m.origin.card.name for m in maps))
    rows = []
    for i in drawn:
        targets = [target_name(m.origin.target, m.origin.card, i, count) for m in maps]
        titles = [figures.attribution_title(m.method, m) for m in maps]
        if len(set(targets)) > 1:
            titles = [f"{title} for {target}" for title, target in zip(titles, targets)]
        if len(models) > 1:
            titles = [f"{m.origin.card.name}: {title}" for m, title in zip(maps, titles)]
        row = dict(zip(_unique(titles), (m[i] for m in maps)))
        picture = figures.attribution_row(made.card, made.images[i], row, shared_scale)
        rows.append(render.caption(picture, targets[0] if len(set(targets)) == 1 else ""))
    methods = ", ".join(m.method for m in maps)
    return titled(render.stacked(rows), f"{', '.join(models)}: {methods}{note}")


def _unique(titles: list[str]) -> list[str]:
    """`titles` with repeats numbered (#2, #3, ...), so no panel is dropped."""
    seen: dict[str, int] = {}
    unique = []
    for title in titles:
        seen[title] = seen.get(title, 0) + 1
        unique.append(title if seen[title] == 1 else f"{title} #{seen[title]}")
    return unique


def _same_images(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b))
