"""The model randomisation test (Adebayo et al. 2018): does a method's map change when the
model's weights are re-initialised? A map that stays the same cannot explain what the model
learned.

The test works on a copy: the model passed in is never modified. Layers with parameters of
their own and a `reset_parameters` (convolutions, linear layers, normalisations) are
re-initialised from the output down, each with its own default initialisation under a seed:
"cascade" keeps the layers above randomised as it goes down, "independent" randomises one layer
at a time. A step is one layer, or one block of layers (`layer_blocks`: a ResNet stage at a
time, as Adebayo et al. randomised Inception v3 block by block); each layer's seed is the same
either way, so blocks that cover every layer end on the same random model. At each step every method's maps are compared with the original ones
(`convlens.trust.similarity`); the summary score is the mean Spearman rank correlation of
|map| over all steps and images (the area under the similarity curve), and a method passes
when that score is below the midpoint between its randomisation baseline and 1.
"""

from __future__ import annotations

import copy
import warnings
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from convlens._errors import ConvlensError, unknown_name_error
from convlens._progress import tqdm
from convlens._shown import Shown
from convlens.attribution.methods import method_function
from convlens.hooks import resolve_layer
from convlens.targets import Target, select_targets
from convlens.trust.similarity import METRICS, baseline, compare, features

ORDERS = ("cascade", "independent")
MAP_BATCH = 32  # images per method call
Method = str | Callable[..., torch.Tensor]


class Verdicts(Shown):
    """The summary of a randomisation test from its `similarity` and `baseline` fields."""

    similarity: dict[str, dict[str, np.ndarray]]
    baseline: dict[str, dict[str, float]]

    @property
    def score(self) -> dict[str, float]:
        """Mean `spearman_abs` over every step and image: the area under the curve."""
        return {m: float(values["spearman_abs"].mean()) for m, values in self.similarity.items()}

    @property
    def passed(self) -> dict[str, bool]:
        """Whether each method's score is below the midpoint between its baseline and 1."""
        return {
            m: score < (self.baseline[m]["spearman_abs"] + 1) / 2 for m, score in self.score.items()
        }


@dataclass(frozen=True)
class Randomisation(Verdicts):
    """`steps` the names of the steps (layers, or blocks) in the order randomised;
    `similarity[method][metric]` (len(steps), N) each image's similarity to its original map
    after each step; `baseline[method][metric]` the mean similarity between maps of different
    images of the unchanged model; `maps[method]` (len(steps) + 1, K, ...) the first K images'
    maps, original first."""

    order: str
    steps: list[str]
    similarity: dict[str, dict[str, np.ndarray]]
    baseline: dict[str, dict[str, float]]
    maps: dict[str, torch.Tensor]


def randomisable_layers(model: nn.Module) -> list[str]:
    """Modules with parameters of their own and a `reset_parameters`, from the output down
    (reverse registration order)."""
    found = [
        name
        for name, module in model.named_modules()
        if name
        and any(True for _ in module.parameters(recurse=False))
        and callable(getattr(module, "reset_parameters", None))
    ]
    return found[::-1]


def layer_blocks(model: nn.Module, boundaries: Sequence[str]) -> dict[str, list[str]]:
    """`randomisable_layers` grouped into blocks, from the output down, each named: the layers
    after the last boundary (the head, named by their common prefix, or "head"), then for each
    boundary from the top, named after it, the layers up to its output (inside it too: a ResNet
    stage's convolutions and batch norms). Registration order stands for the order the layers
    run in; a boundary with no layer of its own gets no block.

    Example:
        >>> list(layer_blocks(torchvision.models.resnet18(), ["maxpool", "layer1", "layer4"]))  # doctest: +SKIP
        ['fc', 'layer4', 'layer1', 'maxpool']
    """
    if isinstance(boundaries, str) or not boundaries:
        raise ValueError(f"boundaries must be a list of layer names, got {boundaries!r}")
    names = [name for name, _ in model.named_modules()]
    place = {name: index for index, name in enumerate(names) if name}
    ends = {}
    for boundary in dict.fromkeys(boundaries):
        resolve_layer(model, boundary)  # an unknown name stops here, with the close ones
        inside = (n for n in place if n == boundary or n.startswith(f"{boundary}."))
        ends[boundary] = max(place[n] for n in inside)
    order = sorted(ends, key=ends.__getitem__)
    cuts = [ends[boundary] for boundary in order]
    grouped: list[list[str]] = [[] for _ in range(len(order) + 1)]
    for layer in randomisable_layers(model):
        grouped[bisect_left(cuts, place[layer])].append(layer)
    head = _common_prefix(grouped[-1])
    labels = [*order, head if head and head not in ends else "head"]
    return {label: block for label, block in reversed(list(zip(labels, grouped))) if block}


def _common_prefix(names: Sequence[str]) -> str:
    """The dotted prefix every name shares ("classifier" of classifier.1 and classifier.4)."""
    prefix = []
    for parts in zip(*(name.split(".") for name in names)):
        if len(set(parts)) > 1:
            break
        prefix.append(parts[0])
    return ".".join(prefix)


def _steps(
    layers: list[str], blocks: Mapping[str, Sequence[str]] | None
) -> list[tuple[str, list[str]]]:
    """Each step's name and the layers it re-initialises: `blocks` (checked), or one layer a
    step."""
    if blocks is None:
        return [(layer, [layer]) for layer in layers]
    if not isinstance(blocks, Mapping) or not blocks:
        raise ValueError("blocks must map each step's name to its layers, as layer_blocks does")
    seen: set[str] = set()
    for label, block in blocks.items():
        if isinstance(block, str) or not block:
            raise ValueError(f"block {label!r} must be a non-empty list of layer names")
        for name in block:
            if name not in layers:
                raise unknown_name_error("randomisable layer", name, layers)
            if name in seen:
                raise ValueError(f"layer {name!r} is in two blocks; give each layer one block")
            seen.add(name)
    return [(label, list(block)) for label, block in blocks.items()]


def check_blocks(model: nn.Module, blocks: Mapping[str, Sequence[str]] | None) -> None:
    """Refuse `blocks` that `randomisation_test` would refuse, before any map is made."""
    _steps(randomisable_layers(model), blocks)


def _named(methods: Sequence[Method]) -> dict[str, Callable[..., torch.Tensor]]:
    named = {}
    for method in methods:
        name = method if isinstance(method, str) else getattr(method, "__name__", repr(method))
        if name in named:
            raise ValueError(f"two methods are called {name!r}; give each callable its own name")
        named[name] = method_function(method) if isinstance(method, str) else method
    if not named:
        raise ValueError("give at least one method")
    return named


def _check_images(images: torch.Tensor) -> None:
    if len(images) < 2:
        raise ValueError(
            f"a randomisation test needs at least 2 images (its baseline compares maps of "
            f"different images), got {len(images)}"
        )


def _maps(
    named: dict[str, Callable[..., torch.Tensor]],
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
) -> dict[str, torch.Tensor]:
    """Each method's maps of `images`, `MAP_BATCH` images at a time (memory bounded)."""
    count = len(images)
    chunks = [torch.arange(i, min(i + MAP_BATCH, count)) for i in range(0, count, MAP_BATCH)]
    return {
        name: torch.cat(
            [fn(model, images[c], select_targets(target, count, c)).detach().cpu() for c in chunks]
        )
        for name, fn in named.items()
    }


def _reset(module: nn.Module, seed: int) -> None:
    """Re-initialise `module` with its own default initialisation under `seed`."""
    with torch.random.fork_rng(), torch.no_grad():  # the caller's CPU and CUDA states kept
        torch.manual_seed(seed)
        module.reset_parameters()


def randomisation_test(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    methods: Sequence[Method],
    order: str = "cascade",
    seed: int = 0,
    keep: int = 4,
    blocks: Mapping[str, Sequence[str]] | None = None,
    progress: bool = False,
) -> Randomisation:
    """Adebayo et al.'s model randomisation test of `methods` (names of
    `convlens.attribution.METHODS` or callables `(model, images, target) -> maps`), one layer
    a step or, with `blocks` (step name → layers, from the output down, as `layer_blocks`
    gives them), one block a step; layers in no block keep their weights. `progress` shows a
    bar over the steps.

    Example:
        >>> found = randomisation_test(model, images, labels, ["gradient", "guided"])  # doctest: +SKIP
        >>> found.passed  # doctest: +SKIP
        {'gradient': True, 'guided': False}
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    named = _named(methods)
    _check_images(images)
    work = copy.deepcopy(model).eval()
    layers = randomisable_layers(work)
    if not layers:
        raise ConvlensError("the model has no layer with parameters and reset_parameters")
    steps = _steps(layers, blocks)
    original = _maps(named, work, images, target)
    reference = {name: features(maps) for name, maps in original.items()}
    kept = {name: [maps[:keep]] for name, maps in original.items()}
    curves: dict[str, dict[str, list]] = {name: {m: [] for m in METRICS} for name in named}
    saved = copy.deepcopy(work.state_dict())
    for _, block in tqdm(steps, desc="randomisation test", leave=False, disable=not progress):
        if order == "independent":
            work.load_state_dict(saved)
        for layer in block:
            _reset(work.get_submodule(layer), seed + layers.index(layer))
        for name, maps in _maps(named, work, images, target).items():
            kept[name].append(maps[:keep])
            for metric, values in compare(reference[name], features(maps)).items():
                curves[name][metric].append(values)
    return Randomisation(
        order=order,
        steps=[label for label, _ in steps],
        similarity={n: {m: np.stack(v) for m, v in c.items()} for n, c in curves.items()},
        baseline={name: baseline(found) for name, found in reference.items()},
        maps={name: torch.stack(values) for name, values in kept.items()},
    )


@dataclass(frozen=True)
class DataRandomisation(Verdicts):
    """The data randomisation test: `similarity[method][metric]` (N,) each image's map by the
    model trained on permuted labels against its map by the trained model; `baseline` as in
    `Randomisation`; `maps[method]` (2, K, ...) the first K images' maps, trained model first."""

    similarity: dict[str, dict[str, np.ndarray]]
    baseline: dict[str, dict[str, float]]
    maps: dict[str, torch.Tensor]


def _warn_if_constant(maps: dict[str, torch.Tensor]) -> None:
    """Warn when most of the shuffled model's maps are constant: a model that did not fit its
    permuted labels (stuck at chance, outputs constant) gives maps that decorrelate from
    anything, and the test then says nothing."""
    for name, values in maps.items():
        flat = values.flatten(1)
        constant = float((flat.amax(1) == flat.amin(1)).float().mean())
        if constant > 0.5:
            warnings.warn(
                f"{name}: {constant:.0%} of the shuffled-label model's maps are constant; it "
                "has not fitted its labels, so the data randomisation test says nothing here "
                "(train it longer, until it fits the permuted training labels)",
                stacklevel=3,
            )


def data_randomisation_test(
    model: nn.Module,
    shuffled: nn.Module,
    images: torch.Tensor,
    target: Target,
    methods: Sequence[Method],
    keep: int = 4,
) -> DataRandomisation:
    """Adebayo et al.'s data randomisation test: each method's maps by `model` and by `shuffled`,
    the same network trained on randomly permuted labels (`convlens train --shuffle-labels`).
    A map that looks the same for a model that learned nothing about the labels does not
    explain what `model` learned.

    Example:
        >>> found = data_randomisation_test(trained, shuffled, images, labels, ["guided"])  # doctest: +SKIP
    """
    named = _named(methods)
    _check_images(images)
    trained, random = _maps(named, model, images, target), _maps(named, shuffled, images, target)
    _warn_if_constant(random)
    reference = {name: features(maps) for name, maps in trained.items()}
    return DataRandomisation(
        similarity={name: compare(reference[name], features(random[name])) for name in named},
        baseline={name: baseline(found) for name, found in reference.items()},
        maps={name: torch.stack([trained[name][:keep], random[name][:keep]]) for name in named},
    )
