"""Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7): slide a square of `fill` over the image
and record, for each occluder position, the target class probability, the most probable class
and the strongest feature map's total activation, all from one forward of each occluded image.

That forward is incremental where the model allows (`convlens.incremental`): every occluded image
is the original with one square changed, so each convolution, pooling and pointwise layer is
recomputed only over the region the square can reach, on the original image's activations; batch
norm is folded into the conv before it (`convlens.models.fusion`). A model torch.fx cannot trace,
or one where the incremental forward disagrees with the plain one at the first and last corner,
runs whole occluded images instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from convlens._errors import ConvlensError
from convlens._progress import tqdm
from convlens._shown import Shown
from convlens.attribution import deconvnet
from convlens.hooks import capture, model_device, preserved_state, registered_hooks, resolve_layer
from convlens.incremental import IncrementalForward, Patch, Untraceable
from convlens.models.card import UNKNOWN, ModelCard, card_of
from convlens.models.fusion import bfloat16_copy, fold_batchnorm, outputs_agree
from convlens.targets import Unit, class_indices

EXACT_AGREEMENT = 1e-4  # incremental vs plain forward, relative to the output's scale
FAST_AGREEMENT = 5e-2  # the same in bfloat16
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of activations for one batch of occluded images
MAX_BATCH = 32  # larger CPU batches were slower (cache); measured on alexnet and resnet18


@dataclass(frozen=True)
class Occlusion(Shown):
    """Maps over occluder positions for N images: `prob`, `argmax`, `activation` are (N, Py, Px);
    `sensitivity` is (N, H, W), the drop in target probability averaged over the windows that
    cover each pixel. Row i of a map is the occluder whose top-left corner is at `ys[i]`. With
    a `layer`, `projection` (N, C, H, W) is the deconvnet projection of the map each image
    followed (Fig. 7 (c)). `images` are the images occluded (input space) and `card` their
    model's, for the picture."""

    prob: torch.Tensor
    argmax: torch.Tensor
    target: torch.Tensor
    base_prob: torch.Tensor
    sensitivity: torch.Tensor
    ys: torch.Tensor
    xs: torch.Tensor
    window: int
    activation: torch.Tensor | None = None
    channel: torch.Tensor | None = None
    layer: str | None = None
    projection: torch.Tensor | None = None
    images: torch.Tensor | None = None
    card: ModelCard = UNKNOWN

    def __getitem__(self, i: int) -> Occlusion:
        """The result of image i alone (maps keep a leading axis of 1)."""
        pick = slice(i, i + 1)
        per_image = ("prob", "argmax", "target", "base_prob", "sensitivity", "activation")
        per_image += ("channel", "projection", "images")
        return replace(
            self,
            **{
                name: None if getattr(self, name) is None else getattr(self, name)[pick]
                for name in per_image
            },
        )


def default_geometry(size: int, window: int | None = None) -> tuple[int, int]:
    """(window, stride): the window given or about 1/7 of the image side, and a stride of a
    quarter window (32 and 8 at 224 pixels, 4 and 1 at 28)."""
    window = window or max(1, round(size / 7))
    return window, max(1, window // 4)


def corners(size: int, window: int, stride: int) -> torch.Tensor:
    """Top-left corners of the occluder along one axis: range(0, size - window + 1, stride)."""
    return torch.arange(0, size - window + 1, stride)


def occluded_batch(
    image: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, window: int, fill: float
) -> torch.Tensor:
    """(P, C, H, W): `image` once per corner (ys[p], xs[p]) with that square set to `fill`,
    built with one broadcast comparison, not a Python loop over positions."""
    height, width = image.shape[-2:]
    rows = torch.arange(height, device=image.device)
    cols = torch.arange(width, device=image.device)
    inside_rows = (rows >= ys[:, None]) & (rows < ys[:, None] + window)
    inside_cols = (cols >= xs[:, None]) & (cols < xs[:, None] + window)
    square = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
    return torch.where(square, torch.tensor(fill, dtype=image.dtype), image.unsqueeze(0))


def coverage_average(
    values: torch.Tensor, stride: int, window: int, size: tuple[int, int]
) -> torch.Tensor:
    """(N, H, W): per pixel, the mean of `values` (N, Py, Px) over the occluder windows covering
    it (0 where none reaches). The windows' sums are a transposed convolution with a box kernel."""
    box = torch.ones(1, 1, window, window, dtype=values.dtype, device=values.device)
    summed = nn.functional.conv_transpose2d(values.unsqueeze(1), box, stride=stride)
    count = nn.functional.conv_transpose2d(
        torch.ones_like(values[:1]).unsqueeze(1), box, stride=stride
    )
    mean = summed / count.clamp(min=1)
    height, width = size
    mean = nn.functional.pad(mean, (0, width - mean.shape[-1], 0, height - mean.shape[-2]))
    return mean[:, 0]


def occlusion(
    model: nn.Module,
    image: torch.Tensor | list[torch.Tensor],
    target: int | list[int] | torch.Tensor | None = None,
    *,
    window: int,
    stride: int,
    fill: float = 0.0,
    layer: str | None = None,
    fast: bool = False,
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    project: bool = True,
    progress: bool = False,
) -> Occlusion:
    """Occlusion maps of one image (C, H, W) or several ((N, C, H, W) or a list), in one pass.

    Example:
        >>> maps = occlusion(model, image, window=8, stride=2, layer="features.13")  # doctest: +SKIP
        >>> maps.prob.shape, maps.channel  # (1, Py, Px), the strongest map of features.13
        (torch.Size([1, 11, 11]), tensor([41]))

    Args:
        image: preprocessed like the model's input.
        target: class(es) whose probability is mapped; default: each image's prediction.
        window, stride: the occluder's side and step in pixels; corners are
            range(0, H - window + 1, stride) along each axis.
        fill: the occluder's value in the model's input space (0 is the mean for normalised input).
        layer: also map the total activation of this layer's strongest feature map (the one with
            the largest spatial sum on the unoccluded image).
        fast: run the forwards in bfloat16 (maps close to, not equal to, the exact ones).
        batch_size: occluded images per forward; default: as many as `memory_budget` allows.
        project: with `layer`, also project the followed map with the deconvnet (Fig. 7 (c),
            one backward pass; skipped under `torch.inference_mode`, where nothing can be
            differentiated).
    """
    images = _as_batch(image)
    _check_geometry(images.shape[-2:], window, stride)
    device = model_device(model)
    images = images.to(device)
    ys, xs = corners(images.shape[-2], window, stride), corners(images.shape[-1], window, stride)
    grid_y, grid_x = (axis.flatten().to(device) for axis in torch.meshgrid(ys, xs, indexing="ij"))
    if layer:
        resolve_layer(model, layer)
    with preserved_state(model), torch.inference_mode():
        base = _base_forward(model, images, target, layer, fast)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            per_forward = batch_size or _batch_size(base.runner, images[:1], memory_budget)
            maps = _occluded_maps(
                base, images, (grid_y, grid_x), window, fill, per_forward, progress, fast
            )
    found = _result(base, maps, ys, xs, window, stride, tuple(images.shape[-2:]))
    projection = None
    if found.layer is not None and project and not torch.is_inference_mode_enabled():
        units = [Unit(found.layer, int(channel)) for channel in found.channel]
        projection = deconvnet(model, images, units).detach().cpu()
    return replace(found, projection=projection, images=images.cpu(), card=card_of(model))


@dataclass(frozen=True)
class _BaseForward:
    """The unoccluded forward: the network to occlude with (batch norm folded, bfloat16 when
    fast), target classes, their probabilities and `layer`'s strongest map per image."""

    runner: nn.Module
    targets: torch.Tensor
    base_prob: torch.Tensor
    layer: str | None
    channel: torch.Tensor | None


def _base_forward(
    model: nn.Module,
    images: torch.Tensor,
    target: int | list[int] | torch.Tensor | None,
    layer: str | None,
    fast: bool,
) -> _BaseForward:
    """Fold batch norm (cast to bfloat16 when `fast`) and forward the unoccluded images."""
    layers = [layer] if layer else []
    runner = fold_batchnorm(model, images[:1], keep=layers)
    if fast:
        runner = bfloat16_copy(runner, model)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=fast):
        with capture(runner, layers, reduce=_spatial_sums) as acts:
            logits = acts.forward(images).float()
        targets = (
            logits.argmax(dim=1)
            if target is None
            else class_indices(target, len(images), logits.shape[1]).to(images.device)
        )
        base_prob = logits.softmax(dim=1).gather(1, targets[:, None])[:, 0]
        channel = acts[layer].argmax(dim=1) if layer else None
    return _BaseForward(runner, targets, base_prob, layer, channel)


def _result(
    base: _BaseForward,
    maps: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    ys: torch.Tensor,
    xs: torch.Tensor,
    window: int,
    stride: int,
    size: tuple[int, int],
) -> Occlusion:
    """The Occlusion of the (N, P) maps, reshaped to (N, Py, Px) on the CPU, with sensitivity."""
    shape = (len(maps[0]), len(ys), len(xs))
    prob, argmax, activation = (None if m is None else m.view(shape).cpu() for m in maps)
    drop = base.base_prob.cpu()[:, None, None] - prob
    return Occlusion(
        prob=prob,
        argmax=argmax,
        target=base.targets.cpu(),
        base_prob=base.base_prob.cpu(),
        sensitivity=coverage_average(drop, stride, window, size),
        ys=ys,
        xs=xs,
        window=window,
        activation=activation,
        channel=None if base.channel is None else base.channel.cpu(),
        layer=base.layer,
    )


def _occluded_maps(
    base: _BaseForward,
    images: torch.Tensor,
    grid: tuple[torch.Tensor, torch.Tensor],
    window: int,
    fill: float,
    per_forward: int,
    progress: bool,
    fast: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(N, P) target probabilities, most probable classes and (optionally) activation sums over
    the P occluder positions, each occluded image forwarded once, `per_forward` at a time."""
    runner, targets, layer, channel = base.runner, base.targets, base.layer, base.channel
    grid_y, grid_x = grid
    positions = len(grid_y)
    prob = torch.empty(len(images), positions, device=images.device)
    argmax = torch.empty(len(images), positions, dtype=torch.long, device=images.device)
    activation = torch.empty_like(prob) if layer else None
    incremental = _incremental(runner, layer)
    bar = tqdm(total=len(images) * positions, desc="occlusion", unit="img", disable=not progress)
    for n, image in enumerate(images):
        forward = _occluded_forward(runner, incremental, image, layer, window, fill, grid, fast)
        for start in range(0, positions, per_forward):
            part = slice(start, start + per_forward)
            logits, sums = forward(grid_y[part], grid_x[part])
            probs = logits.float().softmax(dim=1)
            prob[n, part] = probs[:, targets[n]]
            argmax[n, part] = probs.argmax(dim=1)
            if layer:
                activation[n, part] = sums[:, channel[n]]
            bar.update(len(probs))
    bar.close()
    return prob, argmax, activation


OccludedForward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def _incremental(runner: nn.Module, layer: str | None) -> IncrementalForward | None:
    try:
        return IncrementalForward(runner, layer)
    except Untraceable:
        return None


def _occluded_forward(
    runner: nn.Module,
    incremental: IncrementalForward | None,
    image: torch.Tensor,
    layer: str | None,
    window: int,
    fill: float,
    grid: tuple[torch.Tensor, torch.Tensor],
    fast: bool,
) -> OccludedForward:
    """A function of occluder corners (ys, xs) giving the logits and the layer's per-map sums
    of `image` occluded there: the incremental forward, which recomputes each local layer only
    where the square can change it, when the model traces and it agrees with the plain forward
    at the first and last corner; the plain forward of whole occluded images otherwise."""

    def plain(ys: torch.Tensor, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = occluded_batch(image, ys, xs, window, fill)
        with capture(runner, [layer] if layer else [], reduce=_spatial_sums) as acts:
            logits = acts.forward(batch.contiguous(memory_format=torch.channels_last))
        return logits, acts.get(layer)

    if incremental is None:
        return plain
    try:
        incremental.set_base(image[None])
    except Untraceable:
        return plain

    def patched(ys: torch.Tensor, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        square = torch.full(
            (len(ys), image.shape[0], window, window), fill, dtype=image.dtype, device=image.device
        )
        logits, maps = incremental(Patch(square, ys, xs, image[None]))
        return logits, None if maps is None else _spatial_sums(maps)

    ends = torch.tensor([0, len(grid[0]) - 1], device=image.device)
    corners_y, corners_x = grid[0][ends], grid[1][ends]
    tolerance = FAST_AGREEMENT if fast else EXACT_AGREEMENT
    pairs = zip(plain(corners_y, corners_x), patched(corners_y, corners_x))
    if all(_agree(expected, got, tolerance) for expected, got in pairs):
        return patched
    warnings.warn(
        "the incremental occlusion forward disagreed with the plain one on this model; "
        "using the plain forward (slower, same maps)",
        stacklevel=4,
    )
    return plain


def _agree(expected: torch.Tensor | None, got: torch.Tensor | None, tolerance: float) -> bool:
    if expected is None or got is None:
        return expected is None and got is None
    return outputs_agree(expected, got, tolerance)


def _spatial_sums(output: torch.Tensor) -> torch.Tensor:
    """(B, C) total activation of each feature map."""
    if output.dim() != 4:
        raise ConvlensError(
            f"occlusion needs a layer with (N, C, H, W) feature maps; got output shape {tuple(output.shape)}"
        )
    return output.float().sum(dim=(2, 3))


def _as_batch(image: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    if isinstance(image, (list, tuple)):
        shapes = {tuple(i.shape) for i in image}
        if len(shapes) != 1:
            raise ValueError(
                f"images of different shapes {sorted(shapes)}; resize them alike first"
            )
        image = torch.stack(list(image))
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be (C, H, W) or (N, C, H, W), got {shape}")
    return image.unsqueeze(0) if image.dim() == 3 else image


def _check_geometry(size: torch.Size, window: int, stride: int) -> None:
    if stride <= 0:
        raise ConvlensError(f"stride must be a positive number of pixels, got {stride}")
    if window <= 0 or window > min(size):
        raise ConvlensError(
            f"window {window} does not fit the {size[0]}x{size[1]} image; "
            f"choose 1..{min(size)} pixels"
        )


def _batch_size(model: nn.Module, image: torch.Tensor, budget: int) -> int:
    """How many occluded images fit `budget` bytes: a forward keeps about a module's input and
    output alive at once, so an image costs ~3x its largest activation."""
    largest = image.numel() * image.element_size()
    sizes: list[int] = []

    def record(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    with registered_hooks() as handles:
        for module in model.modules():
            if not list(module.children()):
                handles.append(module.register_forward_hook(record))
        model(image)
    largest = max([largest, *sizes])
    return int(max(1, min(MAX_BATCH, budget // (3 * largest))))
