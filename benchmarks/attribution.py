"""Images/s of each attribution method next to a plain forward + input-gradient backward of the
same model, measured in one run. Prints one JSON line per model.

Target (issue 3): no method slower than 1.2x plain autograd (`ratio` = method time / plain time).
Run: python benchmarks/attribution.py [--models alexnet,vgg16,resnet18] [--batch 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision

from convlens.attribution import METHODS


def plain(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    x = images.detach().requires_grad_(True)
    scores = model(x)[torch.arange(len(x)), targets].sum()
    return torch.autograd.grad(scores, x)[0]


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure(name: str, batch: int, size: int, repeats: int) -> dict:
    """Seconds of plain autograd and of every method on one random-init torchvision model."""
    model = torchvision.models.get_model(name, weights=None).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    images = torch.randn(batch, 3, size, size)
    targets = torch.randint(0, 1000, (batch,))
    base = seconds(lambda: plain(model, images, targets), repeats)
    row = {"model": name, "batch": batch, "plain_images_per_s": round(batch / base, 2)}
    for method, fn in METHODS.items():
        took = seconds(lambda fn=fn: fn(model, images, targets), repeats)
        row[f"{method}_images_per_s"] = round(batch / took, 2)
        row[f"{method}_ratio"] = round(took / base, 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="alexnet,vgg16,resnet18")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    for name in args.models.split(","):
        print(json.dumps(measure(name, args.batch, args.size, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
