"""Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7): slide a square of `fill` over the image
and record, for each occluder position, the target class probability, the most probable class
and the strongest feature map's total activation, all from one forward of each occluded image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from convlens._errors import ConvlensError
from convlens.attribution import class_indices
from convlens.hooks import capture, model_device, preserved_state, registered_hooks, resolve_layer
from convlens.models.fusion import fold_batchnorm

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of activations for one batch of occluded images
MAX_BATCH = 32  # larger CPU batches were slower (cache); measured on alexnet and resnet18


@dataclass(frozen=True)
class Occlusion:
    """Maps over occluder positions for N images: `prob`, `argmax`, `activation` are (N, Py, Px);
    `sensitivity` is (N, H, W), the drop in target probability averaged over the windows that
    cover each pixel. Row i of a map is the occluder whose top-left corner is at `ys[i]`."""

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

    def __getitem__(self, i: int) -> Occlusion:
        """The result of image i alone (maps keep a leading axis of 1)."""
        pick = slice(i, i + 1)
        return Occlusion(
            self.prob[pick],
            self.argmax[pick],
            self.target[pick],
            self.base_prob[pick],
            self.sensitivity[pick],
            self.ys,
            self.xs,
            self.window,
            None if self.activation is None else self.activation[pick],
            None if self.channel is None else self.channel[pick],
            self.layer,
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
    """
    images = _as_batch(image)
    _check_geometry(images.shape[-2:], window, stride)
    device = model_device(model)
    images = images.to(device)
    ys, xs = corners(images.shape[-2], window, stride), corners(images.shape[-1], window, stride)
    grid_y, grid_x = (axis.flatten().to(device) for axis in torch.meshgrid(ys, xs, indexing="ij"))
    layers = [layer] if layer else []
    for name in layers:
        resolve_layer(model, name)
    with preserved_state(model), torch.inference_mode():
        runner = fold_batchnorm(model, images[:1], keep=layers)
    with (
        preserved_state(model),
        torch.inference_mode(),
        capture(runner, layers, reduce=_spatial_sums) as acts,
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast),
    ):
        logits = acts.forward(images).float()
        targets = (
            logits.argmax(dim=1)
            if target is None
            else class_indices(target, len(images), logits.shape[1]).to(device)
        )
        base_prob = logits.softmax(dim=1).gather(1, targets[:, None])[:, 0]
        channel = acts[layer].argmax(dim=1) if layer else None
        per_forward = batch_size or _batch_size(runner, images[:1], memory_budget)
        maps = _occluded_maps(
            acts,
            images,
            targets,
            channel,
            layer,
            (grid_y, grid_x),
            window,
            fill,
            per_forward,
            progress,
        )
    shape = (len(images), len(ys), len(xs))
    prob, argmax, activation = (None if m is None else m.view(shape).cpu() for m in maps)
    drop = base_prob.cpu()[:, None, None] - prob
    return Occlusion(
        prob=prob,
        argmax=argmax,
        target=targets.cpu(),
        base_prob=base_prob.cpu(),
        sensitivity=coverage_average(drop, stride, window, tuple(images.shape[-2:])),
        ys=ys,
        xs=xs,
        window=window,
        activation=activation,
        channel=None if channel is None else channel.cpu(),
        layer=layer,
    )


def _occluded_maps(
    acts,
    images: torch.Tensor,
    targets: torch.Tensor,
    channel: torch.Tensor | None,
    layer: str | None,
    grid: tuple[torch.Tensor, torch.Tensor],
    window: int,
    fill: float,
    per_forward: int,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(N, P) target probabilities, most probable classes and (optionally) activation sums over
    the P occluder positions, each occluded image forwarded once, `per_forward` at a time."""
    grid_y, grid_x = grid
    positions = len(grid_y)
    prob = torch.empty(len(images), positions, device=images.device)
    argmax = torch.empty(len(images), positions, dtype=torch.long, device=images.device)
    activation = torch.empty_like(prob) if layer else None
    bar = tqdm(total=len(images) * positions, desc="occlusion", unit="img", disable=not progress)
    for n, image in enumerate(images):
        for start in range(0, positions, per_forward):
            part = slice(start, start + per_forward)
            batch = occluded_batch(image, grid_y[part], grid_x[part], window, fill)
            batch = batch.contiguous(memory_format=torch.channels_last)
            probs = acts.forward(batch).float().softmax(dim=1)
            prob[n, part] = probs[:, targets[n]]
            argmax[n, part] = probs.argmax(dim=1)
            if layer:
                activation[n, part] = acts[layer][:, channel[n]]
            bar.update(len(batch))
    bar.close()
    return prob, argmax, activation


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
