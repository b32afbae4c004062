"""Commands that pass over a whole dataset: the top-k scan (resumable, sharded under torchrun)
with its Fig. 2 figures, and the dead-unit count."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import Dataset

from convlens import __version__
from convlens._io import safe_name
from convlens._progress import tqdm
from convlens.analysis.filters import dead_units
from convlens.cli._inputs import load, open_checked
from convlens.cli._options import (
    data_option,
    layers_option,
    model_options,
    out_option,
    positive_int,
    probability,
)
from convlens.cli._registry import command
from convlens.data.select import with_transform
from convlens.distributed import gather_shards, sharded
from convlens.models.layers import default_layers, receptive_field
from convlens.models.loading import LoadedModel
from convlens.report import figures, write_png
from convlens.report.results import save_dead_units
from convlens.scan import scan, top_examples
from convlens.topk import ScanResult

WHOLE_DATA = "dataset spec (default: fashion-mnist, the test split)"
RECTIFIED = "comma-separated layers (default: every conv layer's rectified output)"


def _scan_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    data_option(parser, WHOLE_DATA)
    layers_option(parser, RECTIFIED)
    parser.add_argument(
        "--k", type=positive_int, default=9, help="images per feature map (default: 9)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=20,
        help="batches between checkpoints of the running state",
    )
    parser.add_argument(
        "--render", action="store_true", help="also write the Fig. 2 figure of every channel"
    )
    out_option("convlens-scan")(parser)


def _top_examples(loaded: LoadedModel, data: Dataset, result: ScanResult, out: Path) -> list:
    """The Fig. 2 figure of every channel of every scanned layer, `<layer>/unit-NNNN.png`."""
    written = []
    for layer in result.layers:
        top = result[layer]
        field = receptive_field(loaded.model, layer, loaded.input_size)
        for channel in tqdm(range(top.values.shape[0]), desc=f"render {layer}"):
            examples = top_examples(loaded.model, data, top, layer, channel, field)
            figure = figures.top_examples_figure(examples)
            written.append(write_png(out / safe_name(layer) / f"unit-{channel:04d}.png", figure))
    return written


@command(
    "scan",
    "find the top-k dataset images of every feature map (resumable; shards under torchrun)",
    _scan_arguments,
)
def _scan(args: argparse.Namespace) -> None:
    data = open_checked(args.data)
    loaded = load(args)
    data = with_transform(data, loaded.transform)
    description = {"model": loaded.spec, "weights": loaded.weights, "data": args.data}
    with sharded() as (rank, world):
        result = scan(
            loaded.model,
            data,
            args.layers,
            args.k,
            batch_size=args.batch_size,
            checkpoint=args.out / f"scan-state-{rank}-of-{world}.safetensors",
            checkpoint_every=args.checkpoint_every,
            shard=(rank, world),
            description={**description, "convlens": __version__, "torch": torch.__version__},
            progress=rank == 0,
        )
        if world > 1:
            result = gather_shards(result, args.k)
    if rank != 0:
        return
    path = result.save(args.out / "scan.safetensors")
    print(
        f"scanned {result.meta['dataset_size']} images ({len(result.meta['skipped'])} unreadable, skipped) into {path}"
    )
    if args.render:
        written = _top_examples(loaded, data, result, args.out)
        print(f"wrote {len(written)} Fig. 2 figures under {args.out}")


def _dead_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    data_option(parser, WHOLE_DATA)
    layers_option(parser, RECTIFIED)
    parser.add_argument(
        "--threshold",
        type=probability,
        default=0.99,
        help="dead when the whole map is zero on more than this fraction of images",
    )
    out_option("convlens-dead")(parser)


@command("dead", "count dead units (maps that are all zero on almost every image)", _dead_arguments)
def _dead(args: argparse.Namespace) -> None:
    data = open_checked(args.data)
    loaded = load(args)
    data = with_transform(data, loaded.transform)
    layers = args.layers or default_layers(loaded.model)
    stats = dead_units(loaded.model, data, layers, threshold=args.threshold, progress=True)
    for layer, s in stats.items():
        print(f"{layer}: {s.dead_count}/{len(s.dead)} dead over {s.images} images")
    print(f"wrote {save_dead_units(stats, args.out)}")
