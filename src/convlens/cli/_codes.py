"""Commands about the network's codes over a dataset: the t-SNE map of the last linear layer's
input, the nearest neighbours of query images, and a layer's activation atlas."""

from __future__ import annotations

import argparse

from torch.utils.data import Subset

from convlens._errors import ConvlensError
from convlens._io import safe_name
from convlens.analysis.activation_atlas import MAX_GRID, activation_atlases, class_atlas
from convlens.cli._inputs import check_class, load, open_checked
from convlens.cli._options import (
    data_option,
    indices_option,
    int_range,
    layers_option,
    model_options,
    non_negative_ints,
    out_option,
    positive_int,
)
from convlens.cli._registry import command
from convlens.data import open_data
from convlens.data.select import with_transform
from convlens.embedding import embed, nearest_neighbours
from convlens.hooks import resolve_layer
from convlens.models.layers import default_layers
from convlens.report.results import save_activation_atlas, save_embedding, save_neighbours
from convlens.synthesis.units import UNIT_STEPS

# t-SNE (perplexity 30) needs more than 90 points, and the mosaic is square: 10 x 10 at least
EMBED_MINIMUM = 100


def _embed_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    data_option(parser, "dataset spec (default: test split)")
    parser.add_argument(
        "--n",
        type=int_range(EMBED_MINIMUM),
        default=2500,
        help="images to embed (a square number fills the mosaic)",
    )
    out_option("convlens-embed")(parser)


@command(
    "embed",
    "t-SNE of CNN codes: a hole-free image mosaic, a scatter plot by class, coordinates CSV",
    _embed_arguments,
)
def _embed(args: argparse.Namespace) -> None:
    data = open_data(args.data)
    loaded = load(args)
    data = with_transform(data, loaded.transform)
    found = embed(loaded.model, data, args.n, progress=True)
    written = save_embedding(found, args.out)
    print(f"wrote {', '.join(p.name for p in written)} and embedding.csv to {args.out}")


def _neighbours_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    parser.add_argument(
        "--queries", default="fashion-mnist", help="dataset spec of the query images"
    )
    indices_option(parser, "which query images (default: 0,1,2,3,4)", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--gallery", default="fashion-mnist:train", help="dataset spec searched (default: train)"
    )
    parser.add_argument("--k", type=positive_int, default=6)
    out_option("convlens-neighbours")(parser)


@command(
    "neighbours",
    "nearest training images of each query in feature space and in pixel space",
    _neighbours_arguments,
)
def _neighbours(args: argparse.Namespace) -> None:
    queries = open_checked(args.queries, args.indices)
    gallery = open_data(args.gallery)
    if args.k > len(gallery):
        raise ConvlensError(
            f"--k {args.k} is more than the {len(gallery)} image(s) of --gallery {args.gallery}"
        )
    loaded = load(args)
    chosen = Subset(with_transform(queries, loaded.transform), args.indices)
    gallery = with_transform(gallery, loaded.transform)
    found = nearest_neighbours(loaded.model, chosen, gallery, args.k)
    path = save_neighbours(found, args.out)
    print(f"wrote {path}")


def _atlas_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    data_option(parser, "dataset spec (default: test split)")
    layers_option(parser, "comma-separated layers (default: the last conv layer's output)")
    parser.add_argument("--grid", type=int_range(1, MAX_GRID), default=20, help="cells per side")
    parser.add_argument(
        "--samples",
        type=int_range(10),
        default=10_000,
        help="activations kept (one per image, a uniform sample of the data)",
    )
    parser.add_argument(
        "--classes",
        type=non_negative_ints,
        default=[],
        help="comma-separated classes, each with its own class-filtered atlas",
    )
    parser.add_argument(
        "--icon-steps", type=positive_int, default=UNIT_STEPS, help="synthesis steps per icon"
    )
    out_option("convlens-activation-atlas")(parser)


@command(
    "activation-atlas",
    "a layer as a whole: activations of the dataset laid out by t-SNE on a grid, an image "
    "synthesised per cell, the class predicted most there",
    _atlas_arguments,
)
def _activation_atlas(args: argparse.Namespace) -> None:
    data = open_data(args.data)
    loaded = load(args)
    layers = args.layers or default_layers(loaded.model)[-1:]
    for layer in layers:
        resolve_layer(loaded.model, layer)  # an unknown name stops here, with the close ones
    for label in args.classes:
        check_class(loaded, label, "--classes")
    data = with_transform(data, loaded.transform)
    found = activation_atlases(
        loaded.model, data, layers, args.grid, args.samples, icon_steps=args.icon_steps,
        progress=True,
    )  # fmt: skip
    if not found:
        raise ConvlensError(f"every layer of {layers} fires on at most one image: no atlas")
    for layer, atlas in found.items():
        name = f"atlas-{safe_name(layer)}"
        save_activation_atlas(atlas, args.out, name)
        print(
            f"{layer}: {len(atlas.vectors)} activations in {len(atlas.cells)} cells; wrote {name}.png"
        )
        for label in args.classes:
            if not (atlas.classes == label).any():
                print(f"  class {label} ({loaded.classes[label]}): no sample predicted as it")
                continue
            kept = class_atlas(atlas, loaded.model, label, icon_steps=args.icon_steps)
            save_activation_atlas(kept, args.out, f"{name}-class-{label}")
            print(f"  class {label} ({loaded.classes[label]}): {len(kept.cells)} cells")
