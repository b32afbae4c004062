"""The atlas: every capability of convlens for one model and dataset, as a static HTML site
that works from file:// (no external URL anywhere). `stages` builds the figures in resumable
stages, `pages` writes the pages, `site` names every file."""

from convlens.atlas import layer_atlas  # noqa: F401  (registers the last stage)
from convlens.atlas.build import write_atlas
from convlens.atlas.site import AtlasConfig
from convlens.atlas.stages import SKIPPABLE, STAGES

__all__ = ["SKIPPABLE", "STAGES", "AtlasConfig", "write_atlas"]
