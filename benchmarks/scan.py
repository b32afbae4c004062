"""Scan throughput next to a plain forward of the same model, measured in one run; and the time
to render the Fig. 2 figures (patches + deconvnet projections) of every channel of one layer.
Prints one JSON line per model, then one for rendering.

Target (issue 4): scan images/s >= 1.2x the plain forward (`torch.inference_mode`, default
memory format, same batch size), with exact results. The scan records every conv layer.
Run: python benchmarks/scan.py [--models alexnet,vgg16,resnet18] [--images 64] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import TensorDataset

from convlens.models.loading import LoadedModel
from convlens.models.preprocess import Preprocess
from convlens.models.zoo import BUILTIN_MODELS, FASHION_CLASSES
from convlens.pipelines import write_top_examples
from convlens.scan import default_layers, scan


def plain_forward(model: torch.nn.Module, images: torch.Tensor, batch: int) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            model(images[start : start + batch])
    return time.perf_counter() - started


def measure(name: str, count: int, batch: int, size: int) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    images = torch.randn(count, 3, size, size)
    data = TensorDataset(images)
    plain_forward(model, images[:batch], batch)  # warm-up
    scan(model, TensorDataset(images[:batch]), batch_size=batch)
    plain = plain_forward(model, images, batch)
    started = time.perf_counter()
    scan(model, data, batch_size=batch)
    scanned = time.perf_counter() - started
    return {
        "model": name,
        "layers": len(default_layers(model)),
        "images": count,
        "batch": batch,
        "plain_forward_images_per_s": round(count / plain, 2),
        "scan_images_per_s": round(count / scanned, 2),
        "speedup": round(plain / scanned, 3),
    }


def render_time(images: int) -> dict:
    torch.manual_seed(0)
    entry = BUILTIN_MODELS["zfnet-fashion"]
    model = entry.build().eval()
    loaded = LoadedModel(
        model,
        Preprocess(1, (28, 28), entry.mean, entry.std),
        FASHION_CLASSES,
        entry.input_size,
        "zfnet-fashion",
    )
    data = TensorDataset(torch.randn(images, 1, 28, 28))
    layer = "features.13"
    result = scan(model, data, [layer])
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        written = write_top_examples(loaded, data, result, Path(out), progress=False)
        took = time.perf_counter() - started
    return {
        "render_layer": f"zfnet-fashion {layer}",
        "channels": len(written),
        "seconds": round(took, 2),
        "seconds_per_channel": round(took / len(written), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="alexnet,vgg16,resnet18")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    for name in args.models.split(","):
        print(json.dumps(measure(name, args.images, args.batch, args.size)), flush=True)
    print(json.dumps(render_time(512)), flush=True)


if __name__ == "__main__":
    main()
