"""Does the map point at what the model uses? Deletion and insertion (Petsiuk et al. 2018) and,
for maps used as soft masks, Average Drop and Increase in Confidence (Chattopadhyay et al. 2018).

Deletion and insertion: pixels are ranked by the attribution (summed over channels when it has
them), ties to the lower flat index; after step i of `steps` the top round(i * H * W / steps)
pixels (all channels) are replaced by the baseline (deletion) or copied from the image into the
baseline (insertion); the curve is the target's softmax probability at each step, its area the
trapezoid mean over [0, 1]. Every (image, step) pair goes through the model in batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from convlens._errors import ConvlensError
from convlens._progress import tqdm
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
    attributions: list[torch.Tensor],
    baselines: dict[str, object],
    steps: int,
    batch_size: int,
    progress: bool = False,
) -> dict[str, list[Curve]]:
    """A Curve per kind of `baselines` ("deletion", "insertion": its baseline) and attribution.
    Step 0 and the last step of every curve are the image or a baseline whatever the map, so
    each goes through the model once; the other (kind, map, image, step) quadruples go through
    it `batch_size` at a time, under a bar with `progress`. Each map is ranked once."""
    x = images.detach()
    kinds = list(baselines)
    sources = torch.stack([x, *(make_baseline(x, baselines[kind]) for kind in kinds)])
    own = torch.arange(1, len(kinds) + 1)  # each kind's baseline among the sources
    taken = torch.where(torch.tensor([k == "insertion" for k in kinds]), 0, own)
    kept = torch.where(taken == 0, own, 0)  # pixels not yet chosen
    ranks = torch.stack([_ranks(a).to(torch.int32) for a in attributions]).to(x.device)
    pixels, count, side, maps = ranks.shape[-1], len(x), x.shape[-2:], len(attributions)
    counts = torch.tensor([round(i * pixels / steps) for i in range(steps + 1)], device=x.device)
    curves = torch.empty(len(kinds), maps, count, steps + 1)
    inner = steps - 1  # steps 1 .. steps - 1 of each curve
    total = len(kinds) * maps * count * inner
    with preserved_state(model, training=False, frozen=True), torch.inference_mode():
        classes = class_indices(target, count, model(as_input(x[:1], model)).shape[1]).to(x.device)
        ends = _endpoint_probabilities(model, sources, classes, batch_size)
        curves[..., 0], curves[..., -1] = ends[kept][:, None], ends[taken][:, None]
        batches = range(0, total, batch_size)
        for begin in tqdm(
            batches, desc="deletion and insertion", leave=False, disable=not progress
        ):
            flat = torch.arange(begin, min(begin + batch_size, total))
            kind, rest = flat // (maps * count * inner), flat % (maps * count * inner)
            map_, image, step = rest // (count * inner), rest // inner % count, rest % inner + 1
            chosen = (ranks[map_, image] < counts[step][:, None]).view(-1, 1, *side)
            mixed = torch.where(chosen, sources[taken[kind], image], sources[kept[kind], image])
            found = _probabilities(model, mixed, classes, image.to(x.device))
            curves[kind, map_, image, step] = found
    return {
        name: [Curve(c.clone(), (c.sum(1) - (c[:, 0] + c[:, -1]) / 2) / steps, name) for c in of]
        for name, of in zip(kinds, curves)
    }


def _one(
    kind: str,
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    attribution: torch.Tensor,
    steps: int,
    baseline: object,
    batch_size: int,
) -> Curve:
    """The `kind` curve of one attribution, its inputs checked first."""
    _check(images, attribution, steps, batch_size)
    found = _curves(model, images, target, [attribution], {kind: baseline}, steps, batch_size)
    return found[kind][0]


def faithfulness(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    maps: Mapping[str, torch.Tensor],
    steps: int = 32,
    *,
    deletion_baseline: object = 0.0,
    insertion_baseline: object = "blur",
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
) -> dict[str, dict[str, Curve]]:
    """`deletion` and `insertion` of every map of `maps` (name → attribution of `images`):
    {"deletion": {name: Curve}, "insertion": {name: Curve}}, equal to one call per map and kind
    but faster: the unperturbed image and the two baselines, the first and last step of every
    curve, go through the model once for all maps. `progress` shows a bar over the batches.

    Example:
        >>> curves = faithfulness(model, images, 3, {"saliency": cl.saliency(model, images, 3)})  # doctest: +SKIP
        >>> curves["deletion"]["saliency"].auc  # doctest: +SKIP
    """
    if not isinstance(maps, Mapping) or not maps:
        raise ValueError(
            "maps must be a non-empty {name: attribution} dict; for one map use deletion or "
            "insertion"
        )
    for attribution in maps.values():
        _check(images, attribution, steps, batch_size)
    baselines = {"deletion": deletion_baseline, "insertion": insertion_baseline}
    attributions = list(maps.values())
    found = _curves(model, images, target, attributions, baselines, steps, batch_size, progress)
    return {kind: dict(zip(maps, curves)) for kind, curves in found.items()}


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
    return _one("deletion", model, images, target, attribution, steps, baseline, batch_size)


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
    return _one("insertion", model, images, target, attribution, steps, baseline, batch_size)


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
