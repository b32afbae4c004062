"""Glue shared by the CLI and the atlas: run a method, render its result, write the files.

Each function here only wires methods → render → report; the computing lives in the methods,
the drawing in `convlens.render`, the writing in `convlens.report`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from convlens import render
from convlens._errors import ConvlensError
from convlens.analysis.evolution import Evolution, checkpoint_label, loaded_checkpoints
from convlens.analysis.filters import (
    DeadUnits,
    conv_layers,
    conv_weight,
    dead_units,
    feature_maps,
    filter_rms,
    largest_share,
    rectified_output,
)
from convlens.analysis.invariance import Invariance
from convlens.attribution import METHODS, Target, deconvnet
from convlens.embedding import codes, grid_layout, nearest_neighbours, tsne
from convlens.models.layers import LayerInfo, ReceptiveField, receptive_field
from convlens.models.loading import LoadedModel, load_model
from convlens.occlusion import Occlusion
from convlens.report import write_json, write_npz, write_png
from convlens.scan import ScanResult, TopK
from convlens.synthesis import (
    Fooling,
    Inversion,
    Synthesis,
    fgsm,
    iterative_fgsm,
)
from convlens.units import Unit


def safe_name(layer: str) -> str:
    """A layer name usable in a file name (dots kept, anything else odd replaced)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in layer)


def default_map_layers(loaded: LoadedModel) -> list[str]:
    """The rectified output of every conv layer: what feature maps and scans show by default."""
    return [rectified_output(loaded.model, conv) for conv in conv_layers(loaded.model)]


def write_filters(
    loaded: LoadedModel, out: Path, layers: Sequence[str] | None = None
) -> list[Path]:
    """One filter-grid PNG per conv layer, plus every filter's RMS in `filters.json`."""
    written, rms = [], {}
    for layer in layers or conv_layers(loaded.model):
        weight = conv_weight(loaded.model, layer)
        written.append(
            write_png(out / f"filters-{safe_name(layer)}.png", render.filter_grid(weight))
        )
        rms[layer] = [round(v, 6) for v in filter_rms(weight).tolist()]
    write_json(out / "filters.json", {"rms": rms})
    return written


def write_feature_maps(
    loaded: LoadedModel,
    image: torch.Tensor,
    out: Path,
    layers: Sequence[str] | None = None,
    prefix: str = "maps",
) -> list[Path]:
    """Feature-map grids of one preprocessed image at each layer, plus the raw maps (`.npz`)."""
    written, raw = [], {}
    for layer in layers or default_map_layers(loaded):
        maps = feature_maps(loaded.model, image, layer)
        raw[layer] = maps.numpy()
        if maps.dim() == 3:
            written.append(
                write_png(out / f"{prefix}-{safe_name(layer)}.png", render.map_grid(maps))
            )
    write_npz(out / f"{prefix}.npz", **raw)
    return written


def write_attribution(
    loaded: LoadedModel, image: torch.Tensor, method: str, target: Target, out: Path
) -> list[Path]:
    """One attribution of one preprocessed image: the display PNG(s) and the raw map (`.npz`).

    Signed maps are contrast-stretched around zero; saliency is written as a heat map and as an
    overlay on the image."""
    values = METHODS[method](loaded.model, image.unsqueeze(0), target)[0]
    shown = loaded.transform.denormalize(image)
    written = [write_png(out / "image.png", render.picture(shown))]
    if method == "saliency":
        heat, laid = render.saliency_images(values, shown)
        written += [
            write_png(out / "saliency.png", heat),
            write_png(out / "saliency-overlay.png", laid),
        ]
    else:
        written.append(write_png(out / f"{method}.png", render.signed_image(values)))
    write_npz(out / f"{method}.npz", **{method: values.cpu().numpy(), "image": image.cpu().numpy()})
    return written


def write_top_examples(
    loaded: LoadedModel,
    data: Dataset,
    result: ScanResult,
    out: Path,
    layers: Sequence[str] | None = None,
    *,
    progress: bool = True,
) -> list[Path]:
    """For every channel of every scanned layer, the Fig. 2 figure: deconvnet projections of the
    recorded units beside their receptive-field patches (`<layer>/unit-NNNN.png`)."""
    written = []
    layers = list(layers or result.layers)
    for layer in layers:
        top = result[layer]
        field = receptive_field(loaded.model, layer, loaded.input_size)
        for channel in tqdm(
            range(top.values.shape[0]), desc=f"render {layer}", disable=not progress
        ):
            figure = top_examples_image(loaded, data, layer, channel, top, field)
            written.append(write_png(out / safe_name(layer) / f"unit-{channel:04d}.png", figure))
    return written


def top_examples_image(
    loaded: LoadedModel, data: Dataset, layer: str, channel: int, top: TopK, field: ReceptiveField
):
    """The Fig. 2 figure of one channel; its k projections are computed as one batch."""
    keep = top.indices[channel] >= 0
    indices = top.indices[channel][keep].tolist()
    positions = top.positions[channel][keep].tolist()
    images = torch.stack([data[i][0] for i in indices])
    units = [Unit(layer, channel, y, x) for y, x in positions]
    projections = deconvnet(loaded.model, images, units)
    boxes = [field.box(y, x) for y, x in positions]
    shown = loaded.transform.denormalize(images)
    patches = torch.stack(
        [render.crop_padded(img, box, fill=0.5) for img, box in zip(shown, boxes)]
    )
    projected = torch.stack([render.crop_padded(p, box) for p, box in zip(projections, boxes)])
    return render.top_examples_figure(patches, projected)


def write_occlusion(loaded: LoadedModel, image: torch.Tensor, maps: Occlusion, out: Path) -> Path:
    """Zeiler & Fergus Fig. 7 for one image (`maps` of that image alone): (a) the image with the
    occluder positions and the occluder where the target probability drops most, (b) the
    strongest feature map's total activation, (c) that map's deconvnet projection, (d) the
    target probability, (e) the most probable class with a legend. Each panel is also written
    on its own, and the raw maps as `occlusion.npz`. Returns the figure's path."""
    shown = loaded.transform.denormalize(image)
    names = list(loaded.classes)
    worst = divmod(int(maps.prob[0].argmin()), maps.prob.shape[-1])
    panels = [
        (
            "(a) image, occluder positions",
            render.occluder_grid(
                shown,
                maps.ys,
                maps.xs,
                maps.window,
                (int(maps.ys[worst[0]]), int(maps.xs[worst[1]])),
            ),
        )
    ]
    raw = {name: getattr(maps, name)[0].numpy() for name in ("prob", "argmax", "sensitivity")}
    if maps.layer is not None:
        channel = int(maps.channel[0])
        projection = deconvnet(loaded.model, image.unsqueeze(0), Unit(maps.layer, channel))[0]
        panels += [
            (f"(b) {maps.layer} map {channel}", render.position_map(maps.activation[0])),
            (f"(c) projection of map {channel}", render.signed_image(projection)),
        ]
        raw |= {"activation": maps.activation[0].numpy(), "projection": projection.numpy()}
    target = int(maps.target[0])
    top = max(float(maps.prob[0].max()), float(maps.base_prob[0]), 1e-6)
    panels += [
        (
            f"(d) p({_class_name(loaded, target)}), 0 to {top:.3g}",
            render.position_map(maps.prob[0], scale=(0, top)),
        ),
        ("(e) most probable class", render.class_map(maps.argmax[0], names)),
    ]
    for title, panel in panels:
        write_png(out / f"occlusion-{title[1]}.png", panel)
    write_npz(out / "occlusion.npz", ys=maps.ys.numpy(), xs=maps.xs.numpy(), **raw)
    return write_png(out / "occlusion.png", render.panel_row(panels))


def write_synthesis(result: Synthesis, labels: list[str], out: Path, name: str) -> Path:
    """Synthesised images as a captioned grid `<name>.png`, raw arrays and trace in `<name>.npz`."""
    write_npz(
        out / f"{name}.npz",
        images=result.images.cpu().numpy(),
        inputs=result.inputs.cpu().numpy(),
        trace=result.trace.numpy(),
    )
    return write_png(out / f"{name}.png", render.labelled_tiles(result.images, labels))


def write_inversion(loaded: LoadedModel, image: torch.Tensor, result: Inversion, out: Path) -> Path:
    """The image beside its reconstruction from the code at `result.layer`."""
    distance = float(result.distance[-1, 0])
    panels = [
        ("original", render.picture(loaded.transform.denormalize(image))),
        (f"from {result.layer} (distance {distance:.3f})", render.picture(result.images[0])),
    ]
    write_npz(
        out / "inversion.npz",
        image=result.inputs[0].cpu().numpy(),
        distance=result.distance.numpy(),
    )
    return write_png(out / "inversion.png", render.panel_row(panels))


def write_fooling(loaded: LoadedModel, image: torch.Tensor, fooled: Fooling, out: Path) -> Path:
    """Original, fooling image and their difference (stretched around zero), with predictions."""
    with torch.no_grad():
        before = int(loaded.model(image[None].to(fooled.image.device)).argmax())
        after = int(loaded.model(fooled.image[None]).argmax())
    panels = [
        (
            f"original: {_class_name(loaded, before)}",
            render.picture(loaded.transform.denormalize(image)),
        ),
        (
            f"now: {_class_name(loaded, after)}",
            render.picture(loaded.transform.denormalize(fooled.image)),
        ),
        ("difference", render.signed_image(fooled.image.cpu() - image.cpu())),
    ]
    write_npz(
        out / "fooling.npz",
        image=fooled.image.cpu().numpy(),
        target_prob=fooled.target_prob.numpy(),
    )
    return write_png(out / "fooling.png", render.panel_row(panels))


def write_adversarial_accuracy(
    loaded: LoadedModel, data: Dataset, budgets: Sequence[float], count: int, out: Path
) -> list[dict]:
    """Accuracy on the first `count` labelled images, clean and under FGSM and iterative FGSM
    for each budget (in [0, 1] pixel units), written to `adversarial.json`."""
    items = [data[i] for i in range(min(count, len(data)))]
    images = torch.stack([image for image, _ in items])
    labels = torch.tensor([label for _, label in items])
    if bool((labels < 0).any()):
        raise ConvlensError("FGSM needs labelled images; this dataset has none")
    scale = max(loaded.transform.std)

    def accuracy(x: torch.Tensor) -> float:
        with torch.no_grad():
            return round(float((loaded.model(x).argmax(dim=1) == labels).float().mean()), 4)

    clean = accuracy(images)
    table = [
        {
            "eps": eps,
            "clean": clean,
            "fgsm": accuracy(fgsm(loaded.model, images, labels, eps / scale)),
            "iterative": accuracy(iterative_fgsm(loaded.model, images, labels, eps / scale)),
        }
        for eps in budgets
    ]
    write_json(out / "adversarial.json", {"images": len(items), "accuracy": table})
    return table


def write_embedding(
    loaded: LoadedModel,
    data: Dataset,
    count: int,
    out: Path,
    *,
    tile: int = 28,
    progress: bool = True,
) -> list[Path]:
    """t-SNE of the codes of the first `count` images (a square number is used: the mosaic has
    no holes): the mosaic, the scatter plot coloured by class, and `embedding.csv`."""
    side = int(np.sqrt(min(count, len(data))))
    subset = Subset(data, range(side * side))
    x = codes(loaded.model, subset, progress=progress)
    xy = tsne(x)
    layout = grid_layout(xy, side, side)
    labels = np.array([subset[i][1] for i in range(len(subset))])
    shown = torch.stack([loaded.transform.denormalize(subset[i][0]) for i in range(len(subset))])
    cells = {int(index): (row, col) for (row, col), index in np.ndenumerate(layout)}
    rows = ["index,label,x,y,row,col"] + [
        f"{i},{labels[i]},{xy[i, 0]:.4f},{xy[i, 1]:.4f},{cells[i][0]},{cells[i][1]}"
        for i in range(len(subset))
    ]
    (out / "embedding.csv").parent.mkdir(parents=True, exist_ok=True)
    (out / "embedding.csv").write_text("\n".join(rows) + "\n")
    return [
        write_png(out / "tsne-mosaic.png", render.mosaic(shown, layout, tile)),
        write_png(out / "tsne-scatter.png", render.scatter(xy, labels, list(loaded.classes))),
    ]


def write_neighbours(
    loaded: LoadedModel, queries: Dataset, gallery: Dataset, k: int, out: Path
) -> Path:
    """Each query (first column) with its k nearest gallery images: in feature space (upper
    row) and in pixel space (lower row), as the lecture slides show them."""
    found = nearest_neighbours(loaded.model, queries, gallery, k)
    rows = []
    for q in range(len(queries)):
        query = loaded.transform.denormalize(queries[q][0])
        for label, indices in (
            ("features", found.feature_indices),
            ("pixels", found.pixel_indices),
        ):
            images = [query] + [
                loaded.transform.denormalize(gallery[int(i)][0]) for i in indices[q]
            ]
            names = [label] + [_class_name(loaded, gallery[int(i)][1]) for i in indices[q]]
            rows.append(render.labelled_tiles(torch.stack(images), names, columns=k + 1, size=72))
    width = max(row.shape[1] for row in rows)
    figure = np.concatenate(
        [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    )
    write_json(
        out / "neighbours.json",
        {
            "feature_indices": found.feature_indices.tolist(),
            "pixel_indices": found.pixel_indices.tolist(),
        },
    )
    return write_png(out / "neighbours.png", figure)


def write_diagnosis(
    runs: dict[str, Path], data: Dataset, out: Path, *, progress: bool = True
) -> dict[str, dict]:
    """Fig. 6: the first-layer filters of each trained run (name → checkpoint folder) side by
    side, with per-filter RMS, the largest filter's share of the total RMS and the filters that
    are dead (their map zero on more than 99 % of `data`), in `diagnosis.json` and
    `diagnosis.png`."""
    panels, summary = [], {}
    for name, folder in runs.items():
        meta = json.loads((folder / "final.json").read_text())
        loaded = load_model(meta["config"]["model"], str(folder / "final.safetensors"))
        first = conv_layers(loaded.model)[0]
        weight = conv_weight(loaded.model, first)
        rms = filter_rms(weight)
        dead = dead_units(loaded.model, data, [first], progress=progress)[first]
        summary[name] = {
            "model": meta["config"]["model"],
            "test_accuracy": meta["test_accuracy"],
            "rms": [round(v, 5) for v in rms.tolist()],
            "largest_share": round(largest_share(rms), 4),
            "dead_filters": [i for i, d in enumerate(dead.dead.tolist()) if d],
        }
        title = f"{name}: largest share {largest_share(rms):.3f}, dead {dead.dead_count}"
        panels.append((title, render.filter_grid(weight)))
    write_json(out / "diagnosis.json", summary)
    write_png(out / "diagnosis.png", render.panel_row(panels))
    return summary


def evolution_cells(
    evo: Evolution, models: list[LoadedModel], data: Dataset, layer: str, channel: int
) -> torch.Tensor:
    """(checkpoints, C, s, s): the deconvnet projection of each checkpoint's strongest
    activation of `channel` on its image, cropped to the receptive field, each stretched
    around zero on its own for display."""
    field = receptive_field(models[0].model, layer, models[0].input_size)
    cells = []
    for loaded, (_, index, (y, x)) in zip(models, evo.strongest(layer, channel)):
        projection = deconvnet(loaded.model, data[index][0][None], Unit(layer, channel, y, x))[0]
        cells.append(render.crop_padded(projection, field.box(y, x)))
    return render.signed_stretch(torch.stack(cells).float(), dims=(1, 2, 3), quantile=0.995)


def evolution_strip(tiles: torch.Tensor, columns: int) -> np.ndarray:
    """Evolution tiles enlarged and laid out `columns` (checkpoints) per row."""
    return render.grid(render.fit(tiles, 48), columns=columns, padding=2)


def write_evolution(evo: Evolution, data: Dataset, spec: str, out: Path) -> list[Path]:
    """Fig. 4 per layer: a row per feature map, a column per checkpoint (`evolution_cells`)."""
    models = loaded_checkpoints(evo, spec)
    written = []
    for layer, channels in evo.channels.items():
        tiles = torch.cat([evolution_cells(evo, models, data, layer, c) for c in channels])
        figure = evolution_strip(tiles, len(models))
        labels = "epochs " + " | ".join(
            checkpoint_label(c).removeprefix("epoch ") for c in evo.checkpoints
        )
        written.append(
            write_png(out / f"evolution-{safe_name(layer)}.png", render.caption(figure, labels))
        )
    return written


def write_invariance(result: Invariance, out: Path) -> Path:
    """Fig. 5 for one transformation: feature distance at each layer and the true class's
    probability against the transformation value, one line per image; raw arrays in `.npz`."""
    unit = {"translate": "pixels", "scale": "factor", "rotate": "degrees"}[result.transform]
    panels = [
        (
            f"{layer}",
            render.line_plot(result.values, distance.t().numpy(), "relative distance", unit),
        )
        for layer, distance in result.distance.items()
    ]
    panels.append(
        (
            "true class",
            render.line_plot(result.values, result.prob.t().numpy(), "p(true class)", unit),
        )
    )
    write_npz(
        out / f"invariance-{result.transform}.npz",
        values=np.array(result.values),
        prob=result.prob.numpy(),
        **{f"distance {layer}": d.numpy() for layer, d in result.distance.items()},
    )
    return write_png(out / f"invariance-{result.transform}.png", render.panel_row(panels))


def layer_rows(infos: dict[str, LayerInfo], dead: dict[str, DeadUnits] | None = None) -> list[dict]:
    """Printable rows (name, kind, output shape, receptive field, dead units) of a layer table."""
    rows = []
    for info in infos.values():
        rf = info.receptive_field
        if rf is None:
            field = "-"
        elif info.output_shape is not None and len(info.output_shape) == 3:
            field = f"{rf.size[0]}x{rf.size[1]} / {rf.stride[0]} @ {rf.offset[0]}"
        else:
            field = f"{rf.size[0]}x{rf.size[1]} @ {rf.offset[0]} (all of the input)"
        shape = "x".join(map(str, info.output_shape)) if info.output_shape else "-"
        stats = (dead or {}).get(info.name)
        rows.append(
            {
                "name": info.name,
                "kind": info.kind,
                "shape": shape,
                "field": field,
                "dead": f"{stats.dead_count}/{len(stats.dead)}" if stats else "",
            }
        )
    return rows


def write_dead_units(stats: dict[str, DeadUnits], out: Path) -> Path:
    """Dead-unit statistics as JSON: per layer, per channel zero fraction and the dead channels."""
    return write_json(
        out / "dead-units.json",
        {
            layer: {
                "images": s.images,
                "threshold": s.threshold,
                "dead": [i for i, d in enumerate(s.dead.tolist()) if d],
                "zero_fraction": [round(v, 4) for v in s.zero_fraction.tolist()],
            }
            for layer, s in stats.items()
        },
    )


def _class_name(loaded: LoadedModel, label: int) -> str:
    return loaded.classes[label] if 0 <= label < len(loaded.classes) else "unlabelled"
