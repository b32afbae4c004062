"""`convlens trust`: can the maps be trusted on this model? The model randomisation test of
each method and the faithfulness scores, beside reference maps that know nothing of the model."""

from __future__ import annotations

import argparse

from convlens.attribution.methods import METHODS
from convlens.cli._inputs import load, open_checked
from convlens.cli._options import (
    choices_list,
    data_option,
    int_range,
    model_options,
    out_option,
    positive_int,
    seed,
)
from convlens.cli._registry import command
from convlens.data.select import take, with_transform
from convlens.models.layers import default_layers
from convlens.report.results import save_trust
from convlens.trust.assess import TRUST_METHODS, assess, label_targets
from convlens.trust.randomisation import layer_blocks


def _trust_arguments(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    data_option(parser, "dataset spec (default: the Fashion-MNIST test split)")
    parser.add_argument(
        "--methods",
        type=choices_list(list(METHODS)),
        default=list(TRUST_METHODS),
        help=f"comma-separated methods (default: {','.join(TRUST_METHODS)})",
    )
    parser.add_argument(
        "--n", type=int_range(2), default=100, help="images (the first N, at least 2; default 100)"
    )
    parser.add_argument(
        "--steps", type=positive_int, default=32, help="deletion and insertion steps"
    )
    parser.add_argument(
        "--seed", type=seed, default=0, help="re-initialisation and random-map seed"
    )
    parser.add_argument(
        "--blocks",
        action="store_true",
        help="re-initialise a block a step, the layers up to each default layer (a ResNet "
        "stage at a time), instead of one layer a step: far fewer steps on deep networks",
    )
    out_option("convlens-trust")(parser)


@command(
    "trust",
    "sanity checks (model randomisation) and faithfulness scores (deletion, insertion, Average "
    "Drop) of attribution methods on your model, beside random, edge and centre maps",
    _trust_arguments,
)
def _trust(args: argparse.Namespace) -> None:
    data = open_checked(args.data)
    count = min(args.n, len(data))
    loaded = load(args)
    images, labels = take(with_transform(data, loaded.transform), list(range(count)))
    target = label_targets(loaded.model, images, labels)
    said = "their labels" if isinstance(target, list) else "the predicted classes"
    print(f"checking {', '.join(args.methods)} on {count} images, targets {said}")
    blocks = layer_blocks(loaded.model, default_layers(loaded.model)) if args.blocks else None
    found = assess(
        loaded.model,
        images,
        target,
        args.methods,
        steps=args.steps,
        seed=args.seed,
        blocks=blocks,
        progress=True,
    )
    save_trust(found, args.out)
    for row in found.table():
        verdict = {True: "passes", False: "FAILS", None: "(reference)"}[row["passes"]]
        print(
            f"{row['map']:15s} randomisation {verdict:11s} deletion AUC {row['deletion_auc']:.3f} "
            f"insertion AUC {row['insertion_auc']:.3f} average drop {row['average_drop']:.1f}%"
        )
    print(
        f"wrote trust.csv, trust.json, randomisation.png, similarity.png, faithfulness.png to {args.out}"
    )
