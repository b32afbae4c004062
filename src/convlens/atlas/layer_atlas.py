"""The atlas's activation-atlas stage: each layer seen as a whole (`activation_atlases`, one pass
over the data for every layer), shown on its layer page with where each class lands."""

from __future__ import annotations

from convlens._io import safe_name
from convlens.analysis.activation_atlas import activation_atlases
from convlens.atlas.site import Job
from convlens.atlas.stages import stage
from convlens.atlas.unit_images import ATLAS_ICON_STEPS
from convlens.report.results import save_activation_atlas


@stage("activation-atlas", skippable=True)
def activation_atlas_stage(job: Job) -> dict:
    """Every layer's activation atlas (`config.atlas_grid` cells a side, `config.atlas_samples`
    activations) and each class's share of its cells, as figures of the layer pages; the
    layers split between ranks (each layer's atlas is the same whichever rank makes it)."""
    mine = job.mine(job.layers)
    if not mine:
        return {"layers": {}, "grid": job.config.atlas_grid}
    found = activation_atlases(
        job.loaded.model,
        job.data,
        mine,
        job.config.atlas_grid,
        job.config.atlas_samples,
        icon_steps=ATLAS_ICON_STEPS,
        progress=job.progress and job.rank == 0,
        fast=job.fast,
    )
    record = {}
    for layer in mine:
        if layer not in found:
            record[layer] = {"note": f"{layer} fires on at most one image of the data"}
            continue
        atlas, name = found[layer], f"{safe_name(layer)}-atlas"
        written = save_activation_atlas(atlas, job.site.img / "layers", name)
        record[layer] = {
            "file": name,
            "samples": len(atlas.vectors),
            "cells": len(atlas.cells),
            "classes": any(path.stem.endswith("-classes") for path in written),
        }
    return {"layers": record, "grid": job.config.atlas_grid}
