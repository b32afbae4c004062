"""Scan throughput next to a plain forward of the same model, measured in one run; and the time
to render the Fig. 2 figures (patches + deconvnet projections) of every channel of one layer.
Prints one JSON line per model, then one for rendering.

Target (issue 4): scan images/s >= 1.2x the plain forward (`torch.inference_mode`, default
memory format, same batch size), with exact results. The scan records every conv layer.
Run: python benchmarks/scan.py [--models alexnet,vgg16,resnet18] [--images 128] [--batch 16]
[--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import TensorDataset

from convlens.models.layers import default_layers, receptive_field
from convlens.models.loading import LoadedModel
from convlens.models.preprocess import Preprocess
from convlens.models.zoo import BUILTIN_MODELS, FASHION_CLASSES
from convlens.report import write_png
from convlens.report.figures import top_examples_figure
from convlens.scan import scan, top_examples


def plain_forward(model: torch.nn.Module, images: torch.Tensor, batch: int) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            model(images[start : start + batch])
    return time.perf_counter() - started


def timed_scan(model: torch.nn.Module, data: TensorDataset, batch: int) -> float:
    started = time.perf_counter()
    scan(model, data, batch_size=batch)
    return time.perf_counter() - started


def measure(name: str, count: int, batch: int, size: int, repeats: int) -> dict:
    """Plain forward and scan timed alternately `repeats` times; the median of each is kept, so
    a burst of load on the machine hits both sides alike."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    images = torch.randn(count, 3, size, size)
    data = TensorDataset(images)
    plain_forward(model, images[:batch], batch)  # warm-up
    scan(model, TensorDataset(images[:batch]), batch_size=batch)
    plain, scanned = [], []
    for _ in range(repeats):
        plain.append(plain_forward(model, images, batch))
        scanned.append(timed_scan(model, data, batch))
    plain_s, scan_s = statistics.median(plain), statistics.median(scanned)
    return {
        "model": name,
        "layers": len(default_layers(model)),
        "images": count,
        "batch": batch,
        "repeats": repeats,
        "plain_forward_images_per_s": round(count / plain_s, 2),
        "scan_images_per_s": round(count / scan_s, 2),
        "speedup": round(plain_s / scan_s, 3),
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
    top, field = result[layer], receptive_field(model, layer, entry.input_size)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        written = []
        for channel in range(top.values.shape[0]):
            examples = top_examples(model, data, top, layer, channel, field)
            figure = top_examples_figure(loaded, examples)
            written.append(write_png(Path(out) / f"unit-{channel:04d}.png", figure))
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
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name in args.models.split(","):
        print(
            json.dumps(measure(name, args.images, args.batch, args.size, args.repeats)), flush=True
        )
    print(json.dumps(render_time(512)), flush=True)


if __name__ == "__main__":
    main()
