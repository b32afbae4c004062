"""Predictions and accuracy of a model over a labelled dataset."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from convlens._errors import ConvlensError
from convlens.data import BatchStream
from convlens.hooks import model_device, preserved_state


def accuracy(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 500) -> float:
    """Top-1 accuracy over the labelled items of `data` (items labelled -1 are not counted).

    Example:
        >>> accuracy(model, FashionMNIST("test", transform=loaded.transform))  # doctest: +SKIP
        0.91
    """
    correct = counted = 0
    device = model_device(model)
    with preserved_state(model), torch.inference_mode():
        for batch in BatchStream(data, batch_size):
            labelled = batch.labels >= 0
            if labelled.any():
                predicted = model(batch.images[labelled].to(device)).argmax(1).cpu()
                correct += int((predicted == batch.labels[labelled]).sum())
                counted += int(labelled.sum())
    if counted == 0:
        raise ConvlensError("the data has no labels, so accuracy cannot be measured")
    return correct / counted
