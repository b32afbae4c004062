"""What synthesis maximises: a value per image computed from captured layer outputs and logits.

Objectives compose like numbers (`a + b`, `2 * a`, `a - b`, `-a`), so "channel 5 of features.8
plus half the class score of 'Sandal'" is `channel("features.8", 5) + 0.5 * class_score(5)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from convlens._errors import ConvlensError
from convlens.targets import Unit

Evaluate = Callable[[dict[str, torch.Tensor], torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """`evaluate(activations, logits)` → (N,) values to maximise. `layers` are the layers it reads;
    `needs_logits` says whether the forward must run to the end; `classes` the class of each
    image for a class objective (empty otherwise), to name the images."""

    evaluate: Evaluate
    layers: frozenset[str] = field(default_factory=frozenset)
    needs_logits: bool = False
    name: str = ""
    classes: tuple[int, ...] = ()

    def __call__(self, activations: dict[str, torch.Tensor], logits: torch.Tensor | None):
        return self.evaluate(activations, logits)

    def __add__(self, other: Objective | float) -> Objective:
        other = _lift(other)
        return Objective(
            lambda acts, logits: self(acts, logits) + other(acts, logits),
            self.layers | other.layers,
            self.needs_logits or other.needs_logits,
            f"{self.name} + {other.name}",
        )

    __radd__ = __add__

    def __neg__(self) -> Objective:
        return Objective(
            lambda acts, logits: -self(acts, logits),
            self.layers,
            self.needs_logits,
            f"-{self.name}",
        )

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-_lift(other))

    def __rsub__(self, other: float) -> Objective:
        return _lift(other) + (-self)

    def __mul__(self, other: Objective | float) -> Objective:
        other = _lift(other)
        return Objective(
            lambda acts, logits: self(acts, logits) * other(acts, logits),
            self.layers | other.layers,
            self.needs_logits or other.needs_logits,
            f"({self.name}) * ({other.name})",
        )

    __rmul__ = __mul__


def _lift(value: Objective | float) -> Objective:
    if isinstance(value, Objective):
        return value
    if isinstance(value, (int, float)):
        return Objective(lambda acts, logits: torch.tensor(float(value)), name=f"{value:g}")
    raise TypeError(f"cannot combine an objective with {type(value).__name__}")


def class_score(classes: int | Sequence[int]) -> Objective:
    """The pre-softmax score of a class; with a sequence, image i maximises class classes[i]."""

    def evaluate(_acts: dict[str, torch.Tensor], logits: torch.Tensor | None) -> torch.Tensor:
        if logits is None or logits.dim() != 2:
            raise ConvlensError("a class objective needs a model that returns (N, classes) scores")
        wanted = torch.as_tensor(classes, device=logits.device).long().flatten()
        if wanted.numel() == 1:
            wanted = wanted.expand(len(logits))
        if wanted.numel() != len(logits):
            raise ConvlensError(f"{wanted.numel()} classes for {len(logits)} images")
        if bool(((wanted < 0) | (wanted >= logits.shape[1])).any()):
            raise ConvlensError(
                f"class out of range: the model has {logits.shape[1]} outputs (0..{logits.shape[1] - 1})"
            )
        return logits.gather(1, wanted[:, None])[:, 0]

    wanted = tuple(int(c) for c in torch.as_tensor(classes).flatten())
    return Objective(evaluate, needs_logits=True, name=f"class {classes}", classes=wanted)


def _feature_map(
    acts: dict[str, torch.Tensor], layer: str, channel: int | Sequence[int]
) -> torch.Tensor:
    """(N, ...) the chosen channel of each image (one channel for all, or one per image)."""
    output = acts[layer]
    wanted = torch.as_tensor(channel, device=output.device).long().flatten()
    if int(wanted.max()) >= output.shape[1]:
        raise ConvlensError(
            f"channel {int(wanted.max())} out of range: layer {layer!r} has {output.shape[1]} channels"
        )
    if wanted.numel() == 1:
        return output[:, int(wanted)]
    if wanted.numel() != len(output):
        raise ConvlensError(f"{wanted.numel()} channels for {len(output)} images")
    return output[torch.arange(len(output), device=output.device), wanted]


def channel(layer: str, index: int | Sequence[int]) -> Objective:
    """The mean activation of one feature map (or the value of one unit of a flat layer); with a
    sequence, image i maximises channel index[i] (a whole layer in one batch)."""

    def evaluate(acts: dict[str, torch.Tensor], _logits: torch.Tensor | None) -> torch.Tensor:
        values = _feature_map(acts, layer, index)
        return values.flatten(1).mean(dim=1) if values.dim() > 1 else values

    return Objective(evaluate, frozenset({layer}), name=f"{layer}:{index}")


def neuron(
    layer: str, index: int | Sequence[int], y: int | None = None, x: int | None = None
) -> Objective:
    """One activation of a feature map: position (y, x), by default the centre of the map; with
    a sequence of channels, image i maximises the neuron of channel index[i]."""

    def evaluate(acts: dict[str, torch.Tensor], _logits: torch.Tensor | None) -> torch.Tensor:
        values = _feature_map(acts, layer, index)
        return values if values.dim() == 1 else _at(values, y, x)

    return Objective(evaluate, frozenset({layer}), name=f"{layer}:{index}:{y}:{x}")


def _at(values: torch.Tensor, y: int | None, x: int | None) -> torch.Tensor:
    """`values` (..., h, w) at position (y, x), by default the map's centre, checked to be on
    the map."""
    height, width = values.shape[-2:]
    row = height // 2 if y is None else y
    column = width // 2 if x is None else x
    if not (0 <= row < height and 0 <= column < width):
        raise ConvlensError(f"position ({row}, {column}) is outside the {height}x{width} map")
    return values[..., row, column]


def _directions(output: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """(N, K) unit directions for a batch: one vector for all images, or one per image."""
    wanted = torch.as_tensor(vectors, dtype=output.dtype, device=output.device)
    if wanted.dim() == 1:
        wanted = wanted.expand(len(output), -1)
    if wanted.shape != (len(output), output.shape[1]):
        raise ConvlensError(
            f"directions of shape {tuple(wanted.shape)} for {len(output)} images of a layer with "
            f"{output.shape[1]} channels: give ({output.shape[1]},) or ({len(output)}, "
            f"{output.shape[1]})"
        )
    return F.normalize(wanted, dim=1)


def _along(values: torch.Tensor, unit: torch.Tensor, cosine_power: float) -> torch.Tensor:
    """(N, ...) the projection of each position's channel vector (dim 1) on its image's unit
    direction, times its cosine with the direction (clamped at 0.1) to `cosine_power`."""
    shape = (len(unit), unit.shape[1]) + (1,) * (values.dim() - 2)
    dot = (values * unit.view(shape)).sum(dim=1)
    if not cosine_power:
        return dot
    cosine = dot / values.norm(dim=1).clamp_min(1e-8)
    return dot * cosine.clamp_min(0.1) ** cosine_power


def direction(
    layer: str, vectors: torch.Tensor | Sequence[float], *, cosine_power: float = 0.0
) -> Objective:
    """How far the layer's activations point along a direction in channel space, averaged over
    positions (Olah et al. 2018): `vectors` (K,) for every image or (N, K), one per image (a
    neuron group's direction, a combination of feature maps). With `cosine_power` p > 0 each
    position's projection is multiplied by its cosine with the direction to the power p, which
    favours activations that point the same way over ones that are merely large."""
    vectors = torch.as_tensor(vectors, dtype=torch.float32)

    def evaluate(acts: dict[str, torch.Tensor], _logits: torch.Tensor | None) -> torch.Tensor:
        output = acts[layer]
        along = _along(output, _directions(output, vectors), cosine_power)
        return along.flatten(1).mean(dim=1) if along.dim() > 1 else along

    return Objective(evaluate, frozenset({layer}), name=f"{layer}:direction")


def direction_neuron(
    layer: str,
    vectors: torch.Tensor | Sequence[float],
    y: int | None = None,
    x: int | None = None,
    *,
    cosine_power: float = 0.0,
) -> Objective:
    """`direction` at one position (y, x) of the map, by default its centre: what an activation
    atlas's icon maximises (Carter et al. 2019, with `cosine_power` 1 or more)."""
    vectors = torch.as_tensor(vectors, dtype=torch.float32)

    def evaluate(acts: dict[str, torch.Tensor], _logits: torch.Tensor | None) -> torch.Tensor:
        output = acts[layer]
        at = output if output.dim() != 4 else _at(output, y, x)
        return _along(at, _directions(output, vectors), cosine_power)

    return Objective(evaluate, frozenset({layer}), name=f"{layer}:direction:{y}:{x}")


def diversity(layer: str) -> Objective:
    """Minus each image's mean cosine similarity to the other images of the batch, comparing
    their Gram matrices (style) at `layer`: pushes n images of one objective apart
    (Olah et al. 2017). Zero for a single image."""

    def evaluate(acts: dict[str, torch.Tensor], _logits: torch.Tensor | None) -> torch.Tensor:
        output = acts[layer]
        count = len(output)
        if count < 2:
            return torch.zeros(count, device=output.device)
        flat = output.flatten(2)
        gram = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)
        similarity = gram @ gram.t()
        others = similarity.sum(dim=1) - similarity.diagonal()
        return -others / (count - 1)

    return Objective(evaluate, frozenset({layer}), name=f"diversity {layer}")


def as_objective(spec: Objective | int | str | Unit) -> Objective:
    """An Objective from itself, a class index, a Unit, or text: "layer:channel" (channel mean),
    "layer:channel:y:x" (one neuron) or "class:C"."""
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, bool):
        raise TypeError("an objective cannot be a bool")
    if isinstance(spec, int):
        return class_score(spec)
    if isinstance(spec, Unit):
        if spec.y is None:
            return channel(spec.layer, spec.channel)
        return neuron(spec.layer, spec.channel, spec.y, spec.x)
    if isinstance(spec, str):
        if spec.startswith("class:"):
            return class_score(int(spec.removeprefix("class:")))
        try:
            return as_objective(Unit.parse(spec))
        except ValueError as error:
            raise ConvlensError(
                f"objective {spec!r}: {error}; use 'layer:channel', 'layer:channel:y:x' or 'class:C'"
            ) from None
    raise TypeError(f"cannot make an objective from {type(spec).__name__}")
