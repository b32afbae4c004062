"""Unit-sized synthesis: for every unit of a layer at once, an image just large enough to hold the
receptive field of the map's centre position, optimised to excite that one neuron (as Zeiler &
Fergus show receptive-field patches), or to point that position's activations along a direction
in channel space (neuron groups, activation atlas icons). On a 224-pixel model a first-layer unit gets a 13-pixel
image instead of a 224-pixel one, and the forward stops at the unit's layer."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from convlens._errors import ConvlensError
from convlens.cone import Cone
from convlens.hooks import capture, model_device, preserved_state
from convlens.locality import Untraceable
from convlens.models.layers import ReceptiveField, receptive_field
from convlens.models.loading import LoadedModel
from convlens.synthesis.objectives import Objective, direction_neuron, neuron
from convlens.synthesis.optimize import Synthesis, resolve_model, synthesize

# Unit-canvas images: 96 Adam steps at learning rate 0.1 took 96 % of the trained built-in
# network's firing units past their best test image (64 steps: 92 %; the Lucid rate 0.05 needs
# ~256). The atlas's unit images and the icons of directions use them.
UNIT_STEPS, UNIT_LR = 96, 0.1

PIXEL_BUDGET = 16 * 224 * 224
"""Input pixels optimised at once by default (`synthesize_directions`, the atlas): 16 images of
224 pixels (resnet50 to layer4 with its gradients needs about 3 GB for them), 25 of alexnet's
177-pixel features.11 units, all 64 of its 13-pixel features.1 units."""


def budget_chunk(side: int) -> int:
    """Images of `side` pixels optimised at once within `PIXEL_BUDGET`."""
    return max(1, PIXEL_BUDGET // side**2)


@dataclass(frozen=True)
class Canvas:
    """The input side for a layer's unit images and the map position (y, x) whose receptive
    field that input holds whole (the model's own input size and its centre position when the
    receptive field is larger)."""

    side: int
    y: int
    x: int


def unit_canvas(model: nn.Module, layer: str, input_size: tuple[int, int, int]) -> Canvas:
    """The smallest square input holding the receptive field of one position of `layer`.

    Example:
        >>> unit_canvas(torchvision.models.alexnet(), "features.1", (3, 224, 224))  # doctest: +SKIP
        Canvas(side=13, y=1, x=1)
    """
    field = receptive_field(model, layer, input_size)
    full = min(input_size[-2:])
    y, start = _first_whole(field, 0)
    x, left = _first_whole(field, 1)
    side = max(start + field.size[0], left + field.size[1])
    while side < full:
        shape = _map_shape(model, layer, input_size[0], side)
        if shape is not None and y < shape[0] and x < shape[1]:
            return Canvas(side, y, x)
        side += max(field.stride)
    shape = _map_shape(model, layer, input_size[0], full)
    return Canvas(full, shape[0] // 2, shape[1] // 2)


def _first_whole(field: ReceptiveField, axis: int) -> tuple[int, int]:
    """The first position along `axis` whose receptive field starts inside the image, and where
    that field starts."""
    position = max(0, math.ceil(-field.offset[axis] / field.stride[axis]))
    return position, field.offset[axis] + position * field.stride[axis]


def _map_shape(model: nn.Module, layer: str, channels: int, side: int) -> tuple[int, int] | None:
    """(h, w) of `layer`'s map for a side x side input, or None when the model cannot run on it."""
    x = torch.zeros(1, channels, side, side, device=model_device(model))
    try:
        with preserved_state(model), capture(model, [layer], stop=True) as acts, torch.no_grad():
            acts.forward(x)
    except RuntimeError:  # too small for some layer before this one
        return None
    output = acts[layer]
    return tuple(output.shape[-2:]) if output.dim() == 4 else None


def synthesize_units(
    model: nn.Module | LoadedModel,
    layer: str,
    channels: Sequence[int],
    *,
    batch_size: int | None = None,
    **options: object,
) -> tuple[Synthesis, Canvas]:
    """One image per channel of `layer`, optimised together `batch_size` at a time (None: all
    as one batch; the split does not change the images), each maximising the neuron of its
    channel at the canvas position (`unit_canvas`) on an input of the canvas side. `options`
    go to `synthesize` (preset, steps, seed, preprocess, fast, progress, lr, ...); with
    `offset`, the images are those these channels get as images `offset`, `offset + 1`, ...
    of a larger batch (the atlas resumes a layer's images chunk by chunk).

    Example:
        >>> made, canvas = synthesize_units(loaded, "features.4", range(192))  # doctest: +SKIP
        >>> made.images.shape  # 192 images of 51 + padding pixels instead of 224
    """
    channels = list(channels)
    return _on_canvas(
        model,
        layer,
        lambda part, y, x: neuron(layer, [channels[i] for i in part], y, x),
        [f"map {c}" for c in channels],
        batch_size,
        options,
    )


def synthesize_directions(
    model: nn.Module | LoadedModel,
    layer: str,
    vectors: torch.Tensor,
    *,
    cosine_power: float = 1.0,
    batch_size: int | None = None,
    labels: Sequence[str] | None = None,
    **options: object,
) -> tuple[Synthesis, Canvas]:
    """One image per direction (row of `vectors`, (M, K) in `layer`'s channel space) on the
    unit canvas, each maximising `direction_neuron` at the canvas position: the icons of
    neuron groups and of an activation atlas's cells, optimised together `batch_size` at a
    time (None: as many as fit `PIXEL_BUDGET`). `options` go to `synthesize`.

    Example:
        >>> made, _ = synthesize_directions(loaded, "features.13", groups.directions)  # doctest: +SKIP
    """
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    if vectors.dim() != 2 or not len(vectors):
        raise ConvlensError(f"vectors must be (M, K) with M >= 1, got {tuple(vectors.shape)}")
    return _on_canvas(
        model,
        layer,
        lambda part, y, x: direction_neuron(layer, vectors[part], y, x, cosine_power=cosine_power),
        list(labels) if labels is not None else [f"direction {i}" for i in range(len(vectors))],
        batch_size,
        options,
        bounded=True,
    )


def _on_canvas(
    model: nn.Module | LoadedModel,
    layer: str,
    objective_of: Callable[[list[int], int, int], Objective],
    labels: list[str],
    batch_size: int | None,
    options: dict[str, object],
    *,
    bounded: bool = False,
) -> tuple[Synthesis, Canvas]:
    """Images `0..len(labels)-1` on `layer`'s unit canvas, image i maximising its part of
    `objective_of(images, y, x)` (at map position (y, x)), with the redirected ReLU, in chunks
    of `batch_size` (None: one chunk, or with `bounded` as many as fit `PIXEL_BUDGET`). The
    model runs as the canvas position's `Cone` when that saves work."""
    module, prep = resolve_model(model, options.pop("preprocess", None))
    first = options.pop("offset", 0)  # these images' place in a larger batch
    canvas = unit_canvas(module, layer, (prep.channels, *prep.size))
    if bounded and batch_size is None:
        batch_size = budget_chunk(canvas.side)
    sized = replace(prep, size=(canvas.side, canvas.side), resize=None)
    whole_maps = bool(options.get("diversity_weight"))  # diversity compares whole maps
    runner, (y, x) = _runner(module, layer, prep.channels, canvas, whole_maps)

    def run(part: list[int], offset: int) -> Synthesis:
        return synthesize(
            runner,
            objective_of(part, y, x),
            n=len(part),
            preprocess=sized,
            redirect_relu=True,
            offset=first + offset,
            **options,
        )

    name = objective_of(list(range(len(labels))), canvas.y, canvas.x).name
    return in_chunks(run, labels, batch_size, name), canvas


CONE_WORK = 0.75
"""The largest share of the whole forward's convolution work at which unit images run on the
`Cone` (the crops cost time of their own: resnet18's layer4 cone, 85 % of the work, ran no
faster)."""


def _runner(
    module: nn.Module, layer: str, channels: int, canvas: Canvas, whole_maps: bool = False
) -> tuple[nn.Module, tuple[int, int]]:
    """What the unit images' forward runs, and the position of the unit in its output: the
    canvas position's cone, or the model itself when the objective needs `whole_maps`, fx
    cannot trace the model or the cone saves little."""
    if not whole_maps:
        try:
            cone = Cone(module, layer, (channels, canvas.side, canvas.side), (canvas.y, canvas.x))
        except Untraceable:
            cone = None
        if cone is not None and cone.work <= CONE_WORK:
            return cone, (0, 0)
    return module, (canvas.y, canvas.x)


def in_chunks(
    run: Callable[[list[int], int], Synthesis],
    labels: Sequence[str],
    batch_size: int | None,
    name: str,
) -> Synthesis:
    """`run(images, offset)` for each chunk of at most `batch_size` of the images (None: one
    chunk; `images` their places 0..len(labels)-1), joined into one Synthesis of objective
    `name`, image i captioned `labels[i]`. Memory is bounded by the chunk; with
    `synthesize(offset=...)` the images are those of one whole batch."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not labels:
        raise ValueError("nothing to synthesise: no channels or directions were given")
    size, count = batch_size or len(labels), len(labels)
    made = [run(list(range(i, min(i + size, count))), i) for i in range(0, count, size)]
    return replace(
        made[0],
        images=torch.cat([m.images for m in made]),
        inputs=torch.cat([m.inputs for m in made]),
        trace=torch.cat([m.trace for m in made], dim=1),
        objective=name,
        labels=tuple(labels),
    )
