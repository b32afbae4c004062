"""Filters, feature maps of one image, and dead-unit statistics over a dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from convlens._errors import ConvlensError
from convlens._progress import tqdm
from convlens._shown import Shown
from convlens.data import BatchStream
from convlens.hooks import capture, model_device, preserved_state, resolve_layer
from convlens.models.layers import conv_layers


class Filters(Shown, torch.Tensor):
    """A conv layer's weight (O, I, k, k), shown in a notebook as its filter grid; `layer`
    names the layer. Operations on it return plain tensors."""

    __torch_function__ = torch._C._disabled_torch_function_impl
    layer: str


class FeatureMaps(Shown, torch.Tensor):
    """The output (C, h, w) of `layer` for one image, shown in a notebook as a grid of maps.
    Operations on it return plain tensors."""

    __torch_function__ = torch._C._disabled_torch_function_impl
    layer: str


def _of_layer(values: torch.Tensor, kind: type, layer: str) -> torch.Tensor:
    """`values` as a `kind` (Filters or FeatureMaps) of `layer`."""
    result = values.detach().as_subclass(kind)
    result.layer = layer
    return result


def filters(model: nn.Module, layer: str) -> Filters:
    """The filters (O, I, k, k) of conv layer `layer`.

    Example:
        >>> filters(nn.Sequential(nn.Conv2d(1, 4, 3)), "0").shape
        torch.Size([4, 1, 3, 3])
    """
    return _of_layer(conv_weight(model, layer), Filters, layer)


def conv_weight(model: nn.Module, layer: str) -> torch.Tensor:
    """The weight (O, I, k, k) of conv layer `layer`, detached."""
    module = resolve_layer(model, layer)
    if not isinstance(module, nn.Conv2d):
        raise ConvlensError(
            f"layer {layer!r} is a {type(module).__name__}, not a Conv2d; conv layers: {', '.join(conv_layers(model))}"
        )
    return module.weight.detach()


def filter_rms(weight: torch.Tensor) -> torch.Tensor:
    """Root mean square of each filter of a conv weight (O, I, k, k): shape (O,)."""
    return weight.detach().float().pow(2).mean(dim=(1, 2, 3)).sqrt()


def feature_maps(model: nn.Module, image: torch.Tensor, layer: str) -> FeatureMaps:
    """The output (C, h, w) of `layer` for one preprocessed image (C, H, W).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        >>> feature_maps(net, torch.randn(1, 8, 8), "1").shape
        torch.Size([4, 6, 6])
    """
    return _of_layer(layer_maps(model, image, [layer])[layer], FeatureMaps, layer)


def layer_maps(
    model: nn.Module, image: torch.Tensor, layers: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The outputs (C, h, w) of several layers for one preprocessed image, from one forward.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        >>> layer_maps(net, torch.randn(1, 8, 8), ["0", "1"])["1"].shape
        torch.Size([4, 6, 6])
    """
    if image.dim() != 3:
        raise ValueError(f"expected one image (C, H, W), got shape {tuple(image.shape)}")
    with preserved_state(model), capture(model, layers) as captured, torch.no_grad():
        model(image.unsqueeze(0).to(model_device(model)))
    return {layer: captured[layer][0] for layer in layers}


@dataclass(frozen=True)
class DeadUnits(Shown):
    """Per channel of one layer, the fraction of images whose whole map is zero."""

    layer: str
    zero_fraction: torch.Tensor
    dead: torch.Tensor
    images: int
    threshold: float

    @property
    def dead_count(self) -> int:
        return int(self.dead.sum())


class DeadUnitsByLayer(Shown, dict):
    """`dead_units`'s result: layer name → DeadUnits, shown in a notebook as a chart, and
    `accuracy`: the model's top-1 accuracy over the labelled items of the same pass (None when
    nothing is labelled or the model does not return (N, classes) scores)."""

    accuracy: float | None = None


def dead_units(
    model: nn.Module,
    data: Dataset | DataLoader,
    layers: Sequence[str],
    *,
    threshold: float = 0.99,
    batch_size: int = 128,
    progress: bool = False,
) -> DeadUnitsByLayer:
    """Dead-unit statistics of several layers in one pass over `data`, and the model's accuracy
    from the same forwards (`DeadUnitsByLayer.accuracy`).

    A channel is dead when its whole map is zero on more than `threshold` of the images
    (cs231n: "some activation maps may be all zero for many different inputs, which can indicate
    dead filters").

    Example:
        >>> stats = dead_units(model, dataset, ["features.1"])  # doctest: +SKIP
        >>> stats["features.1"].dead_count
        0
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    device = model_device(model)
    zero_counts: dict[str, torch.Tensor] = {}
    seen, correct, counted = 0, 0, 0
    stream = BatchStream(data, batch_size)
    with preserved_state(model), capture(model, layers) as captured, torch.inference_mode():
        for batch in tqdm(stream, desc="dead units", unit="batch", disable=not progress):
            scores = model(batch.images.to(device))
            labelled = batch.labels >= 0
            if scores.dim() == 2:
                hits = scores.argmax(1).cpu()[labelled] == batch.labels[labelled]
                correct, counted = correct + int(hits.sum()), counted + int(labelled.sum())
            for layer in layers:
                activation = captured[layer]
                silent = (
                    activation.flatten(2).eq(0).all(dim=2)
                    if activation.dim() == 4
                    else activation.eq(0)
                )
                zero_counts[layer] = zero_counts.get(layer, 0) + silent.sum(0).cpu()
            seen += len(batch.images)
    if seen == 0:
        raise ConvlensError("no readable images in the data")
    found = DeadUnitsByLayer(
        {
            layer: DeadUnits(layer, counts / seen, counts / seen > threshold, seen, threshold)
            for layer, counts in zero_counts.items()
        }
    )
    found.accuracy = correct / counted if counted else None
    return found


def largest_share(rms: torch.Tensor) -> float:
    """The largest filter's share of the summed filter RMS: near 1/O when filters are alike,
    near 1 when "one feature dominates" (Zeiler & Fergus Fig. 6)."""
    return float(rms.max() / rms.sum().clamp_min(1e-12))


@dataclass(frozen=True)
class FirstLayer:
    """Zeiler & Fergus Fig. 6 for one model: its first conv layer's filters (O, I, k, k), each
    filter's RMS, the largest filter's share of their sum, and which filters are dead on data."""

    layer: str
    weight: torch.Tensor
    rms: torch.Tensor
    largest_share: float
    dead: DeadUnits


def first_layer(
    model: nn.Module, data: Dataset | DataLoader, *, progress: bool = False
) -> FirstLayer:
    """The first conv layer's filters, their RMS, the largest one's share and its dead filters
    (map zero on more than 99 % of `data`)."""
    layers = conv_layers(model)
    if not layers:
        raise ConvlensError("the model has no Conv2d layer")
    weight = conv_weight(model, layers[0])
    rms = filter_rms(weight)
    dead = dead_units(model, data, [layers[0]], progress=progress)[layers[0]]
    return FirstLayer(layers[0], weight, rms, largest_share(rms), dead)
