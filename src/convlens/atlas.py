"""The atlas: every capability of convlens for one model and dataset, as a static HTML site
that works from file:// (no external URL anywhere).

Work happens in named stages; each finished stage leaves a marker in `.stages/`, so `resume=True`
skips it (files are written atomically, so an interrupted stage is simply redone). One progress
bar runs across the stages. Pages are rendered last, from what the stages left, and a section
whose stage did not run is left out with a note.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from convlens import render
from convlens.analysis.evaluate import accuracy
from convlens.analysis.evolution import checkpoint_label, evolution, loaded_checkpoints
from convlens.analysis.filters import conv_layers, conv_weight, dead_units, feature_maps
from convlens.analysis.invariance import invariance
from convlens.attribution import deconvnet, guided_backprop, saliency
from convlens.models.layers import receptive_field, trace_layers
from convlens.models.loading import LoadedModel
from convlens.occlusion import default_geometry, occlusion
from convlens.pipelines import (
    default_map_layers,
    evolution_cells,
    evolution_strip,
    layer_rows,
    safe_name,
    top_examples_image,
    write_embedding,
    write_invariance,
    write_neighbours,
    write_occlusion,
    write_synthesis,
)
from convlens.report import write_json, write_page, write_png
from convlens.scan import ScanResult, scan
from convlens.synthesis import channel, class_score, synthesize
from convlens.units import Unit

STAGES = (
    "summary",
    "scan",
    "units",
    "synthesis",
    "evolution",
    "images",
    "embedding",
    "invariance",
)
SKIPPABLE = ("synthesis", "evolution", "embedding", "invariance")
MAX_FILTER_TILES = 20000  # filter grids with more (output, input) tiles are left out
TSNE_MINIMUM = 90  # three times openTSNE's default perplexity of 30


@dataclass(frozen=True)
class AtlasConfig:
    """What goes into the atlas: `layers` (default: every conv layer's rectified output),
    `images` sample images with their own pages, `skip` stages left out, `checkpoints` weight
    files for the evolution (default: the built-in model's epoch checkpoints when present)."""

    layers: list[str] | None = None
    images: int = 10
    skip: Sequence[str] = ()
    checkpoints: list[str] = field(default_factory=list)
    synthesis_steps: int = 256
    embed: int = 1600
    data_description: str = ""


class Atlas:
    """Builds the site in `out` for `loaded` over `data`."""

    def __init__(
        self, loaded: LoadedModel, data: Dataset, out: Path, config: AtlasConfig, resume: bool
    ) -> None:
        self.loaded, self.data, self.out, self.config = loaded, data, Path(out), config
        self.layers = config.layers or default_map_layers(loaded)
        self.resume = resume
        self.marks = self.out / ".stages"
        self.names = list(loaded.classes)
        self.labelled = _labelled(data)

    # -- stages ---------------------------------------------------------------------------
    def build(self, progress: bool = True) -> Path:
        """Run every stage (on resume, skipping those finished with the same model, data, layers
        and images), then write the pages."""
        self.out.mkdir(parents=True, exist_ok=True)
        runners: dict[str, Callable[[], dict]] = {
            name: getattr(self, f"_{name}") for name in STAGES
        }
        wanted = [name for name in STAGES if name not in self.config.skip]
        bar = tqdm(wanted, desc="atlas", unit="stage", disable=not progress)
        settings = {
            "model": self.loaded.spec,
            "weights": str(self.loaded.weights),
            "data": self.config.data_description,
            "layers": self.layers,
            "images": self.config.images,
        }
        for name in bar:
            bar.set_postfix(stage=name)
            finished = self._done(name)
            if self.resume and finished is not None and finished.get("settings") == settings:
                continue
            write_json(self.marks / f"{name}.json", {**runners[name](), "settings": settings})
        return self._pages()

    def _done(self, name: str) -> dict | None:
        mark = self.marks / f"{name}.json"
        return json.loads(mark.read_text()) if mark.exists() else None

    def _summary(self) -> dict:
        model = self.loaded.model
        stats = dead_units(model, self.data, self.layers)
        first = conv_layers(model)
        filters = {}
        for layer in first:
            weight = conv_weight(model, layer)
            if weight.shape[0] * weight.shape[1] > MAX_FILTER_TILES:
                continue  # tens of megapixels of 3x3 noise: left out (see the index page)
            filters[layer] = write_png(
                self.out / "img" / f"filters-{safe_name(layer)}.png", render.filter_grid(weight)
            ).name
        if first:
            weight = conv_weight(model, first[0])
            if weight.shape[1] in (1, 3):
                tiles = render.minmax(weight.detach().float().cpu(), dims=(1, 2, 3))
                for c, tile in enumerate(tiles):
                    write_png(self._unit_img(first[0], c, "filter"), render.picture(tile, 48))
        return {
            "rows": layer_rows(trace_layers(model, self.loaded.input_size), stats),
            "accuracy": accuracy(model, self.data) if self.labelled else None,
            "filters": filters,
            "first_conv": first[0] if first else None,
            "dead": {
                layer: [i for i, d in enumerate(s.dead.tolist()) if d] for layer, s in stats.items()
            },
        }

    def _scan(self) -> dict:
        result = scan(
            self.loaded.model,
            self.data,
            self.layers,
            checkpoint=self.out / "scan-state.safetensors",
            description={"model": self.loaded.spec, "data": self.config.data_description},
        )
        result.save(self.out / "scan.safetensors")
        return {"layers": self.layers}

    def _result(self) -> ScanResult:
        return ScanResult.load(self.out / "scan.safetensors")

    def _units(self) -> dict:
        result = self._result()
        for layer in self.layers:
            top = result[layer]
            field = receptive_field(self.loaded.model, layer, self.loaded.input_size)
            for c in range(top.values.shape[0]):
                figure = top_examples_image(self.loaded, self.data, layer, c, top, field)
                write_png(self._unit_img(layer, c, "top9"), figure)
                half = figure.shape[1] // 2
                write_png(self._unit_img(layer, c, "thumb"), figure[:, half:][::2, ::2])
                write_png(self._unit_img(layer, c, "sources"), self._source_grid(top, c))
        return {"layers": self.layers}

    def _source_grid(self, top, c: int) -> np.ndarray:
        """The whole images behind a channel's top activations, best first, 3 per row."""
        shown = [
            self.loaded.transform.denormalize(self.data[i][0])
            for i in top.indices[c].tolist()
            if i >= 0
        ]
        return render.grid(render.fit(torch.stack(shown), 56), columns=3, padding=2)

    def _synthesis(self) -> dict:
        result = self._result()
        for layer in self.layers:
            count = result[layer].values.shape[0]
            made = synthesize(
                self.loaded,
                channel(layer, list(range(count))),
                preset="lucid",
                steps=self.config.synthesis_steps,
                n=count,
            )
            for c, image in enumerate(made.images):
                write_png(self._unit_img(layer, c, "synthesis"), render.picture(image, 96))
        classes = list(range(min(len(self.names), 10)))
        models = synthesize(self.loaded, class_score(classes), preset="lucid", n=len(classes))
        labels = [f"{c}: {self.names[c]}" for c in classes]
        return {"classes": write_synthesis(models, labels, self.out / "img", "class-models").name}

    def _evolution(self) -> dict:
        checkpoints = self.config.checkpoints
        if len(checkpoints) < 2:
            return {"note": "no training checkpoints were given (--checkpoints)"}
        evo = evolution(checkpoints, self.data, self.layers, spec=self.loaded.spec)
        models = loaded_checkpoints(evo, self.loaded.spec)
        for layer in self.layers:
            for c in range(evo.results[0][layer].values.shape[0]):
                tiles = evolution_cells(evo, models, self.data, layer, c)
                write_png(
                    self._unit_img(layer, c, "evolution"), evolution_strip(tiles, len(models))
                )
        return {"labels": [checkpoint_label(c) for c in checkpoints]}

    def _images(self) -> dict:
        model, pages = self.loaded.model, []
        for index in _sample_indices(self.data, self.config.images):
            image, label = self.data[index]
            folder = self.out / "img" / f"image-{index}"
            shown = self.loaded.transform.denormalize(image)
            write_png(folder / "image.png", render.picture(shown, 160))
            with torch.no_grad():
                probs = model(image[None]).softmax(dim=1)[0]
            top = probs.topk(min(3, len(probs)))
            predicted = int(top.indices[0])
            heat, laid = render.saliency_images(
                saliency(model, image[None], predicted)[0], shown, 160
            )
            write_png(folder / "saliency.png", heat)
            write_png(folder / "saliency-overlay.png", laid)
            guided = guided_backprop(model, image[None], predicted)[0]
            write_png(folder / "guided.png", render.signed_image(guided, 160))
            layers = []
            for layer in self.layers:
                maps = feature_maps(model, image, layer)
                write_png(folder / f"maps-{safe_name(layer)}.png", render.map_grid(maps, tile=40))
                strongest = int(maps.flatten(1).amax(dim=1).argmax())
                projection = deconvnet(model, image[None], Unit(layer, strongest))[0]
                write_png(
                    folder / f"deconv-{safe_name(layer)}.png", render.signed_image(projection, 160)
                )
                layers.append({"name": layer, "file": safe_name(layer), "strongest": strongest})
            target = label if label >= 0 else predicted
            window, stride = default_geometry(min(image.shape[-2:]))
            maps = occlusion(
                model, image, target, window=window, stride=stride, layer=self.layers[-1]
            )
            write_occlusion(self.loaded, image, maps, folder)
            pages.append(
                {
                    "index": index,
                    "label": self._name(label) if label >= 0 else None,
                    "top": [
                        {"name": self._name(int(c)), "p": round(float(p), 4)}
                        for p, c in zip(top.values, top.indices)
                    ],
                    "layers": layers,
                }
            )
        return {"pages": pages}

    def _embedding(self) -> dict:
        count = int(np.sqrt(min(self.config.embed, len(self.data)))) ** 2
        if count <= TSNE_MINIMUM:
            return {
                "note": f"t-SNE needs more than {TSNE_MINIMUM} images; the data has {len(self.data)}"
            }
        write_embedding(self.loaded, self.data, count, self.out / "img", tile=24, progress=False)
        queries = Subset(self.data, _sample_indices(self.data, 5))
        write_neighbours(self.loaded, queries, self.data, 6, self.out / "img")
        return {"count": count}

    def _invariance(self) -> dict:
        if not self.labelled:
            return {"note": "invariance needs labelled images"}
        indices = _sample_indices(self.data, 5)
        images = torch.stack([self.data[i][0] for i in indices])
        labels = [self.data[i][1] for i in indices]
        layers = [self.layers[0], self.layers[-1]]
        plots = []
        for transform in ("translate", "scale", "rotate"):
            result = invariance(self.loaded.model, images, labels, layers, transform)
            plots.append(write_invariance(result, self.out / "img").name)
        return {"plots": plots}

    # -- pages ----------------------------------------------------------------------------
    def _pages(self) -> Path:
        assets = self.out / "assets"
        assets.mkdir(parents=True, exist_ok=True)
        for name in ("style.css", "filter.js"):
            shutil.copyfile(resources.files("convlens.report") / "static" / name, assets / name)
        summary = self._done("summary") or {}
        done = {name: self._done(name) for name in STAGES}
        images = (done["images"] or {}).get("pages", [])
        common = {"model": self.loaded.spec, "data": self.config.data_description}
        result = self._result() if done["scan"] is not None else None
        for layer in self.layers if done["units"] is not None else []:
            top = result[layer]
            dead = set(summary.get("dead", {}).get(layer, []))
            channels = [
                {"c": c, "dead": c in dead, "page": self._unit_page(layer, c)}
                for c in range(top.values.shape[0])
            ]
            write_page(
                self.out / self._layer_page(layer),
                "layer.html.j2",
                **common,
                layer=layer,
                file=safe_name(layer),
                channels=channels,
                first=layer == summary.get("first_conv"),
            )
            for c in range(top.values.shape[0]):
                write_page(
                    self.out / self._unit_page(layer, c),
                    "unit.html.j2",
                    **common,
                    layer=layer,
                    layer_page=self._layer_page(layer),
                    c=c,
                    file=safe_name(layer),
                    dead=c in dead,
                    sources=self._sources(top, c),
                    synthesis=done["synthesis"] is not None,
                    evolution=(done["evolution"] or {}).get("labels"),
                    filter=(
                        self.out / "img" / "units" / safe_name(layer) / f"{c:04d}-filter.png"
                    ).exists(),
                    previous=self._unit_page(layer, c - 1) if c > 0 else None,
                    next=self._unit_page(layer, c + 1) if c + 1 < top.values.shape[0] else None,
                )
        for page in images:
            write_page(
                self.out / f"image-{page['index']}.html", "image.html.j2", **common, page=page
            )
        return write_page(
            self.out / "index.html",
            "index.html.j2",
            **common,
            summary=summary,
            layers=[{"name": layer, "page": self._layer_page(layer)} for layer in self.layers]
            if done["units"] is not None
            else [],
            images=images,
            done=done,
        )

    def _sources(self, top, c: int) -> list[dict]:
        rows = []
        for value, index in zip(top.values[c].tolist(), top.indices[c].tolist()):
            if index < 0:
                continue
            label = self.data[index][1]
            rows.append(
                {
                    "value": round(value, 4),
                    "index": index,
                    "label": self._name(label) if label >= 0 else "",
                }
            )
        return rows

    def _name(self, label: int) -> str:
        return self.names[label] if 0 <= label < len(self.names) else str(label)

    def _unit_img(self, layer: str, c: int, kind: str) -> Path:
        return self.out / "img" / "units" / safe_name(layer) / f"{c:04d}-{kind}.png"

    @staticmethod
    def _layer_page(layer: str) -> str:
        return f"layer-{safe_name(layer)}.html"

    @staticmethod
    def _unit_page(layer: str, c: int) -> str:
        return f"unit-{safe_name(layer)}-{c:04d}.html"


def _labelled(data: Dataset) -> bool:
    labels = getattr(data, "labels", None)
    if labels is not None:
        return bool((torch.as_tensor(labels) >= 0).all())
    return len(data) > 0 and data[0][1] >= 0


def _sample_indices(data: Dataset, count: int) -> list[int]:
    """One image per class while classes last (the first of each), then the next indices."""
    labels = getattr(data, "labels", None)
    if labels is None:
        return list(range(min(count, len(data))))
    chosen, seen = [], set()
    for index, label in enumerate(torch.as_tensor(labels).tolist()):
        if label not in seen:
            seen.add(label)
            chosen.append(index)
        if len(chosen) == count:
            break
    return chosen + [i for i in range(len(data)) if i not in chosen][: count - len(chosen)]


def write_atlas(
    loaded: LoadedModel,
    data: Dataset,
    out: str | Path,
    config: AtlasConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Build the atlas and return its index page.

    Example:
        >>> write_atlas(cl.load_model("zfnet-fashion"), test_set, "atlas")  # doctest: +SKIP
        PosixPath('atlas/index.html')
    """
    return Atlas(loaded, data, Path(out), config or AtlasConfig(), resume).build(progress)
