"""One `save_<result>` per kind of result: a finished result in, its figure(s) and raw data out.
None of them runs a model (a test calls each with a model whose forward raises); the figures
come from `convlens.report.figures`, the same ones the atlas shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from convlens import render
from convlens._io import safe_name, write_json
from convlens.analysis.activation_atlas import ActivationAtlas
from convlens.analysis.evolution import Evolution
from convlens.analysis.filters import DeadUnits, FirstLayer, filter_rms
from convlens.analysis.groups import NeuronGroups
from convlens.analysis.invariance import Invariance
from convlens.attribution import AttributionMap, ChannelScores
from convlens.embedding import Embedding, Neighbours
from convlens.models.layers import LayerInfo
from convlens.models.loading import LoadedModel
from convlens.occlusion import Occlusion
from convlens.report import display, figures, trust_figures
from convlens.report.writer import write_image, write_npz, write_png, write_pngs, write_text
from convlens.synthesis import AdversarialAccuracy, Fooling, Inversion, Synthesis
from convlens.trust.assess import Trust


def layer_table(
    infos: dict[str, LayerInfo], dead: dict[str, DeadUnits] | None = None
) -> list[dict]:
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
        stats = (dead or {}).get(info.name)
        rows.append(
            {
                "name": info.name,
                "kind": info.kind,
                "shape": "x".join(map(str, info.output_shape)) if info.output_shape else "-",
                "field": field,
                "dead": f"{stats.dead_count}/{len(stats.dead)}" if stats else "",
            }
        )
    return rows


def save_filters(weights: dict[str, torch.Tensor], out: Path) -> list[Path]:
    """One filter-grid PNG per conv layer, plus every filter's RMS in `filters.json`."""
    rms = {layer: [round(v, 6) for v in filter_rms(w).tolist()] for layer, w in weights.items()}
    write_json(out / "filters.json", {"rms": rms})
    return write_pngs(out, figures.filter_figures(weights))


def save_feature_maps(maps: dict[str, torch.Tensor], out: Path, prefix: str = "maps") -> list[Path]:
    """Feature-map grids of one image at each layer, plus the raw maps (`<prefix>.npz`)."""
    write_npz(out / f"{prefix}.npz", **{layer: m.cpu().numpy() for layer, m in maps.items()})
    return write_pngs(out, figures.feature_map_figures(maps, prefix))


def save_attribution(
    loaded: LoadedModel,
    image: torch.Tensor,
    method: str,
    values: torch.Tensor,
    out: Path,
    **extra: np.ndarray,
) -> list[Path]:
    """One attribution of one preprocessed image: the display PNG(s) and the raw map with the
    image and any `extra` arrays (`<method>.npz`)."""
    arrays = {method: values.cpu().numpy(), "image": image.cpu().numpy(), **extra}
    write_npz(out / f"{figures.method_stem(method)}.npz", **arrays)
    return write_pngs(out, figures.attribution_figures(loaded.card, image, method, values))


def save_attribution_row(maps: list[AttributionMap], out: Path, shared_scale: bool = False) -> Path:
    """Several methods' maps of the same image(s) side by side, as `methods.png`: the picture
    `cl.show(*maps, shared_scale=...)` shows in a notebook."""
    return write_png(out / "methods.png", display.show(*maps, shared_scale=shared_scale).array)


def save_channels(scores: ChannelScores, out: Path) -> Path:
    """A channel attribution (`figures.channel_figure`) as `channels.png`, every score in
    `channels.npz`."""
    write_npz(out / "channels.npz", scores=scores.as_subclass(torch.Tensor).cpu().numpy())
    return write_png(out / "channels.png", figures.channel_figure(scores))


def save_neuron_groups(found: NeuronGroups, out: Path, suffix: str = ".png") -> Path:
    """Neuron groups (`figures.neuron_groups_figure`) as `groups<suffix>` (.png or .jpg); maps
    and directions in `groups.npz`, with the icons as displayed (uint8, 0-255: six 224-pixel
    icons would be 3 MB as float32); the layer and the reconstruction error in `groups.json`."""
    raw = {"maps": found.maps.numpy(), "directions": found.directions.numpy()}
    if found.icons is not None:
        raw["icons"] = (found.icons.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    write_npz(out / "groups.npz", **raw)
    write_json(out / "groups.json", {"layer": found.layer, "error": round(found.error, 6)})
    return write_image(out / f"groups{suffix}", figures.neuron_groups_figure(found))


def save_activation_atlas(found: ActivationAtlas, out: Path, name: str) -> list[Path]:
    """An activation atlas: `<name>.png` (icons and predicted classes,
    `figures.activation_atlas_figure`), for an unfiltered atlas of a classifier
    `<name>-classes.png` (each class's share of the cells), every array in `<name>.npz`, a
    summary in `<name>.json`."""
    arrays = ("xy", "classes", "cells", "counts", "dominant", "share")
    write_npz(
        out / f"{name}.npz",
        vectors=found.vectors.numpy(),
        means=found.means.numpy(),
        **{field: getattr(found, field) for field in arrays},
    )
    summary = {
        "layer": found.layer,
        "grid": found.grid,
        "samples": len(found.vectors),
        "cells": len(found.cells),
        "class": found.only,
    }
    write_json(out / f"{name}.json", summary)
    drawn = figures.activation_atlas_figures(found)
    return write_pngs(
        out, {name if key == "atlas" else f"{name}-{key}": a for key, a in drawn.items()}
    )


def save_occlusion(maps: Occlusion, out: Path, suffix: str = ".png") -> Path:
    """Fig. 7 for one image (`maps` of that image alone, `figures.occlusion_panels`): the row
    `occlusion<suffix>` (.png or .jpg), each panel on its own (`occlusion-a<suffix>`, ...) and
    the raw maps (`occlusion.npz`)."""
    panels = figures.occlusion_panels(maps)
    for title, panel in panels:
        write_image(out / f"occlusion-{title[1]}{suffix}", panel)
    raw = {name: getattr(maps, name)[0].numpy() for name in ("prob", "argmax", "sensitivity")}
    if maps.projection is not None:
        raw |= {"activation": maps.activation[0].numpy(), "projection": maps.projection[0].numpy()}
    write_npz(out / "occlusion.npz", ys=maps.ys.numpy(), xs=maps.xs.numpy(), **raw)
    return write_image(out / f"occlusion{suffix}", render.panel_row(panels))


def save_synthesis(result: Synthesis, out: Path, name: str, suffix: str = ".png") -> Path:
    """Synthesised images as a grid captioned with their labels (`<name><suffix>`, .png or
    .jpg), raw arrays and trace in `<name>.npz`."""
    write_npz(
        out / f"{name}.npz",
        images=result.images.cpu().numpy(),
        inputs=result.inputs.cpu().numpy(),
        trace=result.trace.numpy(),
    )
    return write_image(out / f"{name}{suffix}", figures.synthesis_grid(result))


def save_inversion(result: Inversion, out: Path) -> Path:
    """The image beside its reconstruction from the code at `result.layer`
    (`figures.inversion_panels`)."""
    panels = figures.inversion_panels(result)
    write_npz(
        out / "inversion.npz",
        image=result.inputs[0].cpu().numpy(),
        distance=result.distance.numpy(),
    )
    return write_png(out / "inversion.png", render.panel_row(panels))


def save_fooling(fooled: Fooling, out: Path) -> Path:
    """Original, fooling image and their difference (`figures.fooling_panels`)."""
    panels = figures.fooling_panels(fooled)
    write_npz(
        out / "fooling.npz",
        image=fooled.image.cpu().numpy(),
        target_prob=fooled.target_prob.numpy(),
    )
    return write_png(out / "fooling.png", render.panel_row(panels))


def save_adversarial_accuracy(table: AdversarialAccuracy, out: Path) -> Path:
    """The accuracy table as `adversarial.json`."""
    rows = [
        {"eps": eps, "clean": table.clean, "fgsm": fgsm, "iterative": iterative}
        for eps, fgsm, iterative in zip(table.eps, table.fgsm, table.iterative)
    ]
    return write_json(out / "adversarial.json", {"images": table.images, "accuracy": rows})


def save_embedding(found: Embedding, out: Path, *, tile: int = 28) -> list[Path]:
    """The t-SNE mosaic, the scatter plot coloured by class (`figures.embedding_figures`), and
    `embedding.csv`."""
    cells = {int(index): (row, col) for (row, col), index in np.ndenumerate(found.layout)}
    rows = ["index,label,x,y,row,col"] + [
        f"{index},{found.labels[n]},{found.xy[n, 0]:.4f},{found.xy[n, 1]:.4f},{cells[n][0]},{cells[n][1]}"
        for n, index in enumerate(found.indices)
    ]
    write_text(out / "embedding.csv", "\n".join(rows) + "\n")
    return write_pngs(out, figures.embedding_figures(found, tile))


def save_neighbours(found: Neighbours, out: Path, suffix: str = ".png") -> Path:
    """`figures.neighbours_figure` as `neighbours<suffix>` (.png or .jpg) and the neighbour
    indices (`neighbours.json`)."""
    indices = {
        "feature_indices": found.feature_indices.tolist(),
        "pixel_indices": found.pixel_indices.tolist(),
    }
    write_json(out / "neighbours.json", indices)
    return write_image(out / f"neighbours{suffix}", figures.neighbours_figure(found))


def save_diagnosis(runs: dict[str, tuple[dict, FirstLayer]], out: Path) -> dict[str, dict]:
    """Fig. 6: the first-layer filters of each run (name → (its training metadata, its
    `FirstLayer`)) side by side, with per-filter RMS, the largest filter's share and the dead
    filters, in `diagnosis.json` and `diagnosis.png`."""
    panels, summary = [], {}
    for name, (meta, first) in runs.items():
        summary[name] = {
            "model": meta["config"]["model"],
            "test_accuracy": meta["test_accuracy"],
            "rms": [round(v, 5) for v in first.rms.tolist()],
            "largest_share": round(first.largest_share, 4),
            "dead_filters": [i for i, d in enumerate(first.dead.dead.tolist()) if d],
        }
        title = f"{name}: largest share {first.largest_share:.3f}, dead {first.dead.dead_count}"
        panels.append((title, render.filter_grid(first.weight)))
    write_json(out / "diagnosis.json", summary)
    write_png(out / "diagnosis.png", render.panel_row(panels))
    return summary


def save_evolution(evo: Evolution, out: Path) -> list[Path]:
    """Fig. 4 per layer (`figures.evolution_figure`): a row per shown feature map, a column per
    checkpoint."""
    return [
        write_png(out / f"evolution-{safe_name(layer)}.png", figures.evolution_figure(evo, layer))
        for layer in evo.projections
    ]


def save_invariance(result: Invariance, out: Path) -> Path:
    """`figures.invariance_figure` for one transformation; raw arrays in `.npz`."""
    write_npz(
        out / f"invariance-{result.transform}.npz",
        values=np.array(result.values),
        prob=result.prob.numpy(),
        **{f"distance {layer}": d.numpy() for layer, d in result.distance.items()},
    )
    return write_png(out / f"invariance-{result.transform}.png", figures.invariance_figure(result))


def save_dead_units(stats: dict[str, DeadUnits], out: Path) -> Path:
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


def save_trust(found: Trust, out: Path) -> list[Path]:
    """`convlens trust`'s results: `trust.csv` (the table), `trust.json` (every number: the
    table, each method's similarity curves per image, each map's deletion and insertion curves
    and soft-mask scores), and the figures `randomisation.png`, `similarity.png` and
    `faithfulness.png`."""
    rows = found.table()
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(_cell(row[k]) for k in header) for row in rows]
    numbers = {
        "table": rows,
        "steps": found.randomisation.steps,
        "baseline": found.randomisation.baseline,
        "similarity": {
            m: {k: v.tolist() for k, v in metrics.items()}
            for m, metrics in found.randomisation.similarity.items()
        },
        "deletion": {n: c.curve.tolist() for n, c in found.deletion.items()},
        "insertion": {n: c.curve.tolist() for n, c in found.insertion.items()},
        "soft_mask": {
            n: {"drop": s.drop.tolist(), "increase": s.increase.tolist()}
            for n, s in found.soft_mask.items()
        },
    }
    return [
        write_text(out / "trust.csv", "\n".join(lines) + "\n"),
        write_json(out / "trust.json", numbers),
        write_png(
            out / "randomisation.png", trust_figures.randomisation_figure(found.randomisation)
        ),
        write_png(out / "similarity.png", trust_figures.similarity_figure(found.randomisation)),
        write_png(out / "faithfulness.png", trust_figures.faithfulness_figure(found)),
    ]


def _cell(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)
