"""`convlens attribute`: where in one image the network looks, by one method or several side by
side (pixel-space methods, class activation maps, integrated gradients), optionally through a
noise tunnel."""

from __future__ import annotations

import argparse

import torch

from convlens._errors import ConvlensError
from convlens.attribution import CAMS, METHODS, channel_attribution, noise_tunnel
from convlens.attribution.integrated import BASELINES
from convlens.attribution.noise import KINDS
from convlens.cli._inputs import check_class, load
from convlens.cli._options import (
    choices_list,
    image_option,
    model_options,
    non_negative_float,
    non_negative_int,
    out_option,
    positive_int,
    seed,
    unit,
)
from convlens.cli._registry import command
from convlens.data import open_image
from convlens.hooks import model_device, resolve_layer
from convlens.models.loading import LoadedModel
from convlens.report.figures import TOP_CHANNELS
from convlens.report.results import save_attribution, save_attribution_row, save_channels
from convlens.targets import Target


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--target", type=non_negative_int, help="class index (default: the predicted class)"
    )
    target.add_argument(
        "--unit",
        type=unit,
        help="LAYER:CHANNEL[:Y:X], e.g. features.12:3 (position default: the channel's argmax)",
    )


def _attribute_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    parser.add_argument(
        "--method",
        type=choices_list([*METHODS, "channels"]),
        default=["deconvnet"],
        help=f"one method or several, comma-separated, drawn side by side: {', '.join(METHODS)}; "
        "or channels: each feature map's contribution at --layer (default: deconvnet)",
    )
    image_option(parser)
    _target_arguments(parser)
    parser.add_argument(
        "--layer", help="layer of the class activation maps (default: the last conv layer's output)"
    )
    parser.add_argument("--baseline", choices=BASELINES, help="ig's baseline (default: zero)")
    parser.add_argument("--steps", type=positive_int, help="ig's path steps (default: 50)")
    parser.add_argument("--smooth", type=positive_int, help="noise tunnel: noisy samples per map")
    parser.add_argument(
        "--sigma",
        type=non_negative_float,
        help="noise tunnel: noise as a fraction of the value range (default: 0.15)",
    )
    parser.add_argument(
        "--kind", choices=KINDS, help="noise tunnel: how maps combine (default: smoothgrad)"
    )
    parser.add_argument("--seed", type=seed, default=0, help="noise tunnel's seed (default: 0)")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        help="images per pass for ig, scorecam and the noise tunnel",
    )
    parser.add_argument(
        "--shared-scale",
        action="store_true",
        help="draw every method's map on one colour scale (each pixel's share of the map's total)",
    )
    out_option("convlens-attribute")(parser)


def _check_options(args: argparse.Namespace) -> None:
    """Refuse options that do not apply to the chosen methods, before anything loads."""
    methods = set(args.method)
    needs = {
        "--layer": (
            args.layer,
            methods & {*CAMS, "channels"},
            "the class activation maps and channels",
        ),
        "--baseline": (args.baseline, methods & {"ig"}, "ig"),
        "--steps": (args.steps, methods & {"ig"}, "ig"),
        "--sigma": (args.sigma, args.smooth, "--smooth (the noise tunnel)"),
        "--kind": (args.kind, args.smooth, "--smooth (the noise tunnel)"),
    }
    for option, (value, needed, what) in needs.items():
        if value is not None and not needed:
            raise ConvlensError(f"{option} applies to {what} only; add one or drop {option}")
    if "channels" in methods and (args.smooth or args.shared_scale):
        raise ConvlensError(
            "channels gives a score per feature map, not a map: --smooth and --shared-scale "
            "apply to the other methods"
        )
    if args.unit is not None and "scorecam" in methods:
        raise ConvlensError(
            "scorecam weighs channels by a class probability: use --target, not --unit"
        )


def _options(method: str, args: argparse.Namespace) -> dict:
    """The keyword options `method` takes from the command line."""
    options: dict = {}
    if method in CAMS and args.layer:
        options["layer"] = args.layer
    if method == "ig":
        options |= {"baseline": args.baseline, "steps": args.steps or 50}
    if method in ("ig", "scorecam") and args.batch_size:
        options["batch_size"] = args.batch_size
    return options


def _attribute_one(
    method: str, loaded: LoadedModel, image: torch.Tensor, target: Target, args: argparse.Namespace
) -> tuple[torch.Tensor, dict]:
    """One method's map of the image (through the noise tunnel with --smooth), and what it
    reports: its layer, ig's completeness gap."""
    model, options = loaded.model, _options(method, args)
    if args.smooth:  # --batch-size bounds the noisy images; the method runs on those
        options.pop("batch_size", None)
        values = noise_tunnel(
            method, model, image[None], target, samples=args.smooth,
            sigma=0.15 if args.sigma is None else args.sigma, kind=args.kind or "smoothgrad",
            seed=args.seed, batch_size=args.batch_size, **options,
        )  # fmt: skip
        return values, {}
    if method == "ig":
        values, gap = METHODS[method](model, image[None], target, return_delta=True, **options)
        return values, {"completeness_gap": gap.cpu().numpy()}
    return METHODS[method](model, image[None], target, **options), {}


def _report(method: str, values: torch.Tensor, extra: dict) -> str:
    layer = getattr(values, "layer", None)
    line = f"{method}: layer {layer}" if layer else method
    if "completeness_gap" in extra:
        gap, total = float(extra["completeness_gap"][0]), float(values.sum())
        line += (
            f": sum of attributions {total:.4f}, f(x) - f(baseline) {total - gap:.4f}, "
            f"completeness gap {gap:+.4f} (more --steps shrink it)"
        )
    return line


@command(
    "attribute",
    "where one image's class (or a unit) comes from: deconvnet, guided backprop, saliency, gradient, "
    "Grad-CAM family, Score-CAM, integrated gradients, side by side, with optional noise tunnels",
    _attribute_arguments,
)
def _attribute(args: argparse.Namespace) -> None:
    _check_options(args)
    picture = open_image(args.image)
    loaded = load(args)
    check_class(loaded, args.target, "--target")
    for layer in filter(None, (args.layer, args.unit and args.unit.layer)):
        resolve_layer(loaded.model, layer)  # an unknown name stops here, with the close ones
    image = loaded.transform(picture)
    target = args.unit or args.target
    if target is None:
        with torch.no_grad():
            target = int(loaded.model(image[None].to(model_device(loaded.model))).argmax())
        print(f"target: predicted class {target} ({loaded.classes[target]})")
    if "channels" in args.method:
        _channels(loaded, image, target, args)
    maps = []
    for method in (m for m in args.method if m != "channels"):
        values, extra = _attribute_one(method, loaded, image, target, args)
        maps.append(values)
        save_attribution(loaded, image, method, values[0], args.out, **extra)
        print(_report(method, values, extra))
    row = len(maps) > 1 or args.shared_scale
    if row:
        save_attribution_row(maps, args.out, args.shared_scale)
    print(
        f"wrote {', '.join(args.method)} (PNG and .npz){' and methods.png' if row else ''} to {args.out}"
    )


def _channels(loaded: LoadedModel, image: torch.Tensor, target: Target, args) -> None:
    """Print the feature maps that carried the decision most, with their sign, and draw them."""
    scores = channel_attribution(loaded.model, image[None], target, args.layer)
    values = scores.as_subclass(torch.Tensor)[0]
    print(f"channels: the maps of {scores.layer} that pushed the target up (+) or down (-) most")
    for k in values.abs().argsort(descending=True)[:TOP_CHANNELS].tolist():
        print(f"  map {k:4d}  {float(values[k]):+.4f}")
    save_channels(scores, args.out)
