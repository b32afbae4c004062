"""Each figure of convlens made in one place, from a finished result: pure functions returning
uint8 arrays (or named sets of them), shared by the CLI's `save_*`, the atlas and notebooks.
Nothing here runs a model; the drawing primitives are in `convlens.render`."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from convlens import charts, render
from convlens._io import safe_name
from convlens._shown import MAX_IMAGES
from convlens.analysis.activation_atlas import ActivationAtlas
from convlens.analysis.evolution import Evolution, checkpoint_label
from convlens.analysis.groups import NeuronGroups
from convlens.analysis.invariance import Invariance
from convlens.attribution import ChannelScores
from convlens.data.select import item
from convlens.embedding import Embedding, Neighbours
from convlens.models.card import ModelCard
from convlens.occlusion import Occlusion
from convlens.scan import TopExamples
from convlens.synthesis import Fooling, Inversion, Synthesis
from convlens.targets import Target, Unit, select_targets


def filter_figures(weights: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """`filters-<layer>`: each conv layer's filters as a grid."""
    return {f"filters-{safe_name(layer)}": render.filter_grid(w) for layer, w in weights.items()}


def feature_map_figures(
    maps: dict[str, torch.Tensor], prefix: str = "maps", tile: int = 64
) -> dict[str, np.ndarray]:
    """`<prefix>-<layer>`: the feature maps (C, h, w) of one image at each spatial layer."""
    return {
        f"{prefix}-{safe_name(layer)}": render.map_grid(values, tile=tile)
        for layer, values in maps.items()
        if values.dim() == 3
    }


def target_name(target: Target, card: ModelCard, index: int, count: int) -> str:
    """What image `index` of `count` was explained for: a class name or a unit."""
    picked = select_targets(target, count, torch.tensor([index]))
    if isinstance(picked, (list, tuple)) and picked and isinstance(picked[0], Unit):
        picked = picked[0]
    if isinstance(picked, Unit):
        where = "" if picked.y is None else f" at ({picked.y}, {picked.x})"
        return f"{picked.layer} unit {picked.channel}{where}"
    return card.class_name(int(torch.as_tensor(picked).flatten()[0]))


TOP_CHANNELS = 10
"""Channels drawn per image for a channel attribution: the largest |contribution| first."""


def channel_figure(scores: ChannelScores) -> np.ndarray:
    """Each image (the first `MAX_IMAGES`) beside the `TOP_CHANNELS` channels with the largest
    |contribution| to its target, as signed bars, captioned with the target."""
    made, count = scores.origin, len(scores)
    values = scores.as_subclass(torch.Tensor).float().cpu()
    rows = []
    for i in range(min(count, MAX_IMAGES)):
        order = values[i].abs().argsort(descending=True)[:TOP_CHANNELS]
        bars = charts.signed_bars(values[i, order].tolist(), [f"map {int(k)}" for k in order])
        picture = render.picture(made.card.shown(made.images[i]), 96)
        row = render.side_by_side([picture, bars])
        rows.append(render.caption(row, target_name(made.target, made.card, i, count)))
    return render.stacked(rows)


def method_stem(method: str) -> str:
    """An attribution method's name as a file name: `gradcam++` → `gradcam-plus-plus`."""
    return safe_name(method.replace("++", "-plus-plus"))


def attribution_figures(
    card: ModelCard, image: torch.Tensor, method: str, values: torch.Tensor, size: int = 224
) -> dict[str, np.ndarray]:
    """The image and its attribution `values` by `method`, named for files: a map without
    channels (H, W) (saliency, class activation maps) as `<method>` heat map and
    `<method>-overlay`; a signed map (C, H, W) as `<method>`, stretched around zero (grey is
    zero)."""
    shown = card.shown(image)
    name = method_stem(method)
    figures = {"image": render.picture(shown, size)}
    if values.dim() == 2:
        figures[name], figures[f"{name}-overlay"] = render.saliency_images(values, shown, size)
    else:
        figures[name] = render.signed_image(values, size)
    return figures


def attribution_title(method: str, values: torch.Tensor) -> str:
    """A panel's caption: the method, and the layer of a class activation map."""
    layer = getattr(values, "layer", None)
    return f"{method} @ {layer}" if layer else method


def attribution_row(
    card: ModelCard,
    image: torch.Tensor,
    maps: dict[str, torch.Tensor],
    shared_scale: bool = False,
    size: int = 224,
) -> np.ndarray:
    """Several maps of one image side by side after the image itself, each captioned with its
    key (`attribution_title`). Each on its own
    scale (maps without channels as heat overlays, signed maps stretched around zero), or with
    `shared_scale` every map as the share of its total |attribution| in each pixel, all on one
    heat scale from 0 to the largest 99.5th percentile among them."""
    shown = card.shown(image)
    panels = [("image", render.picture(shown, size))]
    if shared_scale:
        shares = {title: render.mass_share(values) for title, values in maps.items()}
        top = max(float(share.flatten().quantile(0.995)) for share in shares.values())
        for title, share in shares.items():
            panels.append((title, render.saliency_images(share, shown, size, top=top)[1]))
        row = render.panel_row(panels)
        legend = (
            f"one scale for all: each map's share of its |attribution| per pixel, 0 to {top:.2g}"
        )
        return render.stacked([row, render.caption(render.heat_bar(row.shape[1]), legend)])
    for title, values in maps.items():
        picture = (
            render.saliency_images(values, shown, size)[1]
            if values.dim() == 2
            else render.signed_image(values, size)
        )
        panels.append((title, picture))
    return render.panel_row(panels)


def top_examples_figure(examples: TopExamples) -> np.ndarray:
    """Zeiler & Fergus Fig. 2 for one channel (`scan.top_examples`): the projections beside the
    image patches, both cropped to each activation's receptive field."""
    shown = examples.card.shown(examples.images)
    boxes = examples.boxes
    patches = torch.stack([render.crop_padded(i, b, fill=0.5) for i, b in zip(shown, boxes)])
    projected = torch.stack([render.crop_padded(p, b) for p, b in zip(examples.projections, boxes)])
    return render.top_examples_figure(patches, projected)


def top_patch(examples: TopExamples, size: int = 92) -> np.ndarray:
    """The receptive-field patch of a channel's top-1 dataset activation brought near `size`
    pixels (`render.fit`), the width of the tile it is shown in: the small icon of a unit (a
    resnet50 layer4 patch, 427 pixels with its padding, would otherwise be a 17 KB icon)."""
    shown = examples.card.shown(examples.images[:1])[0]
    patch = render.crop_padded(shown, examples.boxes[0], fill=0.5)
    return render.to_uint8(render.fit(patch[None].float(), size)[0])


def occlusion_panels(maps: Occlusion) -> list[tuple[str, np.ndarray]]:
    """Fig. 7 for one image (`maps` of that image alone): (a) the image with the occluder
    positions and the occluder where the target probability drops most, (b) the strongest
    feature map's total activation, (c) that map's deconvnet projection, (d) the target
    probability, (e) the most probable class with a legend."""
    worst = divmod(int(maps.prob[0].argmin()), maps.prob.shape[-1])
    corner = (int(maps.ys[worst[0]]), int(maps.xs[worst[1]]))
    card = maps.card
    panels = []
    if maps.images is not None:
        shown = card.shown(maps.images[0])
        grid = render.occluder_grid(shown, maps.ys, maps.xs, maps.window, corner)
        panels.append(("(a) image, occluder positions", grid))
    if maps.projection is not None:
        channel = int(maps.channel[0])
        panels += [
            (f"(b) {maps.layer} map {channel}", render.position_map(maps.activation[0])),
            (f"(c) projection of map {channel}", render.signed_image(maps.projection[0])),
        ]
    top = max(float(maps.prob[0].max()), float(maps.base_prob[0]), 1e-6)
    name = card.class_name(int(maps.target[0]))
    names = list(card.classes) or [str(c) for c in range(int(maps.argmax.max()) + 1)]
    return [
        *panels,
        (f"(d) p({name}), 0 to {top:.3g}", render.position_map(maps.prob[0], scale=(0, top))),
        ("(e) most probable class", charts.class_map(maps.argmax[0], names)),
    ]


def neighbours_figure(found: Neighbours) -> np.ndarray:
    """Each query (first column) with its nearest gallery images: in feature space (upper row)
    and in pixel space (lower row), as the lecture slides show them."""
    k = found.feature_indices.shape[1]
    card = found.card
    rows = []
    for q in range(len(found.queries)):
        query = card.shown(item(found.queries, q)[0])
        for label, indices in (
            ("features", found.feature_indices),
            ("pixels", found.pixel_indices),
        ):
            hits = [item(found.gallery, int(i)) for i in indices[q]]
            images = [query] + [card.shown(image) for image, _ in hits]
            names = [label] + [card.class_name(hit) for _, hit in hits]
            rows.append(render.labelled_tiles(torch.stack(images), names, columns=k + 1, size=72))
    return render.stacked(rows)


def embedding_figures(found: Embedding, tile: int = 28) -> dict[str, np.ndarray]:
    """`tsne-mosaic` (each embedded image at its grid cell) and `tsne-scatter` (the points
    coloured by class)."""
    card = found.card
    names = list(card.classes) or [str(c) for c in range(int(found.labels.max()) + 1)]
    scatter = charts.scatter(found.xy, found.labels, names)
    if found.data is None:  # made by hand, without its data: the scatter alone
        return {"tsne-scatter": scatter}
    shown = torch.stack([card.shown(item(found.data, int(i))[0]) for i in found.indices])
    return {"tsne-mosaic": render.mosaic(shown, found.layout, tile), "tsne-scatter": scatter}


def synthesis_grid(result: Synthesis) -> np.ndarray:
    """Synthesised images in rows of five, each captioned with its label (its number when the
    result has none)."""
    labels = result.labels
    if len(labels) != len(result.images):
        labels = tuple(str(i) for i in range(len(result.images)))
    return render.labelled_tiles(result.images, list(labels))


def neuron_groups_figure(found: NeuronGroups, size: int = 140) -> np.ndarray:
    """The image, then each group's map laid over it as heat (upsampled bilinearly from the
    layer's positions), above the group's synthesised icon when there is one, captioned with
    the group's three strongest channels."""
    shown = found.card.shown(found.image)
    panels = [("image", render.picture(shown, size))]
    for group, (values, direction) in enumerate(zip(found.maps, found.directions)):
        full = F.interpolate(values[None, None], size=shown.shape[-2:], mode="bilinear")[0, 0]
        strongest = ", ".join(str(int(k)) for k in direction.argsort(descending=True)[:3])
        panel = render.saliency_images(full.clamp_min(0), shown, size)[1]
        if found.icons is not None:
            panel = render.stacked([panel, render.picture(found.icons[group], size)], gap=4)
        panels.append((f"group {group}: maps {strongest}", panel))
    return render.panel_row(panels)


def activation_atlas_figure(found: ActivationAtlas, tile: int | None = None) -> np.ndarray:
    """The cells' icons at their places on the grid (empty cells white), beside the class the
    model predicts most for the images of each cell (its legend naming at most `CLASS_PANELS`
    classes); for an atlas with neither icons nor classes, the samples per cell. `tile`:
    pixels per cell (default: 28, less on grids over 36 cells a side)."""
    tile = tile or max(4, min(28, 1000 // found.grid))
    layout = found.layout()
    which = "" if found.only is None else f", images predicted {found.card.class_name(found.only)}"
    title = f"{found.layer}{which}: {len(found.vectors)} activations, {len(found.cells)} cells"
    panels = []
    if found.icons is not None:
        panels.append((title, render.mosaic(found.icons, layout, tile)))
    if (found.dominant >= 0).any():
        dominant = torch.from_numpy(np.where(layout >= 0, found.dominant[layout], -1))
        names = list(found.card.classes)
        shown = charts.class_map(dominant, names, found.grid * tile, legend=CLASS_PANELS)
        panels.append(("predicted most", shown))
    if not panels:
        counts = torch.from_numpy(np.where(layout >= 0, found.counts[layout], 0)).float()
        panels.append(
            (f"{title}: samples per cell", render.position_map(counts, found.grid * tile))
        )
    return render.panel_row(panels)


def activation_atlas_figures(found: ActivationAtlas) -> dict[str, np.ndarray]:
    """`atlas` (`activation_atlas_figure`), and for an unfiltered atlas of a classifier
    `classes` (`atlas_class_panels`): what the CLI writes and a notebook shows."""
    drawn = {"atlas": activation_atlas_figure(found)}
    classes = atlas_class_panels(found) if found.only is None else None
    return drawn if classes is None else {**drawn, "classes": classes}


def atlas_class_panels(found: ActivationAtlas, size: int = 120) -> np.ndarray | None:
    """One small map per predicted class (the `CLASS_PANELS` most frequent), the share of each
    cell's samples that are of that class, white 0 to dark 1: where in the layer's layout the
    network sees each class. None for a model without class scores."""
    counts = found.class_counts().astype(np.float64)
    if not counts.any():
        return None
    shares = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1)
    frequent = np.argsort(-counts.sum(axis=(1, 2)), kind="stable")[:CLASS_PANELS]
    panels = []
    for label in sorted(int(c) for c in frequent if counts[c].any()):
        tiles = render.enlarge(
            torch.from_numpy(1 - shares[label]).float()[None], max(1, size // found.grid)
        )
        panels.append((found.card.class_name(label), render.to_uint8(tiles)))
    rows = [render.panel_row(panels[i : i + 5]) for i in range(0, len(panels), 5)]
    return render.stacked(rows)


CLASS_PANELS = 20
"""Classes drawn by `atlas_class_panels` at most (a 1000-class model's atlas shows its 20 most
frequent)."""


def inversion_panels(result: Inversion, image: int = 0) -> list[tuple[str, np.ndarray]]:
    """Image `image` beside its reconstruction from the code at `result.layer`."""
    distance = float(result.distance[-1, image])
    reconstruction = (
        f"from {result.layer} (distance {distance:.3f})",
        render.picture(result.images[image]),
    )
    if result.originals is None:
        return [reconstruction]
    return [("original", render.picture(result.originals[image])), reconstruction]


def fooling_panels(fooled: Fooling) -> list[tuple[str, np.ndarray]]:
    """Original, fooling image and their difference (stretched around zero), with the classes
    predicted for each."""
    card = fooled.card
    now = (f"now: {card.class_name(fooled.final_class)}", render.picture(card.shown(fooled.image)))
    if fooled.original is None:
        return [now]
    return [
        (
            f"original: {card.class_name(fooled.original_class)}",
            render.picture(card.shown(fooled.original)),
        ),
        now,
        ("difference", render.signed_image(fooled.image.cpu() - fooled.original)),
    ]


def evolution_strip(cells: torch.Tensor) -> np.ndarray:
    """One channel's cropped projections over training (checkpoints, C, s, s;
    `evolution_projections`), each stretched around zero on its own, enlarged, in one row."""
    tiles = render.signed_stretch(cells.float(), dims=(1, 2, 3), quantile=0.995)
    return render.grid(render.fit(tiles, 48), columns=len(cells), padding=2)


def evolution_figure(evo: Evolution, layer: str) -> np.ndarray:
    """Fig. 4 for one layer: a row per shown feature map, a column per checkpoint."""
    labels = "epochs " + " | ".join(
        checkpoint_label(c).removeprefix("epoch ") for c in evo.checkpoints
    )
    rows = [evolution_strip(cells) for cells in evo.projections[layer]]
    return render.caption(render.stacked(rows, gap=2), f"{layer}: {labels}")


def invariance_figure(result: Invariance) -> np.ndarray:
    """Fig. 5 for one transformation: feature distance at each layer and the true class's
    probability against the transformation value, one line per image."""
    unit = {"translate": "pixels", "scale": "factor", "rotate": "degrees"}[result.transform]
    panels = [
        (layer, charts.line_plot(result.values, d.t().numpy(), "relative distance", unit))
        for layer, d in result.distance.items()
    ]
    probability = charts.line_plot(result.values, result.prob.t().numpy(), "p(true class)", unit)
    return render.panel_row([*panels, ("true class", probability)])


def source_picture(image: torch.Tensor) -> np.ndarray:
    """One whole [0, 1] dataset image (C, H, W) behind a channel's top activations, fitted to
    64 pixels."""
    return render.grid(render.fit(image[None], 64), columns=1, padding=0)
