"""Building the atlas: run the stages in order under one progress bar (on resume, skipping
those finished with the same settings), then write the pages."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from tqdm.auto import tqdm

from convlens.atlas.pages import write_pages
from convlens.atlas.site import AtlasConfig, Job, Site
from convlens.atlas.stages import STAGES
from convlens.models.layers import default_layers
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

    Work happens in named stages; each finished stage leaves a marker in `.stages/`, so
    `resume=True` skips it when it was built with the same model, data, layers and images (files
    are written atomically, so an interrupted stage is simply redone). Pages are written last,
    from what the stages left; a section whose stage did not run shows a note.

    Example:
        >>> write_atlas(cl.load_model("zfnet-fashion"), test_set, "atlas")  # doctest: +SKIP
        PosixPath('atlas/index.html')
    """
    config = config or AtlasConfig()
    site = Site(Path(out))
    job = Job(loaded, data, config.layers or default_layers(loaded.model), config, site, progress)
    site.out.mkdir(parents=True, exist_ok=True)
    wanted = [name for name in STAGES if name not in config.skip]
    bar = tqdm(wanted, desc="atlas", unit="stage", disable=not progress)
    for name in bar:
        bar.set_postfix(stage=name)
        finished = site.marker(name)
        if resume and finished is not None and finished.get("settings") == job.settings(name):
            continue
        site.mark(name, {**STAGES[name](job), "settings": job.settings(name)})
    write_pages(job)
    return site.out / "index.html"
