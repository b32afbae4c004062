"""Commands about the network's codes (the input of its last linear layer): the t-SNE map and
the nearest neighbours of query images."""

from __future__ import annotations

import argparse

from torch.utils.data import Subset

from convlens._errors import ConvlensError
from convlens.cli._inputs import load, open_checked
from convlens.cli._options import (
    data_option,
    indices_option,
    int_range,
    model_options,
    out_option,
    positive_int,
)
from convlens.cli._registry import command
from convlens.data import open_data
from convlens.data.select import with_transform
from convlens.embedding import embed, nearest_neighbours
from convlens.report.results import save_embedding, save_neighbours

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
