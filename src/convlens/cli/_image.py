"""Commands about one image at a time: feature maps, neuron groups and occlusion sensitivity
(attributions are in `_attribute`)."""

from __future__ import annotations

import argparse

from convlens.analysis.filters import layer_maps
from convlens.analysis.groups import neuron_groups
from convlens.cli._inputs import check_class, load, open_checked
from convlens.cli._options import (
    finite_float,
    image_option,
    indices_option,
    layers_option,
    model_options,
    non_negative_int,
    out_option,
    positive_int,
)
from convlens.cli._registry import command
from convlens.data import open_image
from convlens.data.select import take, with_transform
from convlens.hooks import resolve_layer
from convlens.models.layers import default_layers
from convlens.occlusion import default_geometry, occlusion
from convlens.report.results import save_feature_maps, save_neuron_groups, save_occlusion
from convlens.synthesis.units import UNIT_STEPS


def _maps_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    image_option(parser, "image file or sample:<name> (e.g. sample:chelsea)")
    layers_option(parser, "comma-separated layers (default: every conv layer's rectified output)")
    out_option("convlens-maps")(parser)


@command("maps", "write the feature maps of one image at each layer as grids", _maps_arguments)
def _maps(args: argparse.Namespace) -> None:
    picture = open_image(args.image)
    loaded = load(args)
    image = loaded.transform(picture)
    maps = layer_maps(loaded.model, image, args.layers or default_layers(loaded.model))
    written = save_feature_maps(maps, args.out)
    print(f"wrote {len(written)} feature-map grids and maps.npz to {args.out}")


def _groups_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    image_option(parser, "image file or sample:<name> (e.g. sample:chelsea)")
    parser.add_argument(
        "--layer", help="layer whose maps are grouped (default: the last conv layer's output)"
    )
    parser.add_argument("--groups", type=positive_int, default=6, help="number of groups")
    parser.add_argument(
        "--icon-steps",
        type=positive_int,
        default=UNIT_STEPS,
        help="synthesis steps of each group's icon",
    )
    parser.add_argument("--no-icons", action="store_true", help="leave out the icons")
    out_option("convlens-groups")(parser)


@command(
    "groups",
    "neuron groups: one image's feature maps at a layer factorised (NMF) into groups, where each "
    "fires and an image synthesised for each",
    _groups_arguments,
)
def _groups(args: argparse.Namespace) -> None:
    loaded = load(args)
    layer = args.layer or default_layers(loaded.model)[-1]
    resolve_layer(loaded.model, layer)  # an unknown name stops here, with the close ones
    image = loaded.transform(open_image(args.image))
    found = neuron_groups(
        loaded.model,
        image,
        layer,
        args.groups,
        icons=not args.no_icons,
        icon_steps=args.icon_steps,
    )
    path = save_neuron_groups(found, args.out)
    print(f"{args.groups} groups of {layer}: reconstruction error {found.error:.3f}; wrote {path}")


def _occlude_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    image_option(
        parser,
        "image file, folder, sample:<name>[,<name>...] or a dataset spec such as fashion-mnist",
    )
    indices_option(parser, "comma-separated images of a larger dataset (default: 0; all for <= 16)")
    parser.add_argument(
        "--target",
        type=non_negative_int,
        help="class whose probability is mapped (default: the true label if known, else the prediction)",
    )
    parser.add_argument(
        "--window",
        type=positive_int,
        help="occluder side in pixels (default: about 1/7 of the image)",
    )
    parser.add_argument(
        "--stride",
        type=positive_int,
        help="occluder step in pixels (default: a quarter of the window)",
    )
    parser.add_argument(
        "--fill",
        type=finite_float,
        default=0.0,
        help="occluder value in the model's input space (0: mean)",
    )
    parser.add_argument(
        "--layer",
        help="layer whose strongest map is followed (default: the last conv layer's output)",
    )
    parser.add_argument(
        "--fast", action="store_true", help="bfloat16 forwards: faster, maps close to exact"
    )
    out_option("convlens-occlude")(parser)


@command(
    "occlude",
    "occlusion sensitivity: slide a grey square and map activation, class probability and prediction",
    _occlude_arguments,
)
def _occlude(args: argparse.Namespace) -> None:
    data = open_checked(args.image, args.indices)
    indices = args.indices or list(range(len(data) if len(data) <= 16 else 1))
    loaded = load(args)
    check_class(loaded, args.target, "--target")
    images, labels = take(with_transform(data, loaded.transform), indices)
    if args.target is not None:
        targets = [args.target] * len(indices)
    else:
        targets = labels if all(label >= 0 for label in labels) else None
    window, stride = default_geometry(min(images.shape[-2:]), args.window)
    maps = occlusion(
        loaded.model,
        images,
        targets,
        window=window,
        stride=args.stride or stride,
        fill=args.fill,
        layer=args.layer or (default_layers(loaded.model) or [None])[-1],
        fast=args.fast,
        progress=True,
    )
    for n, index in enumerate(indices):
        out = args.out / f"image-{index}" if len(indices) > 1 else args.out
        figure = save_occlusion(maps[n], out)
        target = int(maps.target[n])
        print(
            f"image {index}: p({loaded.classes[target]}) = {float(maps.base_prob[n]):.3f} "
            f"unoccluded, min {float(maps.prob[n].min()):.3f} occluded; wrote {figure}"
        )
