"""Commands that reproduce the paper's analyses: feature evolution over training (Fig. 4), the
first-layer diagnosis (Fig. 6), invariance (Fig. 5) and correspondence (Table 1)."""

from __future__ import annotations

import argparse

from convlens._errors import ConvlensError
from convlens._io import read_checkpoint_meta
from convlens._paths import epoch_checkpoints
from convlens.analysis.correspondence import correspondence
from convlens.analysis.evolution import (
    evolution,
)
from convlens.analysis.filters import first_layer
from convlens.analysis.invariance import IDENTITY, invariance
from convlens.cli._inputs import load, load_spec, open_checked
from convlens.cli._options import (
    boxes,
    choices_list,
    data_option,
    indices_option,
    layers_option,
    model_options,
    names,
    non_negative_ints,
    out_option,
    positive_float,
    positive_int,
)
from convlens.cli._registry import command
from convlens.data.select import take, with_transform
from convlens.models.layers import default_layers
from convlens.models.zoo import BUILTIN_MODELS
from convlens.report.results import save_diagnosis, save_evolution, save_invariance
from convlens.training import TrainConfig, ensure_trained, train


def _evolve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="zfnet-fashion", help="built-in model whose checkpoints are read"
    )
    parser.add_argument(
        "--checkpoints",
        type=names,
        help="comma-separated weight files (default: the built-in model's epoch checkpoints)",
    )
    data_option(parser)
    layers_option(parser)
    parser.add_argument(
        "--channels", type=non_negative_ints, help="comma-separated channels (default: 0-7)"
    )
    out_option("convlens-evolve")(parser)


def _default_checkpoints(model: str) -> list[str]:
    """The epoch checkpoints of built-in `model` in the user cache (trained once if missing)."""
    if model not in BUILTIN_MODELS:
        raise ConvlensError(f"--model {model} is not a built-in model; give its --checkpoints")
    folder = ensure_trained(model).parent
    found = epoch_checkpoints(folder)
    if not found:
        raise ConvlensError(f"no epoch checkpoints of {model} in {folder}; give --checkpoints")
    return found


@command(
    "evolve",
    "feature evolution over training: each map's strongest activation per checkpoint (Fig. 4)",
    _evolve_arguments,
)
def _evolve(args: argparse.Namespace) -> None:
    data = open_checked(args.data)
    checkpoints = args.checkpoints or _default_checkpoints(args.model)
    loaded = load_spec(args.model, checkpoints[-1])
    data = with_transform(data, loaded.transform)
    layers = args.layers or default_layers(loaded.model)
    evo = evolution(checkpoints, data, layers, args.channels, spec=args.model, progress=True)
    written = save_evolution(evo, args.out)
    print(f"wrote {len(written)} evolution figures to {args.out}")


def _diagnose_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=positive_int, default=2)
    parser.add_argument("--train-subset", type=positive_int, default=20000)
    parser.add_argument("--lr", type=positive_float, default=0.05)
    data_option(parser, "data for dead filters (test)")
    out_option("convlens-diagnose")(parser)


@command(
    "diagnose",
    "first-layer diagnosis (Fig. 6): train with and without feature scale clipping, and a coarse first layer",
    _diagnose_arguments,
)
def _diagnose(args: argparse.Namespace) -> None:
    data = open_checked(args.data)
    short = {
        "epochs": args.epochs,
        "train_subset": args.train_subset,
        "lr": args.lr,
        "checkpoint_epochs": (),
    }
    runs = {
        "clipped": TrainConfig(clip_radius=0.1, **short),
        "not clipped": TrainConfig(clip_radius=None, **short),
        "coarse first layer": TrainConfig(model="zfnet-fashion-coarse", **short),
    }
    found = {}
    for name, config in runs.items():
        folder = args.out / name.replace(" ", "-")
        train(config, folder)
        meta = read_checkpoint_meta(folder / "final.safetensors")
        loaded = load_spec(config.model, str(folder / "final.safetensors"))
        first = first_layer(loaded.model, with_transform(data, loaded.transform), progress=True)
        found[name] = (meta, first)
    summary = save_diagnosis(found, args.out)
    for name, row in summary.items():
        print(
            f"{name}: test accuracy {row['test_accuracy']:.4f}, largest first-layer filter "
            f"{row['largest_share']:.3f} of the total RMS, {len(row['dead_filters'])} dead"
        )
    print(f"wrote {args.out / 'diagnosis.png'}")


def _invariance_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    data_option(parser)
    indices_option(parser, "images (default: 0-4)", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--transforms",
        type=choices_list(list(IDENTITY)),
        default=list(IDENTITY),
        help="which sweeps to run",
    )
    layers_option(parser, "a low and a high layer (default: the first and last conv output)")
    out_option("convlens-invariance")(parser)


@command(
    "invariance",
    "feature distance and true-class probability under translation, scaling, rotation (Fig. 5)",
    _invariance_arguments,
)
def _invariance(args: argparse.Namespace) -> None:
    data = open_checked(args.data, args.indices)
    loaded = load(args)
    images, labels = take(with_transform(data, loaded.transform), args.indices)
    shown = default_layers(loaded.model)
    layers = args.layers or [shown[0], shown[-1]]
    for transform in args.transforms:
        result = invariance(loaded.model, images, labels, layers, transform)
        print(f"wrote {save_invariance(result, args.out)}")


def _correspondence_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    data_option(parser)
    indices_option(parser, "the images, comma-separated", required=True)
    parser.add_argument(
        "--boxes",
        type=boxes,
        required=True,
        help="the part in each image as TOP,LEFT,BOTTOM,RIGHT; one box for all or one per image "
        "separated by ';'",
    )
    layers_option(parser)
    parser.add_argument("--draws", type=positive_int, default=20, help="random masks per layer")


@command(
    "correspondence",
    "do occlusions of the same part change the code consistently? (Table 1)",
    _correspondence_arguments,
)
def _correspondence(args: argparse.Namespace) -> None:
    parts = args.boxes * len(args.indices) if len(args.boxes) == 1 else args.boxes
    if len(parts) != len(args.indices):
        raise ConvlensError(
            f"--boxes gives {len(parts)} boxes for {len(args.indices)} --indices; "
            "give one box for all images or one per image"
        )
    data = open_checked(args.data, args.indices)
    loaded = load(args)
    images, _ = take(with_transform(data, loaded.transform), args.indices)
    print(f"{'layer':16s} {'part':>8s} {'random (mean +- std)':>24s}")
    for layer in args.layers or default_layers(loaded.model):
        result = correspondence(loaded.model, images, parts, layer, draws=args.draws)
        print(
            f"{layer:16s} {result.delta:8.4f} {result.random_mean:12.4f} +- {result.random_std:.4f}"
        )
