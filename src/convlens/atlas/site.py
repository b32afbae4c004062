"""What an atlas is built from (`AtlasConfig`, `Job`) and where everything goes (`Site`): file
and page names, and the stage markers that `--resume` reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

from convlens._io import safe_name, write_json
from convlens._progress import tqdm
from convlens.analysis.activation_atlas import MAX_GRID
from convlens.atlas.ledger import Ledger, open_ledger
from convlens.hooks import model_device
from convlens.models.fusion import native_bfloat16
from convlens.models.loading import LoadedModel

SYNTHESIS_MODES = ("unit", "full")
PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class AtlasConfig:
    """What goes into the atlas: `layers` (default: every conv layer's rectified output),
    `images` sample images with their own pages, `skip` stages left out, `checkpoints` weight
    files for the evolution (default: the built-in model's epoch checkpoints when present),
    `synthesis` "unit" (each unit's image covers its receptive field, `synthesize_units`) or
    "full" (an input-sized image maximising the channel's mean); `synthesis_steps` None means
    the mode's own (`UNIT_STEPS` at learning rate `UNIT_LR`, or the full mode's 256);
    `trust_images` the images of the sanity checks and faithfulness scores; `atlas_grid` and
    `atlas_samples` each layer's activation atlas (cells a side, activations sampled);
    `precision` the model's arithmetic while images are synthesised (unit images, class models,
    icons): "bfloat16" autocast, "float32", or "auto", bfloat16 where the model's device
    computes it in hardware (`native_bfloat16`). The images are for looking at: in bfloat16 they
    look the same and excite their units as much, in 0.6-0.8x the time on such CPUs."""

    def __post_init__(self) -> None:
        if self.synthesis not in SYNTHESIS_MODES:
            raise ValueError(f"synthesis must be one of {SYNTHESIS_MODES}, got {self.synthesis!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        limits = (("images", 0, None), ("atlas_grid", 1, MAX_GRID), ("atlas_samples", 2, None))
        for name, low, high in limits:
            value = getattr(self, name)
            if type(value) is not int or value < low or (high and value > high):
                allowed = f"from {low} to {high}" if high is not None else f">= {low}"
                raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")

    layers: list[str] | None = None
    images: int = 10
    skip: Sequence[str] = ()
    checkpoints: list[str] = field(default_factory=list)
    synthesis: str = "unit"
    synthesis_steps: int | None = None
    embed: int = 1600
    data_description: str = ""
    trust_images: int = 32
    atlas_grid: int = 10
    atlas_samples: int = 1000
    precision: str = "auto"


PHOTO_KINDS = ("top9", "thumb", "top1", "synthesis")
"""Unit figures that are photographs on a photo model, written as JPEG there."""


@dataclass(frozen=True)
class Site:
    """Paths inside the atlas folder `out`. With `photo` (a model of RGB inputs of 64 pixels or
    more), the photographic figures (`figure_suffix`) are JPEGs, a third to a fifth of their PNG
    size, so that an atlas of thousands of units stays small."""

    out: Path
    photo: bool = False

    @staticmethod
    def for_model(out: Path, input_size: tuple[int, ...]) -> Site:
        """The site of an atlas of a model taking `input_size` (C, H, W) inputs."""
        return Site(out, photo=input_size[0] == 3 and min(input_size[1:]) >= 64)

    def relative(self, path: Path) -> str:
        """`path` as a link from a page at the atlas's top."""
        return path.relative_to(self.out).as_posix()

    def data_image(self, index: int) -> Path:
        """`img/data/<index>.<png|jpg>`: dataset image `index`, written once a run (by each
        rank that needs it) however many units' top-9 it is in."""
        return self.img / "data" / f"{index}{self.figure_suffix}"

    @property
    def img(self) -> Path:
        return self.out / "img"

    def unit_image(self, layer: str, channel: int, kind: str) -> Path:
        """`img/units/<layer>/<channel>-<kind>.<png|jpg>` (kind: top9, thumb, top1, synthesis,
        evolution, filter)."""
        suffix = self.figure_suffix if kind in PHOTO_KINDS else ".png"
        return self.img / "units" / safe_name(layer) / f"{channel:04d}-{kind}{suffix}"

    def image_folder(self, index: int) -> Path:
        """Where the figures of dataset image `index` go."""
        return self.img / f"image-{index}"

    @property
    def figure_suffix(self) -> str:
        """The suffix of the photographic figures (`PHOTO_KINDS`, the dataset images, the image
        pages' figures, the class models and the nearest neighbours): ".jpg" on a photo site
        (photographs, overlays and heat maps at 3-10x less than PNG: a resnet50 image page's
        figures 5.5 MB as PNG), else ".png"."""
        return ".jpg" if self.photo else ".png"

    @staticmethod
    def layer_page(layer: str) -> str:
        """`layers/<layer>.html`: pages are named from the atlas's top, like every link."""
        return f"layers/{safe_name(layer)}.html"

    @staticmethod
    def unit_page(layer: str, channel: int) -> str:
        return f"units/{safe_name(layer)}/{channel:04d}.html"

    @staticmethod
    def image_page(index: int) -> str:
        return f"images/{index}.html"

    @staticmethod
    def root(page: str) -> str:
        """The way from `page` back to the atlas's top ("", "../", "../../"), which every link
        on it starts with."""
        return "../" * page.count("/")

    @property
    def stages(self) -> Path:
        """`.stages/`: the markers of finished stages and the ledgers of unfinished ones."""
        return self.out / ".stages"

    def marker(self, stage: str) -> dict | None:
        """What a finished stage recorded, or None when it has not finished."""
        path = self.stages / f"{stage}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def mark(self, stage: str, record: dict) -> None:
        """Record that `stage` finished, with what the pages need from it."""
        write_json(self.stages / f"{stage}.json", record)

    def unmark(self, stage: str) -> None:
        """Forget that `stage` finished: it is being built again, and its files change."""
        (self.stages / f"{stage}.json").unlink(missing_ok=True)


LAYOUTS = {"units": 3, "synthesis": 3, "images": 4, "embedding": 4}
"""The version of the files of the stages listed, raised when their names or formats change, so
that a resumed atlas rebuilds the stage: 4 for images is the neuron groups and JPEG figures on
photo sites, 4 for embedding the nearest neighbours as JPEG there (the index links them by the
site's suffix). The class models' file name is in the synthesis record, so their JPEG needed no
rebuild of hours of unit images."""


@dataclass(frozen=True)
class Job:
    """One atlas build: the model, the data, the layers shown, the settings and the site."""

    loaded: LoadedModel
    data: Dataset
    layers: list[str]
    config: AtlasConfig
    site: Site
    progress: bool = True
    rank: int = 0
    world: int = 1

    def bar(self, items: Sequence, what: str, done: int = 0) -> tqdm:
        """A progress bar with an ETA over one stage's work (on rank 0, unless `progress` is
        off), starting at `done` items an interrupted run finished."""
        return tqdm(
            items,
            desc=what,
            initial=done,
            total=done + len(items),
            leave=False,
            disable=not self.progress or self.rank != 0,
        )

    @property
    def fast(self) -> bool:
        """Whether images are synthesised in bfloat16 (`AtlasConfig.precision`)."""
        if self.config.precision == "auto":
            return native_bfloat16(model_device(self.loaded.model))
        return self.config.precision == "bfloat16"

    def ledger(self, stage: str) -> Ledger:
        """The units of `stage` that interrupted runs with this build's settings finished (none
        unless the build resumes: `run_stage` clears the other logs first), and this rank's log
        of those it finishes."""
        return open_ledger(self.site.stages, stage, self.settings(stage), self.rank)

    def mine(self, items: Sequence) -> list:
        """This rank's share of a stage's independent work items (all of them in one process)."""
        return list(items)[self.rank :: self.world]

    def settings(self, stage: str) -> dict:
        """What a finished `stage` must have been built with to be reused on resume."""
        common = {
            "model": self.loaded.spec,
            "weights": str(self.loaded.weights),
            "data": self.config.data_description,
            "layers": self.layers,
            "images": self.config.images,
        }
        if stage in LAYOUTS:  # their figures' format and folders
            common |= {"photo": self.site.photo, "layout": LAYOUTS[stage]}
        if stage in ("synthesis", "images", "activation-atlas"):  # synthesised images
            common |= {"bfloat16": self.fast}
        if stage == "synthesis":
            common |= {"mode": self.config.synthesis, "steps": self.config.synthesis_steps}
        if stage == "trust":
            common |= {"trust_images": self.config.trust_images, "randomised": "by block"}
        if stage == "activation-atlas":
            common |= {"grid": self.config.atlas_grid, "samples": self.config.atlas_samples}
        return common
