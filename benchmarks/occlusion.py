"""Occlusion: convlens producing every Fig. 7 map (target probability, most probable class, the
strongest feature map's activation, sensitivity) next to Captum's `Occlusion` (one class's
attribution) at its fastest `perturbations_per_eval`, on the same image, window 32, stride 8,
torchvision models (random init) at 224x224. Prints one JSON line per model.

Each measurement runs in a fresh process so its peak memory (RSS growth during the call) is its
own. Targets (issue 5): exact mode >= 1.25x faster than Captum's best, fast mode >= 2x.
Captum is a benchmark extra: pip install -e '.[benchmark]'.
Run: python benchmarks/occlusion.py [--models alexnet,resnet18] [--per-eval 4,8,16,64]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from _spawn import in_fresh_process

WINDOW, STRIDE, SIZE = 32, 8, 224
LAST_CONV = {"alexnet": "features.11", "resnet18": "layer4", "vgg16": "features.29"}


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _setup(name: str):
    import torch
    import torchvision
    from skimage import data

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    weights = torchvision.models.get_model_weights(name).DEFAULT
    image = weights.transforms()(torch.from_numpy(data.chelsea()).permute(2, 0, 1))
    return model, image


def _run(job: tuple[str, str, int], queue) -> None:
    """One measurement in this (fresh) process: seconds and peak RSS growth in MB."""
    import torch

    name, tool, per_eval = job
    model, image = _setup(name)
    with torch.inference_mode():
        target = int(model(image[None]).argmax())
    before = _rss_mb()
    started = time.perf_counter()
    if tool == "captum":
        from captum.attr import Occlusion

        def probabilities(x: torch.Tensor) -> torch.Tensor:
            return model(x).softmax(dim=1)

        Occlusion(probabilities).attribute(
            image[None],
            sliding_window_shapes=(3, WINDOW, WINDOW),
            strides=(3, STRIDE, STRIDE),
            target=target,
            baselines=0.0,
            perturbations_per_eval=per_eval,
        )
    else:
        from convlens import occlusion

        occlusion(
            model,
            image,
            target,
            window=WINDOW,
            stride=STRIDE,
            layer=LAST_CONV.get(name),
            fast=tool == "convlens-fast",
        )
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"seconds": round(seconds, 2), "peak_mb": round(max(peak - before, 0.0), 1)})


def measure(job: tuple[str, str, int]) -> dict:
    return in_fresh_process(_run, job)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="alexnet,resnet18")
    parser.add_argument("--per-eval", default="4,8,16,64")
    args = parser.parse_args()
    for name in args.models.split(","):
        captum = {
            per_eval: measure((name, "captum", per_eval))
            for per_eval in map(int, args.per_eval.split(","))
        }
        best_per_eval = min(captum, key=lambda p: captum[p]["seconds"])
        best = captum[best_per_eval]
        exact = measure((name, "convlens", 0))
        fast = measure((name, "convlens-fast", 0))
        positions = ((SIZE - WINDOW) // STRIDE + 1) ** 2
        print(
            json.dumps(
                {
                    "model": name,
                    "positions": positions,
                    "captum_seconds_by_per_eval": {p: r["seconds"] for p, r in captum.items()},
                    "captum_best": {"per_eval": best_per_eval, **best},
                    "convlens_exact": exact,
                    "convlens_fast": fast,
                    "exact_speedup": round(best["seconds"] / exact["seconds"], 2),
                    "fast_speedup": round(best["seconds"] / fast["seconds"], 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
