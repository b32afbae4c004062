"""The synthesised image of every unit of a layer, for the atlas: sized to the unit (`"unit"`
mode, `synthesize_units`) or the whole input (`"full"`), optimised in chunks that bound memory
(each chunk's images are those of the whole layer's batch, so a build resumes chunk by chunk),
and an estimate of the time they take, measured before the work starts."""

from __future__ import annotations

import time

from convlens.atlas.site import Job
from convlens.synthesis import Synthesis, channel, synthesize
from convlens.synthesis.units import (
    UNIT_LR,
    UNIT_STEPS,
    budget_chunk,
    synthesize_units,
    unit_canvas,
)

FULL_STEPS = 256
ATLAS_ICON_STEPS = 48
"""Adam steps of the atlas's direction icons (neuron groups, activation atlas cells; at the
unit images' rate): on the built-in network's last conv layer 48 steps reach 91 % of the
objective 96 steps reach, in half the time."""


def steps(job: Job) -> int:
    """The optimisation steps of this atlas's unit images."""
    default = UNIT_STEPS if job.config.synthesis == "unit" else FULL_STEPS
    return job.config.synthesis_steps or default


def side(job: Job, layer: str) -> int:
    """The side of `layer`'s unit images: its unit canvas, or the model's input."""
    size = job.loaded.input_size
    if job.config.synthesis == "unit":
        return unit_canvas(job.loaded.model, layer, size).side
    return min(size[-2:])


def chunks(job: Job, layer: str, count: int) -> list[range]:
    """`layer`'s units 0..count-1 in the chunks optimised at once, within `PIXEL_BUDGET`."""
    size = budget_chunk(side(job, layer))
    return [range(i, min(i + size, count)) for i in range(0, count, size)]


def layer_images(
    job: Job, layer: str, units: range, step_count: int | None = None, progress: bool = True
) -> Synthesis:
    """The images of the consecutive `units` of `layer` (at most a chunk), each the image it
    gets when all of the layer's units are optimised as one batch."""
    count, bars = step_count or steps(job), progress and job.progress and job.rank == 0
    if job.config.synthesis == "unit":
        return synthesize_units(
            job.loaded,
            layer,
            units,
            steps=count,
            lr=UNIT_LR,
            progress=bars,
            fast=job.fast,
            offset=units.start,
        )[0]
    return synthesize(
        job.loaded,
        channel(layer, list(units)),
        steps=count,
        n=len(units),
        offset=units.start,
        progress=bars,
        fast=job.fast,
    )


def estimate_seconds(job: Job, work: dict[str, int]) -> float:
    """Seconds to make the images of `work` (layer → unit count): two steps of one chunk of
    each layer timed, scaled to the units and steps (the first step's warm-up included, so it
    leans high)."""
    total = 0.0
    for layer, count in work.items():
        units = chunks(job, layer, count)[0]
        started = time.perf_counter()
        layer_images(job, layer, units, step_count=2, progress=False)
        per_step = (time.perf_counter() - started) / 2
        total += per_step * steps(job) * count / len(units)
    return total


def announce(job: Job, work: dict[str, int]) -> str:
    """The line printed before the unit images are made: how many, how, and about how long."""
    minutes = estimate_seconds(job, work) / 60
    return (
        f"synthesis: {sum(work.values())} unit images in {len(work)} "
        f"layer{'s' if len(work) != 1 else ''}, "
        f"{job.config.synthesis} mode, {steps(job)} steps: about {minutes:.1f} min "
        "(two steps per layer timed)"
    )
