"""What the picture of a result needs to know about the model that made it: a name, how to
turn its inputs back into viewable images, and its class names.

`load_model` files a card for every model it loads, keyed weakly by the module (the card never
keeps a model alive), so `cl.saliency(loaded.model, ...)` knows it came from `zfnet-fashion`.
Any other module gets a card with its class name, per-image min-max display and class numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch
from torch import nn

from convlens.models.preprocess import Preprocess


@dataclass(frozen=True)
class ModelCard:
    """`name` (the spec it was loaded from, or the module's class), `transform` (None when
    unknown) and `classes` (empty when unknown)."""

    name: str
    transform: Preprocess | None = None
    classes: tuple[str, ...] = ()

    def shown(self, images: torch.Tensor) -> torch.Tensor:
        """Input-space images (..., C, H, W) as [0, 1] images for display: the transform undone,
        or each image stretched to its own range when the transform is unknown."""
        images = images.detach().float().cpu()
        if self.transform is not None:
            return self.transform.denormalize(images)
        low = images.amin(dim=(-3, -2, -1), keepdim=True)
        high = images.amax(dim=(-3, -2, -1), keepdim=True)
        return (images - low) / (high - low).clamp_min(1e-12)

    def class_name(self, label: int) -> str:
        """The name of class `label` (`class_name`)."""
        return class_name(self.classes, label)


def class_name(classes: Sequence[str], label: int) -> str:
    """The name of class `label`; "unlabelled" for -1, the number itself past the names."""
    if label < 0:
        return "unlabelled"
    return classes[label] if label < len(classes) else str(label)


UNKNOWN = ModelCard("model")
"""The card of a result built by hand, without the model it came from."""

_CARDS: WeakKeyDictionary[nn.Module, ModelCard] = WeakKeyDictionary()


def file_card(model: nn.Module, card: ModelCard) -> None:
    """Remember `card` for `model` (for as long as the model lives)."""
    _CARDS[model] = card


def card_of(model: nn.Module) -> ModelCard:
    """The card filed for `model`, or one naming its class."""
    return _CARDS.get(model) or ModelCard(type(model).__name__)
