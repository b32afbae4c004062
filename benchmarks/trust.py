"""Trust: the whole `convlens trust` computation on the trained built-in model (zfnet-fashion,
the first --images Fashion-MNIST test images, their labels as targets, `TRUST_METHODS`, --steps
deletion and insertion steps): `assess` plus `save_trust` into a temporary folder, timed once.
Then, in the same run, each part timed by calling the function `assess` calls: every method's
maps once (`convlens.attribution.METHODS`), the reference maps, the cascading randomisation
test, deletion and insertion of every map (methods and references, one `faithfulness` call: the
image and the two baselines, every curve's first and last step, go through once), and their
soft masks. The parts are measured after the whole run, on the same inputs, so their sum is
close to it but not equal (the figures and files are `save_seconds`, outside every part).

Deletion and insertion are then checked against a naive loop written here from the definition
in `convlens.trust.faithfulness`'s docstring, on the first --naive-images images and every map:
pixels ranked by Python's `sorted` (key: minus the attribution summed over channels, then the
flat index), after step i the top round(i * H * W / steps) pixels replaced by the baseline
(deletion) or copied from the image into it (insertion), one forward per step and image (batch
of 1, `torch.no_grad()`), the target's softmax probability. Both sides build their baselines
with `make_baseline` (deletion: 0, insertion: "blur", as `assess` uses them). `agrees`: the
largest absolute difference between the curves is below 1e-5; `ratio` = naive seconds /
convlens seconds on the same images and maps.

Prints one JSON line for the whole run (with its breakdown) and one for the naive comparison,
each with torch's thread count (its default unless OMP_NUM_THREADS is set) and the load average.
When other work keeps the 2 cores busy, two threads can be several times slower than one (a
forward of 64 images: 0.23-0.28 s against 0.03 s at a load average of 4.5); then run with
OMP_NUM_THREADS=1.
Targets: the whole run of 200 images under 180 s on this machine; convlens's deletion and
insertion >= 5x faster than the naive loop, with equal curves.
Run: python benchmarks/trust.py [--images 200] [--naive-images 20] [--steps 32] [--no-save]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import convlens
from convlens.attribution import METHODS
from convlens.attribution.integrated import make_baseline
from convlens.data.select import take
from convlens.report.results import save_trust
from convlens.trust.assess import TRUST_METHODS, assess
from convlens.trust.faithfulness import faithfulness, soft_mask
from convlens.trust.randomisation import randomisation_test
from convlens.trust.reference import reference_maps

TARGET_SECONDS = 180
TARGET_RATIO = 5.0
TOLERANCE = 1e-5
BASELINES = {"deletion": 0.0, "insertion": "blur"}  # the defaults `assess` relies on


def timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """`function(*args, **kwargs)` and the seconds it took."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(value, 2) for value in os.getloadavg()]


def load_inputs(count: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The cached trained built-in model, the first `count` Fashion-MNIST test images and
    their labels."""
    loaded = convlens.load_model("zfnet-fashion")
    data = convlens.data.FashionMNIST("test", transform=loaded.transform)
    images, labels = take(data, list(range(min(count, len(data)))))
    return loaded.model, images, torch.tensor(labels)


def whole_run(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, save: bool
) -> dict[str, float]:
    """Seconds of `assess` and of `save_trust` (0 without `save`), as `convlens trust` runs
    them."""
    found, assess_s = timed(assess, model, images, labels, TRUST_METHODS, steps=steps)
    save_s = 0.0
    if save:
        with tempfile.TemporaryDirectory() as folder:
            _, save_s = timed(save_trust, found, Path(folder))
    return {"assess_seconds": assess_s, "save_seconds": save_s}


def all_maps(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Every method's maps and the reference maps, as `assess` makes them, and the seconds of
    each method and of the references."""
    maps, seconds = {}, {}
    for name in TRUST_METHODS:
        maps[name], seconds[name] = timed(METHODS[name], model, images, labels)
    references, seconds["references"] = timed(reference_maps, images, 0)
    return maps | references, seconds


def curves(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    maps: dict[str, torch.Tensor],
    steps: int,
) -> dict[tuple[str, str], torch.Tensor]:
    """convlens's deletion and insertion curves (N, steps + 1) per (map, kind), as `assess`
    makes them: one `faithfulness` call for every map and both kinds."""
    found = faithfulness(model, images, labels, maps, steps)
    return {(name, kind): found[kind][name].curve for kind in found for name in found[kind]}


def part_times(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Seconds of each part of `assess`, called one by one, and the maps."""
    maps, map_seconds = all_maps(model, images, labels)
    _, randomisation_s = timed(randomisation_test, model, images, labels, list(TRUST_METHODS))
    _, faithfulness_s = timed(curves, model, images, labels, maps, steps)
    started = time.perf_counter()
    for attribution in maps.values():
        soft_mask(model, images, labels, attribution)
    soft_mask_s = time.perf_counter() - started
    seconds = {f"maps_{name}": value for name, value in map_seconds.items()}
    seconds |= {
        "randomisation": randomisation_s,
        "deletion_insertion": faithfulness_s,
        "soft_mask": soft_mask_s,
    }
    return seconds, maps


def naive_curve(
    model: nn.Module,
    image: torch.Tensor,
    label: int,
    attribution: torch.Tensor,
    kind: str,
    steps: int,
) -> torch.Tensor:
    """(steps + 1,) one image's deletion or insertion curve, one forward per step, straight
    from the definition."""
    scores = attribution.float()
    scores = (scores.sum(0) if scores.dim() == 3 else scores).flatten().tolist()
    order = sorted(range(len(scores)), key=lambda pixel: (-scores[pixel], pixel))
    baseline = make_baseline(image[None], BASELINES[kind])[0]
    probabilities = []
    for step in range(steps + 1):
        chosen = torch.zeros(len(scores), dtype=torch.bool)
        chosen[order[: round(step * len(scores) / steps)]] = True
        chosen = chosen.view(image.shape[-2:])
        if kind == "deletion":
            perturbed = torch.where(chosen, baseline, image)
        else:
            perturbed = torch.where(chosen, image, baseline)
        with torch.no_grad():
            probabilities.append(float(model(perturbed[None]).softmax(1)[0, label]))
    return torch.tensor(probabilities)


def naive_curves(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    maps: dict[str, torch.Tensor],
    steps: int,
) -> dict[tuple[str, str], torch.Tensor]:
    """The naive loop's curves (N, steps + 1) per (map, kind)."""
    return {
        (name, kind): torch.stack(
            [
                naive_curve(model, image, int(label), map_, kind, steps)
                for image, label, map_ in zip(images, labels, attribution)
            ]
        )
        for name, attribution in maps.items()
        for kind in BASELINES
    }


def naive_comparison(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    maps: dict[str, torch.Tensor],
    steps: int,
) -> dict[str, Any]:
    """convlens's deletion and insertion against the naive loop on the same images and maps:
    seconds of each, the ratio and the largest curve difference (and where it is)."""
    ours, ours_s = timed(curves, model, images, labels, maps, steps)
    naive, naive_s = timed(naive_curves, model, images, labels, maps, steps)
    differences = {key: float((ours[key] - naive[key]).abs().max()) for key in ours}
    worst = max(differences, key=differences.__getitem__)
    return {
        "case": "naive",
        "images": len(images),
        "maps": list(maps),
        "steps": steps,
        "forwards": len(images) * len(differences) * (steps + 1),
        "convlens_seconds": round(ours_s, 2),
        "naive_seconds": round(naive_s, 2),
        "ratio": round(naive_s / ours_s, 2),
        "target_ratio": TARGET_RATIO,
        "meets_target": naive_s / ours_s >= TARGET_RATIO,
        "max_abs_difference": differences[worst],
        "worst": "/".join(worst),
        "agrees": differences[worst] < TOLERANCE,
        "load_average": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--naive-images", type=int, default=20)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    model, images, labels = load_inputs(args.images)
    whole = whole_run(model, images, labels, args.steps, not args.no_save)
    total = whole["assess_seconds"] + whole["save_seconds"]
    parts, maps = part_times(model, images, labels, args.steps)
    print(
        json.dumps(
            {
                "case": "whole",
                "images": len(images),
                "methods": list(TRUST_METHODS),
                "steps": args.steps,
                "total_seconds": round(total, 2),
                **{key: round(value, 2) for key, value in whole.items()},
                "parts_seconds": {key: round(value, 2) for key, value in parts.items()},
                "target_seconds": TARGET_SECONDS,
                "meets_target": total < TARGET_SECONDS,
                "threads": torch.get_num_threads(),
                "load_average": load_average(),
            }
        ),
        flush=True,
    )
    count = min(args.naive_images, len(images))
    subset = {name: attribution[:count] for name, attribution in maps.items()}
    comparison = naive_comparison(model, images[:count], labels[:count], subset, args.steps)
    print(json.dumps(comparison), flush=True)


if __name__ == "__main__":
    main()
