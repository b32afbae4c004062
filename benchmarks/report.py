"""`convlens report` (the atlas) profiled stage by stage on random-init torchvision models over N
photo crops, and the synthesis stage's "unit" mode next to the old "full" mode in the same run.
Prints one JSON line per stage (then the pages and a total with the atlas's size and page
count), then one per layer comparing the two synthesis modes, then their total.

The data is made offline: N 256x256 JPEG crops, cut at seeded random positions and sizes from
scikit-image's bundled photos. Each model's random-init weights (torch.manual_seed(0)) are saved
to a local file and loaded with `convlens.load_model("torchvision:<name>", file)`, as
`convlens report --model torchvision:alexnet --weights alexnet.pth` does. The stages run as in
`convlens.atlas.build.write_atlas` (default layers, default config), each timed on its own.

The synthesis comparison times, per default layer, `synthesize_units` (unit mode, also with
`fast=True`, bfloat16) and the full-size channel synthesis of the atlas's `--synthesis full` on
the same units: one untimed warm-up step, then a 1-step and a (1 + k)-step call, so a step costs
their difference / k and the call's fixed cost is what remains of the 1-step call. Each mode's
stage time is extrapolated from those k steps to the atlas's step count (`UNIT_STEPS`,
`FULL_STEPS`, or --synthesis-steps): the full mode is never run to the end. A layer with more
than --max-units units is measured on its first --max-units (a step's cost is linear in the batch
on CPU; resnet18's 512 units at 224 pixels would need ~19 GB) and scaled up, as a field says.
The estimates leave out the class models and the PNGs, the same in both modes.

Targets (issue 15): over 100 photos, every stage included, <= 10 min for alexnet and <= 15 min
for resnet18 on 2 cores; the synthesis stage >= 20x faster in unit mode than in full mode.
Run: python benchmarks/report.py [--models alexnet,resnet18] [--photos 100]
[--synthesis-steps N] [--out DIR] [--stages summary,scan,...] [--skip-synthesis-comparison]
[--compare-steps 3] [--max-units 128] [--no-progress]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from skimage import data as skdata

import convlens
from convlens.atlas.build import run_stage
from convlens.atlas.pages import write_pages
from convlens.atlas.site import AtlasConfig, Job, Site
from convlens.atlas.stages import STAGES
from convlens.atlas.unit_images import FULL_STEPS, UNIT_LR, UNIT_STEPS
from convlens.data import open_data
from convlens.data.select import with_transform
from convlens.models.layers import default_layers, trace_layers
from convlens.models.loading import LoadedModel
from convlens.synthesis import Synthesis, channel, synthesize, synthesize_units, unit_canvas

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "cat",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
    "logo",
)
CROP = 256


def photo_sources() -> dict[str, np.ndarray]:
    """scikit-image's bundled photos as RGB uint8 arrays (those missing here are skipped)."""
    found = {}
    for name in PHOTOS:
        try:
            image = np.asarray(getattr(skdata, name)())
        except Exception:  # absent here, or a file not bundled
            continue
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        found[name] = np.ascontiguousarray(image[..., :3])
    if not found:
        raise SystemExit("none of scikit-image's photos is available")
    return found


def make_photos(folder: Path, count: int, seed: int = 0) -> None:
    """`count` CROP x CROP JPEG crops at seeded random positions and sizes (a quarter of the
    photo's short side up to all of it), taking the photos in turn."""
    sources = photo_sources()
    names = list(sources)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = names[i % len(names)]
        image = sources[name]
        height, width = image.shape[:2]
        short = min(height, width)
        side = int(rng.integers(max(short // 4, 32), short + 1))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(image[top : top + side, left : left + side])
        crop = crop.resize((CROP, CROP), Image.Resampling.BICUBIC)
        crop.save(folder / f"{i:04d}-{name}.jpg", quality=90)


def load(name: str, folder: Path) -> LoadedModel:
    """The random-init model saved as a state dict and loaded back as a user would."""
    torch.manual_seed(0)
    weights = folder / f"{name}.pth"
    torch.save(torchvision.models.get_model(name, weights=None).state_dict(), weights)
    return convlens.load_model(f"torchvision:{name}", weights)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def run_stages(
    name: str, loaded: LoadedModel, photos: Path, out: Path, args: argparse.Namespace
) -> None:
    """Every wanted stage in order, timed, then the pages; a line each and the total."""
    config = AtlasConfig(synthesis_steps=args.synthesis_steps, data_description=str(photos))
    data = with_transform(open_data(photos), loaded.transform)
    job = Job(
        loaded,
        data,
        default_layers(loaded.model),
        config,
        Site.for_model(out, loaded.input_size),
        args.progress,
    )
    out.mkdir(parents=True, exist_ok=True)
    total = 0.0
    for stage in [s for s in STAGES if s in args.stages]:
        record = run_stage(job, stage)  # as write_atlas runs it: no earlier run's work reused
        total += record["seconds"]
        line = {"model": name, "stage": stage, "seconds": record["seconds"]}
        if "note" in record:
            line["note"] = record["note"]
        emit(line)
    started = time.perf_counter()
    write_pages(job)
    seconds = time.perf_counter() - started
    total += seconds
    emit({"model": name, "stage": "pages", "seconds": round(seconds, 2)})
    files = [p for p in out.rglob("*") if p.is_file()]
    emit(
        {
            "model": name,
            "stage": "total",
            "seconds": round(total, 2),
            "minutes": round(total / 60, 2),
            "stages": [s for s in STAGES if s in args.stages],
            "photos": len(data),
            "layers": job.layers,
            "atlas_mb": round(sum(p.stat().st_size for p in files) / 2**20, 1),
            "pages": sum(p.suffix == ".html" for p in files),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
    )


def step_cost(run: Callable[[int], object], k: int) -> tuple[float, float]:
    """(seconds per step, seconds per call beside the steps) of `run(steps)`: one warm-up
    step, then a 1-step and a (1 + k)-step call."""
    run(1)
    started = time.perf_counter()
    run(1)
    one = time.perf_counter() - started
    started = time.perf_counter()
    run(1 + k)
    more = time.perf_counter() - started
    per_step = max(more - one, 0.0) / k
    return per_step, max(one - per_step, 0.0)


def _unit(loaded: LoadedModel, layer: str, units: int, fast: bool, steps: int) -> Synthesis:
    return synthesize_units(loaded, layer, range(units), steps=steps, lr=UNIT_LR, fast=fast)[0]


def _full(loaded: LoadedModel, layer: str, units: int, steps: int) -> Synthesis:
    """The atlas's `--synthesis full`: an input-sized image per channel, maximising its mean."""
    return synthesize(loaded, channel(layer, list(range(units))), n=units, steps=steps)


def compare_synthesis(name: str, loaded: LoadedModel, args: argparse.Namespace) -> None:
    """Unit mode (float32 and bfloat16) next to full mode, per default layer and in total."""
    k = args.compare_steps
    unit_steps = args.synthesis_steps or UNIT_STEPS
    full_steps = args.synthesis_steps or FULL_STEPS
    shapes = {
        layer: info.output_shape
        for layer, info in trace_layers(loaded.model, loaded.input_size).items()
    }
    totals = {"unit": 0.0, "unit_fast": 0.0, "full": 0.0}
    for layer in default_layers(loaded.model):
        units = shapes[layer][0]
        measured = min(units, args.max_units)
        scale = units / measured
        costs = {
            "unit": step_cost(partial(_unit, loaded, layer, measured, False), k),
            "unit_fast": step_cost(partial(_unit, loaded, layer, measured, True), k),
            "full": step_cost(partial(_full, loaded, layer, measured), k),
        }
        per_step = {mode: step * scale for mode, (step, _) in costs.items()}
        estimate = {
            mode: costs[mode][1] * scale + per_step[mode] * steps
            for mode, steps in (
                ("unit", unit_steps),
                ("unit_fast", unit_steps),
                ("full", full_steps),
            )
        }
        for mode in totals:
            totals[mode] += estimate[mode]
        emit(
            {
                "model": name,
                "layer": layer,
                "units": units,
                "units_measured": measured,
                "canvas": unit_canvas(loaded.model, layer, loaded.input_size).side,
                "unit_s_per_step": round(per_step["unit"], 4),
                "unit_fast_s_per_step": round(per_step["unit_fast"], 4),
                "full_s_per_step": round(per_step["full"], 4),
                "unit_stage_s_est": round(estimate["unit"], 1),
                "unit_fast_stage_s_est": round(estimate["unit_fast"], 1),
                "full_stage_s_est": round(estimate["full"], 1),
                "speedup": round(estimate["full"] / estimate["unit"], 1),
                "speedup_fast": round(estimate["full"] / estimate["unit_fast"], 1),
                "method": _method(k, unit_steps, full_steps, units, measured),
            }
        )
    emit(
        {
            "model": name,
            "layer": "total",
            "unit_stage_s_est": round(totals["unit"], 1),
            "unit_fast_stage_s_est": round(totals["unit_fast"], 1),
            "full_stage_s_est": round(totals["full"], 1),
            "speedup": round(totals["full"] / totals["unit"], 1),
            "speedup_fast": round(totals["full"] / totals["unit_fast"], 1),
            "method": f"both modes extrapolated from {k} steps per layer; excludes class models "
            "and PNG writing (the same in both modes)",
        }
    )


def _method(k: int, unit_steps: int, full_steps: int, units: int, measured: int) -> str:
    said = (
        f"extrapolated from {k} steps: unit mode to {unit_steps} steps at lr {UNIT_LR}, "
        f"full mode to {full_steps} steps (full mode not run to the end)"
    )
    if measured < units:
        said += f"; measured on {measured} of {units} units, scaled linearly"
    return said


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="alexnet,resnet18")
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument(
        "--synthesis-steps", type=int, default=None, help="default: each mode's own"
    )
    parser.add_argument("--out", type=Path, default=None, help="keep the atlases in DIR/<model>")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
    parser.add_argument("--skip-synthesis-comparison", action="store_true")
    parser.add_argument("--compare-steps", type=int, default=3)
    parser.add_argument("--max-units", type=int, default=128)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args()
    args.stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stages {unknown}; stages are {', '.join(STAGES)}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        photos = scratch / "photos"
        make_photos(photos, args.photos)
        for name in args.models.split(","):
            started = time.perf_counter()
            loaded = load(name, scratch)
            emit(
                {"model": name, "stage": "load", "seconds": round(time.perf_counter() - started, 2)}
            )
            out = (args.out or scratch / "atlas") / name
            if args.stages:
                run_stages(name, loaded, photos, out, args)
            if not args.skip_synthesis_comparison:
                compare_synthesis(name, loaded, args)


if __name__ == "__main__":
    main()
