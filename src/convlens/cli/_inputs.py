"""What every command does with its inputs, in the order the CLI promises: data and images are
opened (and indices checked) first, the model is loaded after, so a bad request stops before the
model loads and before anything is written."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from convlens import training
from convlens._errors import ConvlensError
from convlens.data import open_data
from convlens.data.select import check_indices
from convlens.models.loading import LoadedModel


def load(args: argparse.Namespace) -> LoadedModel:
    """The model of `--model`/`--weights`/`--trust-pickle` (a missing built-in default is trained
    once, as `cl.load_model` does), on `--device`."""
    check_device(args.device)
    loaded = training.load_model(args.model, args.weights, trust_pickle=args.trust_pickle)
    loaded.model.to(args.device)
    return loaded


def load_spec(spec: str, weights: str | None = None, device: str = "cpu") -> LoadedModel:
    """The model `spec` with `weights` (None: the built-in default, trained once if missing),
    on `device`."""
    check_device(device)
    loaded = training.load_model(spec, weights)
    loaded.model.to(device)
    return loaded


def check_device(device: str) -> None:
    """A ConvlensError when `device` is not available on this machine."""
    kind, _, index = device.partition(":")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and int(index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }[kind]
    if not available:
        raise ConvlensError(f"--device {device}: torch sees no such device on this machine")


def open_checked(spec: str, indices: Sequence[int] | None = None) -> Dataset:
    """The dataset `spec`, opened without a transform (`with_transform` adds the model's), with
    `--indices` checked against it: a ConvlensError naming the first one outside."""
    data = open_data(spec)
    if indices is not None:
        check_indices(data, indices, "--indices")
    return data


def check_class(loaded: LoadedModel, value: int | None, option: str) -> None:
    """A ConvlensError naming `option` when class `value` is not an output of the model."""
    count = len(loaded.classes)
    if value is not None and not 0 <= value < count:
        raise ConvlensError(
            f"{option}: class {value} is not an output of {loaded.spec}, which has {count} "
            f"classes (0..{count - 1})"
        )
