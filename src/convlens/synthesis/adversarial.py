"""How easily a network is fooled: an image nudged until it is classified as a chosen class
(cs231n's fooling images; Nguyen et al. 2015), and the fast gradient sign method
(Goodfellow et al. 2015) with its iterative form (Kurakin et al. 2016).

Step sizes and eps are in the model's input space (for normalised inputs, eps / std is the
change in [0, 1] pixel units)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convlens._errors import ConvlensError
from convlens._shown import Shown
from convlens.hooks import model_device, preserved_state
from convlens.models.card import UNKNOWN, ModelCard, card_of


@dataclass(frozen=True)
class Fooling(Shown):
    """The fooling image (C, H, W) in input space, whether the model now predicts the target,
    after how many steps, the target's probability per step, and the class predicted for the
    original image and for the final one; `original` (input space) and the model's `card`
    for the picture."""

    image: torch.Tensor
    fooled: bool
    steps: int
    target_prob: torch.Tensor
    original_class: int
    final_class: int
    original: torch.Tensor | None = None
    card: ModelCard = UNKNOWN


def fooling_image(
    model: nn.Module,
    image: torch.Tensor,
    target_class: int,
    *,
    lr: float = 1.0,
    max_steps: int = 100,
) -> Fooling:
    """Normalised gradient ascent on the target's score, x += lr * g / ||g||, stopping as soon
    as the model predicts `target_class`.

    Example:
        >>> fooled = fooling_image(loaded.model, image, target_class=3)  # doctest: +SKIP
        >>> fooled.fooled, fooled.steps
        (True, 6)
    """
    device = model_device(model)
    x = image.detach().to(device).unsqueeze(0).clone()
    probs: list[float] = []
    predicted: list[int] = []
    with preserved_state(model, training=False, frozen=True):
        for step in range(max_steps + 1):
            x.requires_grad_(True)
            logits = model(x)
            _check_class(target_class, logits)
            probs.append(float(logits.detach().softmax(dim=1)[0, target_class]))
            predicted.append(int(logits.argmax()))
            if predicted[-1] == target_class or step == max_steps:
                break
            (grad,) = torch.autograd.grad(logits[0, target_class], x)
            x = (x + lr * grad / grad.norm().clamp_min(1e-12)).detach()
    fooled = predicted[-1] == target_class
    return Fooling(
        x.detach()[0],
        fooled,
        step,
        torch.tensor(probs),
        predicted[0],
        predicted[-1],
        image.detach().cpu(),
        card_of(model),
    )


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """images + eps * sign(d loss / d images), the loss being cross-entropy on `labels`."""
    return iterative_fgsm(model, images, labels, eps, steps=1, step_size=eps)


def iterative_fgsm(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
) -> torch.Tensor:
    """`steps` signed-gradient steps of `step_size` (default eps / steps * 2.5, capped at eps),
    each followed by clipping to the eps-ball around the original images."""
    if eps < 0:
        raise ConvlensError(f"eps must be >= 0, got {eps}")
    step_size = step_size if step_size is not None else min(eps, 2.5 * eps / steps)
    device = model_device(model)
    original = images.detach().to(device)
    labels = torch.as_tensor(labels, device=device).long()
    x = original.clone()
    with preserved_state(model, training=False, frozen=True):
        for _ in range(steps):
            x.requires_grad_(True)
            logits = model(x)
            _check_class(int(labels.max()), logits)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), x)
            x = x.detach() + step_size * grad.sign()
            x = original + (x - original).clamp(-eps, eps)
    return x.detach()


def _check_class(index: int, logits: torch.Tensor) -> None:
    if not 0 <= index < logits.shape[1]:
        raise ConvlensError(
            f"class {index} out of range: the model has {logits.shape[1]} outputs (0..{logits.shape[1] - 1})"
        )


@dataclass(frozen=True)
class AdversarialAccuracy:
    """Top-1 accuracy on `images` labelled images: clean, and under FGSM and iterative FGSM
    for each budget `eps` (in [0, 1] pixel units)."""

    images: int
    eps: tuple[float, ...]
    clean: float
    fgsm: tuple[float, ...]
    iterative: tuple[float, ...]


def adversarial_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    budgets: Sequence[float],
    pixel_scale: float = 1.0,
) -> AdversarialAccuracy:
    """Accuracy clean and under both attacks for each budget in [0, 1] pixel units;
    `pixel_scale` is the largest std of the model's normalisation (budget / scale is the
    attack's eps in input space)."""
    labels = torch.as_tensor(labels).long()
    if bool((labels < 0).any()):
        raise ConvlensError("FGSM needs labelled images; this dataset has none")

    def accuracy(x: torch.Tensor) -> float:
        with preserved_state(model, training=False), torch.no_grad():
            predicted = model(x.to(model_device(model))).argmax(dim=1).cpu()
        return round(float((predicted == labels).float().mean()), 4)

    attacks = [
        (
            accuracy(fgsm(model, images, labels, eps / pixel_scale)),
            accuracy(iterative_fgsm(model, images, labels, eps / pixel_scale)),
        )
        for eps in budgets
    ]
    return AdversarialAccuracy(
        len(images),
        tuple(budgets),
        accuracy(images),
        tuple(a for a, _ in attacks),
        tuple(b for _, b in attacks),
    )
