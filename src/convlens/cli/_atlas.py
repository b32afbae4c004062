"""The atlas commands: `report` for any model and data, `demo` for the built-in model."""

from __future__ import annotations

import argparse
import time

from torch.utils.data import Dataset

from convlens._paths import default_model_dir, epoch_checkpoints
from convlens.atlas import SKIPPABLE, AtlasConfig, write_atlas
from convlens.atlas.site import PRECISIONS, SYNTHESIS_MODES
from convlens.cli._inputs import load, load_spec, open_checked
from convlens.cli._options import (
    choices_list,
    data_option,
    device_option,
    layers_option,
    model_options,
    names,
    out_option,
    positive_int,
)
from convlens.cli._registry import command
from convlens.data.select import with_transform
from convlens.distributed import sharded
from convlens.models.loading import LoadedModel
from convlens.models.zoo import BUILTIN_MODELS


def _report_options(parser: argparse.ArgumentParser) -> None:
    data_option(parser)
    layers_option(parser)
    parser.add_argument("--images", type=positive_int, default=10, help="sample images with pages")
    parser.add_argument(
        "--skip",
        type=choices_list(SKIPPABLE, empty=True),
        default=[],
        help=f"comma-separated stages to leave out: {', '.join(SKIPPABLE)}",
    )
    parser.add_argument(
        "--checkpoints",
        type=names,
        help="weight files for feature evolution (default: the built-in model's epochs)",
    )
    parser.add_argument(
        "--synthesis",
        choices=SYNTHESIS_MODES,
        default="unit",
        help="unit: each unit's image covers its receptive field, all units of a layer in one "
        "batch (fast); full: an input-sized image per channel (slow without a GPU)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the model's arithmetic while images are synthesised: auto is bfloat16 where the "
        "device computes it in hardware (faster, the same-looking images), else float32",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the finished stages of an earlier run with the same settings, and the "
        "finished units of an interrupted stage",
    )


def _write_atlas(loaded: LoadedModel, data: Dataset, args: argparse.Namespace) -> None:
    started = time.perf_counter()
    if args.checkpoints:
        checkpoints = args.checkpoints
    elif loaded.spec in BUILTIN_MODELS and getattr(args, "weights", None) is None:
        checkpoints = epoch_checkpoints(default_model_dir(loaded.spec))
    else:
        checkpoints = []
    config = AtlasConfig(
        layers=args.layers,
        images=args.images,
        skip=args.skip,
        checkpoints=checkpoints,
        synthesis=args.synthesis,
        data_description=args.data,
        precision=args.precision,
    )
    data = with_transform(data, loaded.transform)
    with sharded() as (rank, _):  # under torchrun every rank builds its share
        page = write_atlas(loaded, data, args.out, config, resume=args.resume)
    if rank != 0:
        return
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 2**20
    print(
        f"wrote {page} ({size:.1f} MB) in {time.perf_counter() - started:.0f} s; open it in a browser"
    )


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    _report_options(parser)
    out_option("atlas")(parser)


@command(
    "report",
    "write the atlas: a browsable offline HTML site of everything for a model and data",
    _report_arguments,
)
def _report(args: argparse.Namespace) -> None:
    data = open_checked(args.data)
    _write_atlas(load(args), data, args)


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    _report_options(parser)
    device_option(parser)
    out_option("convlens-demo")(parser)


@command("demo", "train (or reuse) the built-in zfnet-fashion and write its atlas", _demo_arguments)
def _demo(args: argparse.Namespace) -> None:
    data = open_checked(args.data)
    _write_atlas(load_spec("zfnet-fashion", device=args.device), data, args)
