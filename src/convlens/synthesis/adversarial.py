"""How easily a network is fooled: an image nudged until it is classified as a chosen class
(cs231n's fooling images; Nguyen et al. 2015), and the fast gradient sign method
(Goodfellow et al. 2015) with its iterative form (Kurakin et al. 2016).

Step sizes and eps are in the model's input space (for normalised inputs, eps / std is the
change in [0, 1] pixel units)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convlens._errors import ConvlensError
from convlens.hooks import model_device, preserved_state


@dataclass(frozen=True)
class Fooling:
    """The fooling image (C, H, W) in input space, whether the model now predicts the target,
    after how many steps, and the target's probability per step."""

    image: torch.Tensor
    fooled: bool
    steps: int
    target_prob: torch.Tensor


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
    with preserved_state(model, training=False, frozen=True):
        for step in range(max_steps + 1):
            x.requires_grad_(True)
            logits = model(x)
            _check_class(target_class, logits)
            probs.append(float(logits.detach().softmax(dim=1)[0, target_class]))
            if int(logits.argmax()) == target_class:
                return Fooling(x.detach()[0], True, step, torch.tensor(probs))
            if step == max_steps:
                break
            (grad,) = torch.autograd.grad(logits[0, target_class], x)
            x = (x + lr * grad / grad.norm().clamp_min(1e-12)).detach()
    return Fooling(x.detach()[0], False, max_steps, torch.tensor(probs))


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
