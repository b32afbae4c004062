"""Commands about the model itself: the built-in list, training, the layer table, filters."""

from __future__ import annotations

import argparse
from pathlib import Path

from convlens._paths import default_model_dir
from convlens.analysis.filters import conv_weight
from convlens.cli._inputs import load
from convlens.cli._options import (
    InputSize,
    layers_option,
    model_options,
    out_option,
    positive_float,
    positive_int,
    positive_ints,
    seed,
)
from convlens.cli._registry import command
from convlens.models.layers import conv_layers, trace_layers
from convlens.models.zoo import BUILTIN_MODELS
from convlens.report.results import layer_table, save_filters
from convlens.training import TrainConfig, train


@command("models", "list the built-in models")
def _models(args: argparse.Namespace) -> None:
    for entry in BUILTIN_MODELS.values():
        print(f"{entry.name:24s} {entry.description}")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--model", default=defaults.model, choices=sorted(BUILTIN_MODELS))
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    parser.add_argument("--lr", type=positive_float, default=defaults.lr)
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--seed", type=seed, default=defaults.seed)
    parser.add_argument(
        "--clip-radius",
        type=positive_float,
        default=defaults.clip_radius,
        help="feature scale clipping radius (default: 0.1)",
    )
    parser.add_argument("--no-clip", action="store_true", help="turn feature scale clipping off")
    parser.add_argument(
        "--checkpoint-epochs",
        type=positive_ints,
        default=list(defaults.checkpoint_epochs),
        help="epochs to keep a checkpoint of (the final one is always kept)",
    )
    parser.add_argument(
        "--train-subset", type=positive_int, help="train on the first N training images only"
    )
    parser.add_argument(
        "--shuffle-labels",
        action="store_true",
        help="train on randomly permuted labels (the data randomisation test's model; kept in "
        "the cache as <model>-shuffled-labels, load it with --weights <folder>/final.safetensors)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="checkpoint folder (default: the user cache, where load_model finds it)",
    )


@command(
    "train",
    "train a built-in model on Fashion-MNIST (SGD, feature scale clipping, epoch checkpoints)",
    _train_arguments,
)
def _train(args: argparse.Namespace) -> None:
    config = TrainConfig(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        clip_radius=None if args.no_clip else args.clip_radius,
        seed=args.seed,
        checkpoint_epochs=tuple(args.checkpoint_epochs),
        train_subset=args.train_subset,
        shuffle_labels=args.shuffle_labels,
    )
    name = f"{args.model}-shuffled-labels" if args.shuffle_labels else args.model
    out = args.out or default_model_dir(name)
    result = train(
        config,
        out,
        on_epoch=lambda epoch, acc: print(f"epoch {epoch}: test accuracy {acc:.4f}", flush=True),
    )
    print(
        f"trained {args.model} in {result.seconds:.0f} s: test accuracy {result.accuracy[-1]:.4f}; checkpoints in {out}"
    )


def _layers_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser, positional=True)
    parser.add_argument(
        "--input-size",
        type=positive_int,
        nargs="+",
        action=InputSize,
        help="H W of the input (default: the model's)",
    )


@command(
    "layers",
    "print every named module with its kind, output shape and receptive field",
    _layers_arguments,
)
def _layers(args: argparse.Namespace) -> None:
    loaded = load(args)
    size = (loaded.input_size[0], *args.input_size) if args.input_size else loaded.input_size
    rows = layer_table(trace_layers(loaded.model, size))
    print(
        f"{loaded.spec}: input {'x'.join(map(str, size))}; receptive field as size / stride @ offset"
    )
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        print(f"{row['name']:{width}s}  {row['kind']:18s} {row['shape']:14s} {row['field']}")


def _filters_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    layers_option(parser, "comma-separated conv layers (default: all)")
    out_option("convlens-filters")(parser)


@command("filters", "write conv filters as image grids, with each filter's RMS", _filters_arguments)
def _filters(args: argparse.Namespace) -> None:
    loaded = load(args)
    layers = args.layers or conv_layers(loaded.model)
    written = save_filters({layer: conv_weight(loaded.model, layer) for layer in layers}, args.out)
    print(f"wrote {len(written)} filter grids to {args.out}")
