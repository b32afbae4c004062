"""Does the map point at what the model uses? Deletion and insertion (Petsiuk et al. 2018) and,
for maps used as soft masks, Average Drop and Increase in Confidence (Chattopadhyay et al. 2018).

Deletion and insertion: pixels are ranked by the attribution (summed over channels when it has
them), ties to the lower flat index; after step i of `steps` the top round(i * H * W / steps)
pixels (all channels) are replaced by the baseline (deletion) or copied from the image into the
baseline (insertion); the curve is the target's softmax probability at each step, its area the
trapezoid mean over [0, 1]. Every (image, step) pair goes through the model in batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convlens._errors import ConvlensError
from convlens._shown import Shown
from convlens.attribution.backward import as_input, check_images
from convlens.attribution.integrated import make_baseline
from convlens.attribution.score import unit_scaled
from convlens.hooks import preserved_state
from convlens.targets import Target, class_indices

DEFAULT_BATCH = 64


@dataclass(frozen=True)
class Curve(Shown):
    """A deletion or insertion result: `curve` (N, steps + 1) the target's probability after
    each step, `auc` (N,) its trapezoid mean over [0, 1], `kind` "deletion" or "insertion"."""

    curve: torch.Tensor
    auc: torch.Tensor
    kind: str


@dataclass(frozen=True)
class SoftMask(Shown):
    """Chattopadhyay et al.'s scores of maps used as soft masks: `drop` (N,) max(0, Y - O) / Y
    and `increase` (N,) O > Y, for Y the target's probability on the image and O on the image
    times its map scaled to [0, 1]; `average_drop` (percent) and `increase_in_confidence`
    (percent of images)."""

    drop: torch.Tensor
    increase: torch.Tensor

    @property
    def average_drop(self) -> float:
        return 100 * float(self.drop.mean())

    @property
    def increase_in_confidence(self) -> float:
        return 100 * float(self.increase.float().mean())


def _ranks(attribution: torch.Tensor) -> torch.Tensor:
    """(N, H*W) each pixel's place in its image's order, highest attribution first, ties to the
    lower flat index."""
    scores = attribution.detach().float()
    scores = scores.sum(1) if scores.dim() == 4 else scores
    order = torch.sort(-scores.flatten(1), dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    return ranks


def _probabilities(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """The target class's softmax probability for each of `images`, image j's class classes[index[j]]."""
    logits = model(as_input(images, model))
    if logits.dim() != 2:
        raise ConvlensError(
            f"faithfulness needs (N, classes) outputs; the model returns {tuple(logits.shape)}"
        )
    return logits.float().softmax(1)[torch.arange(len(images)), classes[index]].cpu()


def _check(images: torch.Tensor, attribution: torch.Tensor, steps: int, batch_size: int) -> None:
    check_images(images)
    shape = tuple(attribution.shape)
    if shape not in (tuple(images.shape), (len(images), *images.shape[-2:])):
        raise ValueError(
            f"attribution of shape {shape} does not match images {tuple(images.shape)}: give "
            "(N, C, H, W) or (N, H, W)"
        )
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


KINDS = ("deletion", "insertion")


def _endpoint_probabilities(
    model: nn.Module, sources: torch.Tensor, classes: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """(S, N) the target's probability for each image of each source (S, N, C, H, W)."""
    count = sources.shape[1]
    flat = sources.flatten(0, 1)
    index = torch.arange(len(flat), device=flat.device) % count
    return torch.cat(
        [
            _probabilities(model, flat[i : i + batch_size], classes, index[i : i + batch_size])
            for i in range(0, len(flat), batch_size)
        ]
    ).view(len(sources), count)


def _curves(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    paths: list[tuple[torch.Tensor, str]],
    steps: int,
    baselines: dict[str, object],
    batch_size: int,
) -> list[Curve]:
    """A Curve per (attribution, kind) of `paths`. Step 0 and the last step of every path are
    the image or a baseline whatever the map, so each of those goes through the model once;
    the other (path, image, step) triples go through it `batch_size` at a time."""
    x = images.detach()
    kinds = sorted({kind for _, kind in paths})
    sources = torch.stack([x, *(make_baseline(x, baselines[kind]) for kind in kinds)])
    taken = torch.tensor([0 if kind == "insertion" else 1 + kinds.index(kind) for _, kind in paths])
    kept = torch.tensor([1 + kinds.index(kind) if kind == "insertion" else 0 for _, kind in paths])
    ranks = torch.stack([_ranks(attribution) for attribution, _ in paths]).to(x.device)
    pixels, count, side = ranks.shape[-1], len(x), x.shape[-2:]
    counts = torch.tensor([round(i * pixels / steps) for i in range(steps + 1)], device=x.device)
    curves = torch.empty(len(paths), count, steps + 1)
    inner = steps - 1  # steps 1 .. steps - 1 of each path and image
    with preserved_state(model, training=False, frozen=True), torch.inference_mode():
        classes = class_indices(target, count, model(as_input(x[:1], model)).shape[1]).to(x.device)
        ends = _endpoint_probabilities(model, sources, classes, batch_size)
        curves[:, :, 0], curves[:, :, -1] = ends[kept], ends[taken]
        for begin in range(0, len(paths) * count * inner, batch_size):
            flat = torch.arange(begin, min(begin + batch_size, len(paths) * count * inner))
            path, image, step = flat // (count * inner), flat // inner % count, flat % inner + 1
            chosen = (ranks[path, image] < counts[step][:, None]).view(-1, 1, *side)
            mixed = torch.where(chosen, sources[taken[path], image], sources[kept[path], image])
            curves[path, image, step] = _probabilities(model, mixed, classes, image.to(x.device))
    return [
        Curve(c, (c.sum(1) - (c[:, 0] + c[:, -1]) / 2) / steps, kind)
        for c, (_, kind) in zip(curves, paths)
    ]


def faithfulness(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    maps: dict[str, torch.Tensor],
    steps: int = 32,
    *,
    deletion_baseline: object = 0.0,
    insertion_baseline: object = "blur",
    batch_size: int = DEFAULT_BATCH,
) -> dict[str, dict[str, Curve]]:
    """`deletion` and `insertion` of every map of `maps` (name → attribution of `images`):
    {"deletion": {name: Curve}, "insertion": {name: Curve}}, equal to one call per map and kind
    but faster: the unperturbed image and the two baselines, the first and last step of every
    curve, go through the model once for all maps.

    Example:
        >>> curves = faithfulness(model, images, 3, {"saliency": cl.saliency(model, images, 3)})  # doctest: +SKIP
        >>> curves["deletion"]["saliency"].auc  # doctest: +SKIP
    """
    for attribution in maps.values():
        _check(images, attribution, steps, batch_size)
    if not maps:
        raise ValueError("give at least one map")
    paths = [(attribution, kind) for kind in KINDS for attribution in maps.values()]
    baselines = {"deletion": deletion_baseline, "insertion": insertion_baseline}
    found = iter(_curves(model, images, target, paths, steps, baselines, batch_size))
    return {kind: {name: next(found) for name in maps} for kind in KINDS}


def deletion(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    attribution: torch.Tensor,
    steps: int = 32,
    baseline: object = 0.0,
    batch_size: int = DEFAULT_BATCH,
) -> Curve:
    """The target's probability as the most attributed pixels are replaced by `baseline` (a
    value in the model's input space, "blur", "mean" or a tensor): a faithful map makes it fall
    fast (low `auc`).

    Example:
        >>> deletion(model, images, 3, cl.saliency(model, images, 3)).auc  # doctest: +SKIP
    """
    _check(images, attribution, steps, batch_size)
    paths = [(attribution, "deletion")]
    return _curves(model, images, target, paths, steps, {"deletion": baseline}, batch_size)[0]


def insertion(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    attribution: torch.Tensor,
    steps: int = 32,
    baseline: object = "blur",
    batch_size: int = DEFAULT_BATCH,
) -> Curve:
    """The target's probability as the most attributed pixels are copied from the image into
    `baseline` (default: a blurred copy, as Petsiuk et al.): a faithful map makes it rise fast
    (high `auc`)."""
    _check(images, attribution, steps, batch_size)
    paths = [(attribution, "insertion")]
    return _curves(model, images, target, paths, steps, {"insertion": baseline}, batch_size)[0]


def soft_mask(
    model: nn.Module, images: torch.Tensor, target: Target, attribution: torch.Tensor
) -> SoftMask:
    """Average Drop and Increase in Confidence of `attribution` as soft masks: each map's
    magnitude (summed over channels) scaled to [0, 1] multiplies its image."""
    _check(images, attribution, 1, 1)
    magnitude = attribution.detach().float().abs()
    mask = unit_scaled(magnitude.sum(1) if magnitude.dim() == 4 else magnitude)
    x = images.detach()
    with preserved_state(model, training=False, frozen=True), torch.inference_mode():
        logits = model(as_input(x, model))
        classes = class_indices(target, len(x), logits.shape[1]).to(x.device)
        index = torch.arange(len(x), device=x.device)
        before = logits.float().softmax(1)[index, classes].cpu()
        after = _probabilities(model, x * mask[:, None].to(x.device), classes, index)
    lost = (before - after).clamp_min(0) / torch.where(before > 0, before, 1)
    return SoftMask(lost, after > before)  # nothing to lose where the probability is 0
