"""The `convlens` command. Subcommands are registered once in `COMMANDS`; argparse, `--help`
and the README's list all read that registry. Each subcommand only parses and calls the library."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from convlens._errors import ConvlensError


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, how to add its arguments, and what it runs."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


COMMANDS: dict[str, Command] = {}


def command(
    name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None
):
    """Register the decorated function as subcommand `name`."""

    def decorate(run: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
        COMMANDS[name] = Command(name, help, arguments, run)
        return run

    return decorate


def _model_arguments(parser: argparse.ArgumentParser, *, positional: bool = False) -> None:
    parser.add_argument(
        *(["model"] if positional else ["--model"]),
        **({"nargs": "?"} if positional else {}),
        default="zfnet-fashion",
        help="built-in name, torchvision:<name> or a checkpoint file (default: zfnet-fashion)",
    )
    parser.add_argument(
        "--weights",
        help="weights file (.safetensors or .pt state dict), or DEFAULT for torchvision's download",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling a full module (runs code from the file: only for files you trust)",
    )


def _out_argument(default: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--out", type=Path, default=Path(default), help=f"output folder (default: {default})"
        )

    return add


def _both(
    *adders: Callable[[argparse.ArgumentParser], None],
) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        for adder in adders:
            adder(parser)

    return add


def _load(args: argparse.Namespace):
    from convlens.models.loading import load_model

    return load_model(args.model, args.weights, trust_pickle=args.trust_pickle)


def _layers_list(text: str | None) -> list[str] | None:
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


@command("models", "list the built-in models")
def _models(args: argparse.Namespace) -> None:
    from convlens.models.zoo import BUILTIN_MODELS

    for entry in BUILTIN_MODELS.values():
        print(f"{entry.name:24s} {entry.description}")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from convlens.models.zoo import BUILTIN_MODELS
    from convlens.training import TrainConfig

    defaults = TrainConfig()
    parser.add_argument("--model", default=defaults.model, choices=sorted(BUILTIN_MODELS))
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--clip-radius",
        type=float,
        default=defaults.clip_radius,
        help="feature scale clipping radius (default: 0.1)",
    )
    parser.add_argument("--no-clip", action="store_true", help="turn feature scale clipping off")
    parser.add_argument(
        "--checkpoint-epochs",
        default=",".join(map(str, defaults.checkpoint_epochs)),
        help="epochs to keep a checkpoint of (the final one is always kept)",
    )
    parser.add_argument(
        "--train-subset", type=int, help="train on the first N training images only"
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
    from convlens.training import TrainConfig, default_model_dir, train

    config = TrainConfig(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        clip_radius=None if args.no_clip else args.clip_radius,
        seed=args.seed,
        checkpoint_epochs=tuple(int(e) for e in args.checkpoint_epochs.split(",") if e),
        train_subset=args.train_subset,
    )
    out = args.out or default_model_dir(args.model)
    result = train(
        config,
        out,
        on_epoch=lambda epoch, acc: print(f"epoch {epoch}: test accuracy {acc:.4f}", flush=True),
    )
    print(
        f"trained {args.model} in {result.seconds:.0f} s: test accuracy {result.accuracy[-1]:.4f}; checkpoints in {out}"
    )


def _layers_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser, positional=True)
    parser.add_argument(
        "--input-size", type=int, nargs="+", help="H W of the input (default: the model's)"
    )


@command(
    "layers",
    "print every named module with its kind, output shape and receptive field",
    _layers_arguments,
)
def _layers(args: argparse.Namespace) -> None:
    from convlens.models.layers import trace_layers
    from convlens.pipelines import layer_rows

    loaded = _load(args)
    size = (loaded.input_size[0], *args.input_size[-2:]) if args.input_size else loaded.input_size
    rows = layer_rows(trace_layers(loaded.model, size))
    print(
        f"{loaded.spec}: input {'x'.join(map(str, size))}; receptive field as size / stride @ offset"
    )
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        print(f"{row['name']:{width}s}  {row['kind']:18s} {row['shape']:14s} {row['field']}")


def _filters_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--layers", help="comma-separated conv layers (default: all)")
    _out_argument("convlens-filters")(parser)


@command("filters", "write conv filters as image grids, with each filter's RMS", _filters_arguments)
def _filters(args: argparse.Namespace) -> None:
    from convlens.pipelines import write_filters

    written = write_filters(_load(args), args.out, _layers_list(args.layers))
    print(f"wrote {len(written)} filter grids to {args.out}")


def _maps_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument(
        "--image", required=True, help="image file or sample:<name> (e.g. sample:chelsea)"
    )
    parser.add_argument(
        "--layers", help="comma-separated layers (default: every conv layer's rectified output)"
    )
    _out_argument("convlens-maps")(parser)


@command("maps", "write the feature maps of one image at each layer as grids", _maps_arguments)
def _maps(args: argparse.Namespace) -> None:
    from convlens.data import open_image
    from convlens.pipelines import write_feature_maps

    loaded = _load(args)
    image = loaded.transform(open_image(args.image))
    written = write_feature_maps(loaded, image, args.out, _layers_list(args.layers))
    print(f"wrote {len(written)} feature-map grids and maps.npz to {args.out}")


def _attribute_arguments(parser: argparse.ArgumentParser) -> None:
    from convlens.attribution import METHODS

    _model_arguments(parser)
    parser.add_argument("--method", choices=sorted(METHODS), default="deconvnet")
    parser.add_argument("--image", required=True, help="image file or sample:<name>")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--target", type=int, help="class index (default: the predicted class)")
    target.add_argument(
        "--unit",
        help="LAYER:CHANNEL[:Y:X], e.g. features.12:3 (position default: the channel's argmax)",
    )
    _out_argument("convlens-attribute")(parser)


@command(
    "attribute",
    "project a class score or one unit back to pixels (deconvnet, guided backprop, saliency, gradient)",
    _attribute_arguments,
)
def _attribute(args: argparse.Namespace) -> None:
    import torch

    from convlens.data import open_image
    from convlens.pipelines import write_attribution
    from convlens.units import Unit

    loaded = _load(args)
    image = loaded.transform(open_image(args.image))
    if args.unit:
        try:
            target = Unit.parse(args.unit)
        except ValueError as error:
            raise ConvlensError(str(error)) from None
    elif args.target is not None:
        target = args.target
    else:
        with torch.no_grad():
            target = int(loaded.model(image.unsqueeze(0)).argmax())
        print(f"target: predicted class {target} ({loaded.classes[target]})")
    written = write_attribution(loaded, image, args.method, target, args.out)
    print(f"wrote {', '.join(p.name for p in written)} and {args.method}.npz to {args.out}")


def _occlude_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument(
        "--image",
        required=True,
        help="image file, folder, sample:<name>[,<name>...] or a dataset spec such as fashion-mnist",
    )
    parser.add_argument(
        "--indices", help="comma-separated images of a larger dataset (default: 0; all for <= 16)"
    )
    parser.add_argument(
        "--target",
        type=int,
        help="class whose probability is mapped (default: the true label if known, else the prediction)",
    )
    parser.add_argument(
        "--window", type=int, help="occluder side in pixels (default: about 1/7 of the image)"
    )
    parser.add_argument(
        "--stride", type=int, help="occluder step in pixels (default: a quarter of the window)"
    )
    parser.add_argument(
        "--fill",
        type=float,
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
    _out_argument("convlens-occlude")(parser)


@command(
    "occlude",
    "occlusion sensitivity: slide a grey square and map activation, class probability and prediction",
    _occlude_arguments,
)
def _occlude(args: argparse.Namespace) -> None:
    import torch

    from convlens.data import open_data
    from convlens.occlusion import default_geometry, occlusion
    from convlens.pipelines import default_map_layers, write_occlusion

    loaded = _load(args)
    data = open_data(args.image, loaded.transform)
    indices = (
        [int(i) for i in args.indices.split(",")]
        if args.indices
        else list(range(len(data) if len(data) <= 16 else 1))
    )
    items = [data[i] for i in indices]
    images = torch.stack([image for image, _ in items])
    labels = [label for _, label in items]
    if args.target is not None:
        targets = [args.target] * len(items)
    elif all(label >= 0 for label in labels):
        targets = labels
    else:
        targets = None
    window, stride = default_geometry(min(images.shape[-2:]), args.window)
    maps = occlusion(
        loaded.model,
        images,
        targets,
        window=window,
        stride=args.stride or stride,
        fill=args.fill,
        layer=args.layer or default_map_layers(loaded)[-1],
        fast=args.fast,
        progress=True,
    )
    for n, index in enumerate(indices):
        out = args.out / f"image-{index}" if len(indices) > 1 else args.out
        figure = write_occlusion(loaded, images[n], maps[n], out)
        target = int(maps.target[n])
        print(
            f"image {index}: p({loaded.classes[target]}) = {float(maps.base_prob[n]):.3f} "
            f"unoccluded, min {float(maps.prob[n].min()):.3f} occluded; wrote {figure}"
        )


def _synthesize_arguments(parser: argparse.ArgumentParser) -> None:
    from convlens.synthesis import PRESETS

    _model_arguments(parser)
    parser.add_argument(
        "--objective",
        help="LAYER:CHANNEL (mean of a map), LAYER:CHANNEL:Y:X (a neuron) or class:C "
        "(default: a class model of every class, first 10 for larger models)",
    )
    parser.add_argument("--classes", help="comma-separated classes for class models")
    parser.add_argument("--preset", default="lucid", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, help="override the preset's step count")
    parser.add_argument("--size", type=int, help="image side (default: the model's input)")
    parser.add_argument("--n", type=int, default=1, help="images per objective (default: 1)")
    parser.add_argument(
        "--diversity", type=float, default=0.0, help="weight pushing the n images apart"
    )
    parser.add_argument("--seed", type=int, default=0)
    _out_argument("convlens-synthesize")(parser)


@command(
    "synthesize",
    "class model visualisation and activation maximisation (Simonyan, Yosinski, Lucid presets)",
    _synthesize_arguments,
)
def _synthesize(args: argparse.Namespace) -> None:
    from convlens.pipelines import write_synthesis
    from convlens.synthesis import as_objective, class_score, synthesize

    loaded = _load(args)
    if args.objective:
        objective, count = as_objective(args.objective), args.n
        labels = [f"{args.objective} #{i}" for i in range(count)]
    else:
        classes = (
            [int(c) for c in args.classes.split(",")]
            if args.classes
            else list(range(min(len(loaded.classes), 10)))
        )
        classes = [c for c in classes for _ in range(args.n)]
        objective, count = class_score(classes), len(classes)
        labels = [
            f"{c}: {loaded.classes[c]}" if c < len(loaded.classes) else str(c) for c in classes
        ]
    result = synthesize(
        loaded,
        objective,
        preset=args.preset,
        steps=args.steps,
        size=args.size,
        n=count,
        seed=args.seed,
        diversity_weight=args.diversity,
        progress=True,
    )
    path = write_synthesis(result, labels, args.out, f"synthesis-{args.preset}")
    print(f"{result.preset.describe()}\nwrote {path} and its .npz")


def _invert_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--image", required=True, help="image file or sample:<name>")
    parser.add_argument("--layer", required=True, help="layer whose code is inverted")
    parser.add_argument("--steps", type=int, default=300)
    _out_argument("convlens-invert")(parser)


@command(
    "invert",
    "reconstruct an image from its code at a layer (Mahendran & Vedaldi)",
    _invert_arguments,
)
def _invert(args: argparse.Namespace) -> None:
    from convlens.data import open_image
    from convlens.pipelines import write_inversion
    from convlens.synthesis import invert

    loaded = _load(args)
    image = loaded.transform(open_image(args.image))
    result = invert(loaded, args.layer, image, steps=args.steps, progress=True)
    path = write_inversion(loaded, image, result, args.out)
    print(f"normalised feature distance {float(result.distance[-1, 0]):.4f}; wrote {path}")


def _fool_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--image", required=True, help="image file or sample:<name>")
    parser.add_argument("--target-class", type=int, required=True)
    parser.add_argument(
        "--data",
        help="also attack this dataset's first --count images with FGSM and its iterative form",
    )
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--eps", default="0.01,0.03,0.1", help="FGSM budgets in [0, 1] pixel units")
    _out_argument("convlens-fool")(parser)


@command(
    "fool",
    "fooling image toward a chosen class; FGSM accuracy drop on a dataset",
    _fool_arguments,
)
def _fool(args: argparse.Namespace) -> None:
    from convlens.data import open_image
    from convlens.pipelines import write_adversarial_accuracy, write_fooling
    from convlens.synthesis import fooling_image

    loaded = _load(args)
    image = loaded.transform(open_image(args.image))
    fooled = fooling_image(loaded.model, image, args.target_class)
    path = write_fooling(loaded, image, fooled, args.out)
    verdict = f"fooled in {fooled.steps} steps" if fooled.fooled else "not fooled"
    print(f"{verdict} (p = {float(fooled.target_prob[-1]):.3f}); wrote {path}")
    if args.data:
        from convlens.data import open_data

        data = open_data(args.data, loaded.transform)
        budgets = [float(e) for e in args.eps.split(",")]
        table = write_adversarial_accuracy(loaded, data, budgets, args.count, args.out)
        for row in table:
            print(
                f"eps {row['eps']}: accuracy {row['clean']:.3f} clean, {row['fgsm']:.3f} FGSM, "
                f"{row['iterative']:.3f} iterative"
            )


def _embed_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument(
        "--data", default="fashion-mnist", help="dataset spec (default: test split)"
    )
    parser.add_argument(
        "--n", type=int, default=2500, help="images to embed (a square number fills the mosaic)"
    )
    _out_argument("convlens-embed")(parser)


@command(
    "embed",
    "t-SNE of CNN codes: a hole-free image mosaic, a scatter plot by class, coordinates CSV",
    _embed_arguments,
)
def _embed(args: argparse.Namespace) -> None:
    from convlens.data import open_data
    from convlens.pipelines import write_embedding

    loaded = _load(args)
    written = write_embedding(loaded, open_data(args.data, loaded.transform), args.n, args.out)
    print(f"wrote {', '.join(p.name for p in written)} and embedding.csv to {args.out}")


def _neighbours_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument(
        "--queries", default="fashion-mnist", help="dataset spec of the query images"
    )
    parser.add_argument(
        "--indices", default="0,1,2,3,4", help="which query images (default: 0,1,2,3,4)"
    )
    parser.add_argument(
        "--gallery", default="fashion-mnist:train", help="dataset spec searched (default: train)"
    )
    parser.add_argument("--k", type=int, default=6)
    _out_argument("convlens-neighbours")(parser)


@command(
    "neighbours",
    "nearest training images of each query in feature space and in pixel space",
    _neighbours_arguments,
)
def _neighbours(args: argparse.Namespace) -> None:
    from torch.utils.data import Subset

    from convlens.data import open_data
    from convlens.pipelines import write_neighbours

    loaded = _load(args)
    queries = open_data(args.queries, loaded.transform)
    chosen = Subset(queries, [int(i) for i in args.indices.split(",")])
    gallery = open_data(args.gallery, loaded.transform)
    path = write_neighbours(loaded, chosen, gallery, args.k, args.out)
    print(f"wrote {path}")


def _evolve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="zfnet-fashion", help="built-in model whose checkpoints are read"
    )
    parser.add_argument(
        "--checkpoints",
        help="comma-separated weight files (default: the built-in model's epoch checkpoints)",
    )
    parser.add_argument("--data", default="fashion-mnist", help="dataset spec (default: test)")
    parser.add_argument("--layers", help="comma-separated layers (default: every conv output)")
    parser.add_argument("--channels", help="comma-separated channels (default: 0-7)")
    _out_argument("convlens-evolve")(parser)


@command(
    "evolve",
    "feature evolution over training: each map's strongest activation per checkpoint (Fig. 4)",
    _evolve_arguments,
)
def _evolve(args: argparse.Namespace) -> None:
    from convlens.analysis.evolution import evolution
    from convlens.data import open_data
    from convlens.models.loading import load_model
    from convlens.pipelines import default_map_layers, write_evolution
    from convlens.training import default_model_dir

    if args.checkpoints:
        checkpoints = args.checkpoints.split(",")
    else:
        load_model(args.model)  # trains the default once if needed
        checkpoints = sorted(
            str(p) for p in default_model_dir(args.model).glob("epoch-*.safetensors")
        )
    loaded = load_model(args.model, checkpoints[-1])
    data = open_data(args.data, loaded.transform)
    channels = [int(c) for c in args.channels.split(",")] if args.channels else None
    layers = _layers_list(args.layers) or default_map_layers(loaded)
    evo = evolution(checkpoints, data, layers, channels, spec=args.model, progress=True)
    written = write_evolution(evo, data, args.model, args.out)
    print(f"wrote {len(written)} evolution figures to {args.out}")


def _diagnose_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=20000)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--data", default="fashion-mnist", help="data for dead filters (test)")
    _out_argument("convlens-diagnose")(parser)


@command(
    "diagnose",
    "first-layer diagnosis (Fig. 6): train with and without feature scale clipping, and a coarse first layer",
    _diagnose_arguments,
)
def _diagnose(args: argparse.Namespace) -> None:
    from convlens.data import open_data
    from convlens.models.loading import load_model
    from convlens.pipelines import write_diagnosis
    from convlens.training import TrainConfig, train

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
    folders = {name: args.out / name.replace(" ", "-") for name in runs}
    for name, config in runs.items():
        train(config, folders[name])
    data = open_data(args.data, load_model("zfnet-fashion").transform)
    summary = write_diagnosis(folders, data, args.out)
    for name, row in summary.items():
        print(
            f"{name}: test accuracy {row['test_accuracy']:.4f}, largest first-layer filter "
            f"{row['largest_share']:.3f} of the total RMS, {len(row['dead_filters'])} dead"
        )
    print(f"wrote {args.out / 'diagnosis.png'}")


def _invariance_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--data", default="fashion-mnist", help="dataset spec (default: test)")
    parser.add_argument("--indices", default="0,1,2,3,4", help="images (default: 0-4)")
    parser.add_argument(
        "--transforms", default="translate,scale,rotate", help="which sweeps to run"
    )
    parser.add_argument(
        "--layers", help="a low and a high layer (default: the first and last conv output)"
    )
    _out_argument("convlens-invariance")(parser)


@command(
    "invariance",
    "feature distance and true-class probability under translation, scaling, rotation (Fig. 5)",
    _invariance_arguments,
)
def _invariance(args: argparse.Namespace) -> None:
    import torch

    from convlens.analysis.invariance import invariance
    from convlens.data import open_data
    from convlens.pipelines import default_map_layers, write_invariance

    loaded = _load(args)
    data = open_data(args.data, loaded.transform)
    items = [data[int(i)] for i in args.indices.split(",")]
    images = torch.stack([image for image, _ in items])
    labels = [label for _, label in items]
    layers = _layers_list(args.layers) or [
        default_map_layers(loaded)[0],
        default_map_layers(loaded)[-1],
    ]
    for transform in args.transforms.split(","):
        result = invariance(loaded.model, images, labels, layers, transform)
        print(f"wrote {write_invariance(result, args.out)}")


def _correspondence_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--data", default="fashion-mnist", help="dataset spec (default: test)")
    parser.add_argument("--indices", required=True, help="the images, comma-separated")
    parser.add_argument(
        "--boxes",
        required=True,
        help="the part in each image as TOP,LEFT,BOTTOM,RIGHT; one box for all or one per image "
        "separated by ';'",
    )
    parser.add_argument("--layers", help="comma-separated layers (default: every conv output)")
    parser.add_argument("--draws", type=int, default=20, help="random masks per layer")


@command(
    "correspondence",
    "do occlusions of the same part change the code consistently? (Table 1)",
    _correspondence_arguments,
)
def _correspondence(args: argparse.Namespace) -> None:
    import torch

    from convlens.analysis.correspondence import correspondence
    from convlens.data import open_data
    from convlens.pipelines import default_map_layers

    loaded = _load(args)
    data = open_data(args.data, loaded.transform)
    indices = [int(i) for i in args.indices.split(",")]
    boxes = [tuple(int(v) for v in box.split(",")) for box in args.boxes.split(";")]
    if len(boxes) == 1:
        boxes = boxes * len(indices)
    if len(boxes) != len(indices) or any(len(box) != 4 for box in boxes):
        raise ConvlensError("give one TOP,LEFT,BOTTOM,RIGHT box, or one per image separated by ';'")
    images = torch.stack([data[i][0] for i in indices])
    print(f"{'layer':16s} {'part':>8s} {'random (mean +- std)':>24s}")
    for layer in _layers_list(args.layers) or default_map_layers(loaded):
        result = correspondence(loaded.model, images, boxes, layer, draws=args.draws)
        print(
            f"{layer:16s} {result.delta:8.4f} {result.random_mean:12.4f} +- {result.random_std:.4f}"
        )


def _scan_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument(
        "--data",
        default="fashion-mnist",
        help="dataset spec (default: fashion-mnist, the test split)",
    )
    parser.add_argument(
        "--layers", help="comma-separated layers (default: every conv layer's rectified output)"
    )
    parser.add_argument("--k", type=int, default=9, help="images per feature map (default: 9)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=20,
        help="batches between checkpoints of the running state",
    )
    parser.add_argument(
        "--render", action="store_true", help="also write the Fig. 2 figure of every channel"
    )
    _out_argument("convlens-scan")(parser)


@command(
    "scan",
    "find the top-k dataset images of every feature map (resumable; shards under torchrun)",
    _scan_arguments,
)
def _scan(args: argparse.Namespace) -> None:
    from convlens.data import open_data
    from convlens.pipelines import write_top_examples
    from convlens.scan import gather_shards, scan, sharded

    loaded = _load(args)
    data = open_data(args.data, loaded.transform)
    with sharded() as (rank, world):
        result = scan(
            loaded.model,
            data,
            _layers_list(args.layers),
            args.k,
            batch_size=args.batch_size,
            checkpoint=args.out / f"scan-state-{rank}-of-{world}.safetensors",
            checkpoint_every=args.checkpoint_every,
            shard=(rank, world),
            description={
                "model": loaded.spec,
                "weights": loaded.weights,
                "data": args.data,
                **_versions(),
            },
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
        written = write_top_examples(loaded, data, result, args.out)
        print(f"wrote {len(written)} Fig. 2 figures under {args.out}")


def _versions() -> dict:
    import torch

    from convlens import __version__

    return {"convlens": __version__, "torch": torch.__version__}


def _dead_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument(
        "--data",
        default="fashion-mnist",
        help="dataset spec (default: fashion-mnist, the test split)",
    )
    parser.add_argument(
        "--layers", help="comma-separated layers (default: every conv layer's rectified output)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.99,
        help="dead when the whole map is zero on more than this fraction of images",
    )
    _out_argument("convlens-dead")(parser)


@command("dead", "count dead units (maps that are all zero on almost every image)", _dead_arguments)
def _dead(args: argparse.Namespace) -> None:
    from convlens.analysis.filters import dead_units
    from convlens.data import open_data
    from convlens.pipelines import default_map_layers, write_dead_units

    loaded = _load(args)
    data = open_data(args.data, loaded.transform)
    layers = _layers_list(args.layers) or default_map_layers(loaded)
    stats = dead_units(loaded.model, data, layers, threshold=args.threshold, progress=True)
    for layer, s in stats.items():
        print(f"{layer}: {s.dead_count}/{len(s.dead)} dead over {s.images} images")
    print(f"wrote {write_dead_units(stats, args.out)}")


def _report_options(parser: argparse.ArgumentParser) -> None:
    from convlens.atlas import SKIPPABLE

    parser.add_argument("--data", default="fashion-mnist", help="dataset spec (default: test)")
    parser.add_argument("--layers", help="comma-separated layers (default: every conv output)")
    parser.add_argument("--images", type=int, default=10, help="sample images with pages")
    parser.add_argument(
        "--skip", default="", help=f"comma-separated stages to leave out: {', '.join(SKIPPABLE)}"
    )
    parser.add_argument(
        "--checkpoints",
        help="weight files for feature evolution (default: the built-in model's epochs)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="reuse finished stages of an earlier run"
    )


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    _report_options(parser)
    _out_argument("atlas")(parser)


def _write_atlas(loaded, args: argparse.Namespace) -> None:
    from convlens.atlas import SKIPPABLE, AtlasConfig, write_atlas
    from convlens.data import open_data
    from convlens.models.zoo import BUILTIN_MODELS
    from convlens.training import default_model_dir

    started = time.perf_counter()
    skip = [s for s in args.skip.split(",") if s]
    unknown = [s for s in skip if s not in SKIPPABLE]
    if unknown:
        raise ConvlensError(f"cannot skip {unknown}; skippable stages: {', '.join(SKIPPABLE)}")
    if args.checkpoints:
        checkpoints = args.checkpoints.split(",")
    elif loaded.spec in BUILTIN_MODELS and getattr(args, "weights", None) is None:
        found = default_model_dir(loaded.spec).glob("epoch-*.safetensors")
        checkpoints = sorted(str(p) for p in found)
    else:
        checkpoints = []
    config = AtlasConfig(
        layers=_layers_list(args.layers),
        images=args.images,
        skip=skip,
        checkpoints=checkpoints,
        data_description=args.data,
    )
    page = write_atlas(
        loaded, open_data(args.data, loaded.transform), args.out, config, resume=args.resume
    )
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 2**20
    print(
        f"wrote {page} ({size:.1f} MB) in {time.perf_counter() - started:.0f} s; open it in a browser"
    )


@command(
    "report",
    "write the atlas: a browsable offline HTML site of everything for a model and data",
    _report_arguments,
)
def _report(args: argparse.Namespace) -> None:
    _write_atlas(_load(args), args)


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    _report_options(parser)
    _out_argument("convlens-demo")(parser)


@command("demo", "train (or reuse) the built-in zfnet-fashion and write its atlas", _demo_arguments)
def _demo(args: argparse.Namespace) -> None:
    from convlens.models.loading import load_model

    _write_atlas(load_model("zfnet-fashion"), args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one subparser per registered command."""
    from convlens import __version__

    parser = argparse.ArgumentParser(
        prog="convlens", description="See what a convolutional network has learned."
    )
    parser.add_argument("--version", action="version", version=f"convlens {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in COMMANDS.values():
        sub = subparsers.add_parser(entry.name, help=entry.help, description=entry.help)
        entry.arguments(sub)
        sub.set_defaults(run=entry.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; domain errors print one clear line and exit with status 2."""
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, *rest, **kw: f"convlens: {message}\n"
    try:
        args.run(args)
    except ConvlensError as error:
        print(f"convlens: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convlens: interrupted; finished work is kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
