"""Activation atlas of the trained built-in network at its last conv layer (features.13) over the
10,000 Fashion-MNIST test images, each case in a fresh process: seconds of each part (sampling,
t-SNE layout, icons) and the memory the work adds (peak resident set size above the process's
size once the model and data are loaded).

In the same run, two baselines:
- naive: every image's whole features.13 map kept in memory, then one position per image drawn
  from them (what a non-streamed implementation holds); ratio naive / streamed memory;
- growth: only the sampling, through a DataLoader (streamed whole through the reservoir), over
  2,000 and over 10,000 images with the same 1,000 samples: the memory should not grow.

Targets: the whole atlas (grid 20, 10,000 samples, icons) in at most 120 s on 2 cores; the
streamed sampling adds at most a quarter of the naive one's memory; streaming 10,000 images
instead of 2,000 adds less than a quarter of what the 8,000 more images' maps take (a resident
set size moves by several MB between runs, so the growth is compared with what holding the
data would cost, not with zero).
Run: python benchmarks/activation_atlas.py
"""

from __future__ import annotations

import json
import resource
import time

LAYER = "features.13"


def _rss_mb() -> float:
    """The process's peak resident set size so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _case(job: tuple[str, int], queue) -> None:
    """Run one case in this (fresh) process and put its figures on `queue`."""
    import torch
    from torch.utils.data import DataLoader, Subset

    import convlens as cl
    from convlens.analysis import activation_atlas as aa
    from convlens.analysis import activation_samples as sampling
    from convlens.data import FashionMNIST
    from convlens.synthesis.units import UNIT_STEPS

    kind, count = job
    loaded = cl.load_model("zfnet-fashion")
    data = Subset(FashionMNIST("test", transform=loaded.transform), range(count))
    data[0]  # the dataset's arrays are read here, before the baseline
    before = _rss_mb()
    started = time.perf_counter()
    found: dict = {"case": kind, "images": count}
    if kind == "atlas":
        sampled = sampling.sample_activations(loaded.model, data, [LAYER], 10_000)[LAYER]
        found["sampling_s"] = round(time.perf_counter() - started, 2)
        vectors, classes = sampled
        layout_start = time.perf_counter()
        xy = aa.place(vectors)
        atlas = aa._atlas(LAYER, 20, vectors, xy, classes, loaded.card, loaded.transform)
        found["layout_s"] = round(time.perf_counter() - layout_start, 2)
        icons_start = time.perf_counter()
        atlas = aa.with_icons(atlas, loaded.model, UNIT_STEPS, None, 0)
        found["icons_s"] = round(time.perf_counter() - icons_start, 2)
        found |= {"samples": len(vectors), "cells": len(atlas.cells)}
    elif kind == "naive":
        maps = []
        with cl.hooks.capture(loaded.model, [LAYER]) as acts, torch.inference_mode():
            for images, _ in DataLoader(data, batch_size=256):
                loaded.model(images)
                maps.append(acts[LAYER].float())
        whole = torch.cat(maps)  # every map of the dataset
        sampling._one_position(whole, torch.Generator().manual_seed(0))
    else:  # "stream": sampling only, a DataLoader streamed whole through the reservoir
        loader = DataLoader(data, batch_size=256)
        sampling.sample_activations(loaded.model, loader, [LAYER], 1000)
    found["seconds"] = round(time.perf_counter() - started, 2)
    found["added_mb"] = round(_rss_mb() - before, 1)
    queue.put(found)


def main() -> None:
    from _spawn import in_fresh_process

    cases = [("atlas", 10_000), ("naive", 10_000), ("stream", 2_000), ("stream", 10_000)]
    found = {f"{kind}_{count}": in_fresh_process(_case, (kind, count)) for kind, count in cases}
    atlas, naive = found["atlas_10000"], found["naive_10000"]
    streamed = max(found["stream_10000"]["added_mb"], 1.0)
    growth = found["stream_10000"]["added_mb"] - found["stream_2000"]["added_mb"]
    extra_maps = 8_000 * 64 * 7 * 7 * 4 / 2**20  # features.13 of 8,000 more images, float32
    summary = {
        "atlas_seconds": atlas["seconds"],
        "naive_over_streamed_memory": round(naive["added_mb"] / streamed, 2),
        "growth_2000_to_10000_images_mb": round(growth, 1),
        "maps_of_8000_images_mb": round(extra_maps, 1),
    }
    summary["meets_target"] = (
        atlas["seconds"] <= 120
        and summary["naive_over_streamed_memory"] >= 4
        and growth < extra_maps / 4
    )
    print(json.dumps({**summary, "cases": found}), flush=True)


if __name__ == "__main__":
    main()
