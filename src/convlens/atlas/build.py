"""Building the atlas: run the stages in order under one progress bar (on resume, skipping
those finished with the same settings), then write the pages."""

from __future__ import annotations

import time
from pathlib import Path

from torch.utils.data import Dataset

from convlens._errors import ConvlensError
from convlens._progress import tqdm
from convlens.atlas.ledger import clear_ledgers
from convlens.atlas.pages import write_pages
from convlens.atlas.site import AtlasConfig, Job, Site
from convlens.atlas.stages import STAGES, merge_records
from convlens.distributed import barrier, current_shard, gather_objects
from convlens.hooks import resolve_layer
from convlens.models.layers import default_layers, trace_layers
from convlens.models.loading import LoadedModel


def write_atlas(
    loaded: LoadedModel,
    data: Dataset,
    out: str | Path,
    config: AtlasConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Build the atlas in `out` and return its index page.

    Work happens in named stages; each finished stage leaves a marker in `.stages/` (what the
    pages need, and the stage's seconds), so `resume=True` skips it when it was built with the
    same model, data, layers and images. Files are written atomically, so an interrupted stage
    is simply redone, but for the units its ledger (`convlens.atlas.ledger`) lists as
    finished: the top-9 figures resume unit by unit, the unit images chunk by chunk. Pages are
    written last, from the markers of stages finished with this build's settings; a section
    whose stage did not run shows a note. Under torchrun every rank takes its share of each
    stage's work and rank 0 writes the pages.

    Example:
        >>> write_atlas(cl.load_model("zfnet-fashion"), test_set, "atlas")  # doctest: +SKIP
        PosixPath('atlas/index.html')
    """
    config = config or AtlasConfig()
    site = Site.for_model(Path(out), loaded.input_size)
    rank, world = current_shard()
    layers = atlas_layers(loaded, config.layers)
    job = Job(loaded, data, layers, config, site, progress, rank, world)
    site.out.mkdir(parents=True, exist_ok=True)
    wanted = [name for name in STAGES if name not in config.skip]
    bar = tqdm(wanted, desc="atlas", unit="stage", disable=not progress or rank != 0)
    for name in bar:
        bar.set_postfix(stage=name)
        settings, finished = job.settings(name), site.marker(name)
        if not (resume and finished and finished.get("settings") == settings):
            run_stage(job, name, settings if resume else None)
        barrier()  # the next stage reads what every rank wrote
    if rank == 0:
        write_pages(job)
    barrier()
    return site.out / "index.html"


def run_stage(job: Job, name: str, resumed: dict | None = None) -> dict:
    """Run stage `name` on every rank, mark it finished and return its marker (the record, the
    settings, the seconds). Its marker is removed first (its files are about to change), and so
    are its ledgers, but those of an interrupted run with the `resumed` settings, whose finished
    units the stage then skips."""
    site = job.site
    if job.rank == 0:
        site.unmark(name)
        clear_ledgers(site.stages, name, keep=resumed)
    barrier()  # no rank reads a ledger before it is cleared
    started = time.perf_counter()
    record = merge_records(name, gather_objects(STAGES[name](job)))
    seconds = round(time.perf_counter() - started, 2)
    marker = {**record, "settings": job.settings(name), "seconds": seconds}
    if job.rank == 0:  # every rank has finished: gather_objects waits for them all
        site.mark(name, marker)
        clear_ledgers(site.stages, name)
    return marker


def atlas_layers(loaded: LoadedModel, wanted: list[str] | None) -> list[str]:
    """The atlas's layers: `wanted`, each checked before any work (a known name, whose output is
    a (C, H, W) feature map), or the model's default layers."""
    if not wanted:
        return default_layers(loaded.model)
    shapes = {
        name: info.output_shape
        for name, info in trace_layers(loaded.model, loaded.input_size).items()
    }
    for layer in wanted:
        resolve_layer(loaded.model, layer)  # an unknown name: an error listing the close ones
        if shapes.get(layer) is None or len(shapes[layer]) != 3:
            examples = ", ".join(default_layers(loaded.model)[:3])
            raise ConvlensError(
                f"layer {layer!r} gives outputs of shape {shapes.get(layer)}, not feature maps "
                f"(C, H, W); the atlas shows convolutional layers, e.g. {examples}"
            )
    return list(wanted)
