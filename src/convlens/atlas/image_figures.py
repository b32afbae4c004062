"""The figures of the atlas's image pages: prediction, attributions on one scale and each on
its own, the feature maps and projections of every layer, occlusion, the channels that carried
the prediction and the neuron groups."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from convlens import render
from convlens._io import safe_name
from convlens.analysis.filters import layer_maps
from convlens.analysis.groups import NeuronGroups, direction_icons, neuron_groups
from convlens.atlas.site import Job
from convlens.atlas.unit_images import ATLAS_ICON_STEPS
from convlens.attribution import METHODS, channel_attribution, deconvnet
from convlens.data.select import item
from convlens.hooks import model_device
from convlens.occlusion import default_geometry, occlusion
from convlens.report import figures, write_image, write_images, write_png, write_smaller
from convlens.report.results import save_neuron_groups, save_occlusion
from convlens.targets import Unit

PAGE_CHANNELS = 6
"""Feature maps of the last layer listed on an image page: those that carried its prediction
most (`channel_attribution`), each linked to its unit page."""

IMAGE_METHODS = ("saliency", "guided", "gradcam", "guided-gradcam", "ig")
"""The attribution methods of every image page."""


def image_page(job: Job, index: int) -> tuple[dict, NeuronGroups | None]:
    """The figures of one sample image and what its page lists; its neuron groups, whose
    icons and figure `write_groups` makes (None when the last layer cannot be grouped)."""
    model, folder = job.loaded.model, job.site.image_folder(index)
    for stale in folder.glob("*") if folder.is_dir() else ():  # an earlier build's figures
        stale.unlink()
    image, label = item(job.data, index)
    with torch.no_grad():
        probs = model(image[None].to(model_device(model))).softmax(dim=1)[0].cpu()
    top = probs.topk(min(3, len(probs)))
    predicted = int(top.indices[0])
    write_images(folder, attribution_figures(job, image, predicted), job.site.figure_suffix)
    maps = layer_maps(model, image, job.layers)  # one forward for the layers and the groups
    layers = layer_figures(job, image, maps, folder)
    occluded = occlusion(
        model, image, label if label >= 0 else predicted, **_geometry(image), layer=job.layers[-1]
    )
    save_occlusion(occluded, folder, job.site.figure_suffix)
    card = job.loaded.card
    groups = _neuron_groups(job, image, maps[job.layers[-1]])
    scores = channel_attribution(model, image[None], predicted, job.layers[-1])[0]
    strongest = scores.abs().argsort(descending=True)[:PAGE_CHANNELS].tolist()
    return {
        "channels": [{"c": k, "value": round(float(scores[k]), 4)} for k in strongest],
        "index": index,
        "label": card.class_name(label) if label >= 0 else None,
        "top": [
            {"name": card.class_name(int(c)), "p": round(float(p), 4)}
            for p, c in zip(top.values, top.indices)
        ],
        "layers": layers,
        "groups": _groups_record(job, groups),
    }, groups


PAGE_GROUPS = 6
"""Neuron groups of the last layer on an image page (fewer when the layer has fewer channels
or positions)."""


def _neuron_groups(job: Job, image: torch.Tensor, output: torch.Tensor) -> NeuronGroups | None:
    """The neuron groups of the last layer on one image (its `output` there), without icons;
    None when the layer has no spatial map or is silent on it."""
    layer, model = job.layers[-1], job.loaded.model
    if output.dim() != 3 or not output.clamp_min(0).any():
        return None
    count = min(PAGE_GROUPS, output.shape[0], output.shape[1] * output.shape[2])
    return neuron_groups(model, image, layer, count)


def _groups_record(job: Job, groups: NeuronGroups | None) -> dict:
    """What the image page says about its neuron groups."""
    if groups is None:
        return {"note": f"{job.layers[-1]} has no spatial map or is silent on this image"}
    return {"layer": groups.layer, "count": len(groups.maps), "error": round(groups.error, 3)}


def write_groups(job: Job, found: list[tuple[int, NeuronGroups | None]]) -> None:
    """The neuron-group figure of each image page (image index, its groups), the icons of all
    pages' groups optimised in one batch (`ATLAS_ICON_STEPS`) rather than a small batch per
    page."""
    pages = [(index, groups) for index, groups in found if groups is not None]
    if not pages:
        return
    directions = torch.cat([groups.directions for _, groups in pages])
    icons = direction_icons(
        job.loaded.model,
        job.layers[-1],
        directions,
        ATLAS_ICON_STEPS,
        progress=job.progress,
        fast=job.fast,
    )
    start = 0
    for index, groups in pages:
        count = len(groups.directions)
        drawn = replace(groups, icons=icons[start : start + count])
        save_neuron_groups(drawn, job.site.image_folder(index), job.site.figure_suffix)
        start += count


def attribution_figures(job: Job, image: torch.Tensor, predicted: int) -> dict[str, np.ndarray]:
    """Each of `IMAGE_METHODS` for the prediction on its own scale (maps without channels as
    overlays only), and all side by side on one shared scale (`methods`)."""
    shown, row = {}, {}
    for method in IMAGE_METHODS:
        values = METHODS[method](job.loaded.model, image[None], predicted)
        drawn = figures.attribution_figures(job.loaded.card, image, method, values[0], 160)
        shown |= {name: a for name, a in drawn.items() if f"{name}-overlay" not in drawn}
        row[figures.attribution_title(method, values)] = values[0]
    shown["methods"] = figures.attribution_row(
        job.loaded.card, image, row, shared_scale=True, size=160
    )
    return shown


def _geometry(image: torch.Tensor) -> dict:
    window, stride = default_geometry(min(image.shape[-2:]))
    return {"window": window, "stride": stride}


def layer_figures(
    job: Job, image: torch.Tensor, maps: dict[str, torch.Tensor], folder: Path
) -> list[dict]:
    """Feature maps of one image at every layer (`maps`, `layer_maps`; on a photo site as PNG
    or JPEG, whichever is smaller), and the projection of each layer's strongest channel."""
    layers = []
    for layer, values in maps.items():
        grids = figures.feature_map_figures({layer: values}, "maps", tile=40)  # {} if not spatial
        written = [_write_grid(job, folder / name, grid) for name, grid in grids.items()]
        strongest = int(values.flatten(1).amax(dim=1).argmax())
        projection = deconvnet(job.loaded.model, image[None], Unit(layer, strongest))[0]
        write_image(
            folder / f"deconv-{safe_name(layer)}{job.site.figure_suffix}",
            render.signed_image(projection, 160),
        )
        layers.append(
            {
                "name": layer,
                "file": safe_name(layer),
                "maps": written[0].name if written else None,
                "strongest": strongest,
            }
        )
    return layers


def _write_grid(job: Job, stem: Path, grid: np.ndarray) -> Path:
    """A feature-map grid as `<stem>.png`, or on a photo site as PNG or JPEG, the smaller."""
    return write_smaller(stem, grid) if job.site.photo else write_png(Path(f"{stem}.png"), grid)
