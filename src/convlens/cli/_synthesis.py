"""Commands that make images by optimisation: class models and unit maximisation, inversion of a
code, fooling images and the FGSM accuracy table."""

from __future__ import annotations

import argparse

from convlens._errors import ConvlensError
from convlens.cli._inputs import check_class, load
from convlens.cli._options import (
    image_option,
    model_options,
    non_negative_float,
    non_negative_int,
    non_negative_ints,
    objective,
    out_option,
    positive_int,
    probabilities,
    seed,
)
from convlens.cli._registry import command
from convlens.data import open_data, open_image
from convlens.data.select import is_labelled, take, with_transform
from convlens.models.loading import LoadedModel
from convlens.report.results import (
    save_adversarial_accuracy,
    save_fooling,
    save_inversion,
    save_synthesis,
)
from convlens.synthesis import (
    PRESETS,
    Objective,
    adversarial_accuracy,
    as_objective,
    class_score,
    fooling_image,
    invert,
    synthesize,
)


def _synthesize_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    parser.add_argument(
        "--objective",
        type=objective,
        help="LAYER:CHANNEL (mean of a map), LAYER:CHANNEL:Y:X (a neuron) or class:C "
        "(default: a class model of every class, first 10 for larger models)",
    )
    parser.add_argument(
        "--classes", type=non_negative_ints, help="comma-separated classes for class models"
    )
    parser.add_argument("--preset", default="lucid", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=positive_int, help="override the preset's step count")
    parser.add_argument("--size", type=positive_int, help="image side (default: the model's input)")
    parser.add_argument(
        "--n", type=positive_int, default=1, help="images per objective (default: 1)"
    )
    parser.add_argument(
        "--diversity",
        type=non_negative_float,
        default=0.0,
        help="weight pushing the n images apart",
    )
    parser.add_argument("--seed", type=seed, default=0)
    out_option("convlens-synthesize")(parser)


def _objective(args: argparse.Namespace, loaded: LoadedModel) -> tuple[Objective, int]:
    """The objective of `--objective` or `--classes` and how many images it makes."""
    if args.objective:
        if args.objective.startswith("class:"):
            check_class(loaded, int(args.objective.removeprefix("class:")), "--objective")
        return as_objective(args.objective), args.n
    classes = args.classes or list(range(min(len(loaded.classes), 10)))
    for c in classes:
        check_class(loaded, c, "--classes")
    classes = [c for c in classes for _ in range(args.n)]
    return class_score(classes), len(classes)


@command(
    "synthesize",
    "class model visualisation and activation maximisation (Simonyan, Yosinski, Lucid presets)",
    _synthesize_arguments,
)
def _synthesize(args: argparse.Namespace) -> None:
    loaded = load(args)
    goal, count = _objective(args, loaded)
    result = synthesize(
        loaded,
        goal,
        preset=args.preset,
        steps=args.steps,
        size=args.size,
        n=count,
        seed=args.seed,
        diversity_weight=args.diversity,
        progress=True,
        keep_on_interrupt=True,
    )
    path = save_synthesis(result, args.out, f"synthesis-{args.preset}")
    print(f"{result.preset.describe()}\nwrote {path} and its .npz")


def _invert_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    image_option(parser)
    parser.add_argument("--layer", required=True, help="layer whose code is inverted")
    parser.add_argument("--steps", type=positive_int, default=300)
    out_option("convlens-invert")(parser)


@command(
    "invert",
    "reconstruct an image from its code at a layer (Mahendran & Vedaldi)",
    _invert_arguments,
)
def _invert(args: argparse.Namespace) -> None:
    picture = open_image(args.image)
    loaded = load(args)
    image = loaded.transform(picture)
    result = invert(loaded, args.layer, image, steps=args.steps, progress=True)
    path = save_inversion(result, args.out)
    print(f"normalised feature distance {float(result.distance[-1, 0]):.4f}; wrote {path}")


def _fool_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    image_option(parser)
    parser.add_argument("--target-class", type=non_negative_int, required=True)
    parser.add_argument(
        "--data",
        help="also attack this dataset's first --count images with FGSM and its iterative form",
    )
    parser.add_argument("--count", type=positive_int, default=512)
    parser.add_argument(
        "--eps",
        type=probabilities,
        default=[0.01, 0.03, 0.1],
        help="FGSM budgets in [0, 1] pixel units",
    )
    out_option("convlens-fool")(parser)


@command(
    "fool",
    "fooling image toward a chosen class; FGSM accuracy drop on a dataset",
    _fool_arguments,
)
def _fool(args: argparse.Namespace) -> None:
    picture = open_image(args.image)
    data = open_data(args.data) if args.data else None
    if data is not None and not is_labelled(data):
        raise ConvlensError(
            f"--data {args.data}: FGSM needs labelled images; this dataset has none"
        )
    loaded = load(args)
    check_class(loaded, args.target_class, "--target-class")
    image = loaded.transform(picture)
    fooled = fooling_image(loaded.model, image, args.target_class)
    path = save_fooling(fooled, args.out)
    verdict = f"fooled in {fooled.steps} steps" if fooled.fooled else "not fooled"
    print(f"{verdict} (p = {float(fooled.target_prob[-1]):.3f}); wrote {path}")
    if data is None:
        return
    data = with_transform(data, loaded.transform)
    images, labels = take(data, range(min(args.count, len(data))))
    scale = max(loaded.transform.std)
    table = adversarial_accuracy(loaded.model, images, labels, args.eps, pixel_scale=scale)
    save_adversarial_accuracy(table, args.out)
    for eps, fgsm, iterative in zip(table.eps, table.fgsm, table.iterative):
        print(
            f"eps {eps}: accuracy {table.clean:.3f} clean, {fgsm:.3f} FGSM, "
            f"{iterative:.3f} iterative"
        )
