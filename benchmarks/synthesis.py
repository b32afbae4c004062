"""Synthesis speed: convlens's `lucid` preset next to Lucent's `render_vis`, on the same model
(torchvision alexnet, random init), objective (mean of channel 5 of features.8), image (128x128
Fourier image with decorrelated colour, upsampled to 224), transforms (Lucid's standard set) and
optimiser (Adam 0.05), measured in one run. Prints one JSON line.

Target (issue 6): convlens steps/s >= 1.0x Lucent's. Lucent is a benchmark extra
(pip install -e '.[benchmark]'); it needs kornia, whose newer releases moved two functions
Lucent calls, so they are aliased here.
Run: python benchmarks/synthesis.py [--steps 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import kornia
import torch
import torchvision

from convlens.synthesis import synthesize

kornia.get_rotation_matrix2d = kornia.geometry.transform.get_rotation_matrix2d
kornia.warp_affine = kornia.geometry.transform.warp_affine

from lucent.optvis import param, render  # noqa: E402  (after the kornia aliases)

LAYER, CHANNEL, SIZE = "features.8", 5, 128


def lucent_seconds(model: torch.nn.Module, steps: int) -> float:
    torch.manual_seed(0)
    started = time.perf_counter()
    render.render_vis(
        model,
        f"{LAYER.replace('.', '_')}:{CHANNEL}",
        lambda: param.image(SIZE, fft=True, decorrelate=True),
        thresholds=(steps,),
        progress=False,
        show_image=False,
    )
    return time.perf_counter() - started


def convlens_seconds(model: torch.nn.Module, steps: int) -> float:
    started = time.perf_counter()
    synthesize(model, f"{LAYER}:{CHANNEL}", preset="lucid", steps=steps, size=SIZE)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    lucent_seconds(model, 2)  # warm-up
    convlens_seconds(model, 2)
    lucent, ours = [], []
    for _ in range(args.repeats):
        lucent.append(lucent_seconds(model, args.steps))
        ours.append(convlens_seconds(model, args.steps))
    lucent_rate = args.steps / statistics.median(lucent)
    our_rate = args.steps / statistics.median(ours)
    print(
        json.dumps(
            {
                "model": "alexnet",
                "objective": f"{LAYER}:{CHANNEL}",
                "size": SIZE,
                "steps": args.steps,
                "lucent_steps_per_s": round(lucent_rate, 2),
                "convlens_steps_per_s": round(our_rate, 2),
                "speedup": round(our_rate / lucent_rate, 2),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
