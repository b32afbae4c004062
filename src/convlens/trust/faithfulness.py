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


def _curve(
    kind: str,
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    attribution: torch.Tensor,
    steps: int,
    baseline: object,
    batch_size: int,
) -> Curve:
    _check(images, attribution, steps, batch_size)
    x = images.detach()
    start = make_baseline(x, baseline)
    ranks = _ranks(attribution).to(x.device)
    pixels = ranks.shape[1]
    counts = torch.tensor([round(i * pixels / steps) for i in range(steps + 1)], device=x.device)
    count, side = len(x), x.shape[-2:]
    curve = torch.empty(count * (steps + 1))
    with preserved_state(model, training=False, frozen=True), torch.inference_mode():
        classes = class_indices(target, count, model(as_input(x[:1], model)).shape[1]).to(x.device)
        for begin in range(0, count * (steps + 1), batch_size):
            flat = torch.arange(
                begin, min(begin + batch_size, count * (steps + 1)), device=x.device
            )
            image, step = flat // (steps + 1), flat % (steps + 1)
            chosen = (ranks[image] < counts[step][:, None]).view(-1, 1, *side)
            first, second = (start, x) if kind == "deletion" else (x, start)
            mixed = torch.where(chosen, first[image], second[image])
            curve[flat.cpu()] = _probabilities(model, mixed, classes, image)
    curve = curve.view(count, steps + 1)
    auc = (curve.sum(1) - (curve[:, 0] + curve[:, -1]) / 2) / steps
    return Curve(curve, auc, kind)


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
    return _curve("deletion", model, images, target, attribution, steps, baseline, batch_size)


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
    return _curve("insertion", model, images, target, attribution, steps, baseline, batch_size)


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
