"""Incremental forward (Nakandala et al. 2019, "Krypton"): images that equal one base image except
inside a box are run through the model recomputing each local layer (convolution, pooling,
pointwise and element-wise ops) only over the region of its output that can change, on the base
image's activations; the first non-local op (flatten, global pooling, a custom module) gets whole
maps. Occlusion is the use: every occluded image is the base with one square replaced.

The model is traced with torch.fx; a model fx cannot trace raises `Untraceable` and callers run
the plain forward instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from convlens.locality import (
    Untraceable,
    Window,
    apply_node,
    binary_node,
    output_node,
    pointwise_module,
    pointwise_node,
    traced,
    window_of,
)


@dataclass
class Patch:
    """A batch of P maps equal to `base` (1, C, H, W) except in the box [y, y + h) x [x, x + w)
    of each image, where they equal `data` (P, C, h, w)."""

    data: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    base: torch.Tensor

    def full(self) -> torch.Tensor:
        """The whole maps (P, C, H, W), channels-last."""
        count, height, width = len(self.y), *self.base.shape[2:]
        rows = torch.arange(height, device=self.y.device).expand(count, -1)
        cols = torch.arange(width, device=self.x.device).expand(count, -1)
        return _gather(self, self.base, (0, 0), rows, cols)


def _spans(origin: torch.Tensor, length: int) -> torch.Tensor:
    """(P, length) coordinates origin[p] + 0 .. length - 1."""
    return origin[:, None] + torch.arange(length, device=origin.device)


def _gather(
    patch: Patch, base: torch.Tensor, pads: tuple[int, int], rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """(P, h, w) → (P, C, h, w) channels-last: each patched map at `rows` (P, h) x `cols` (P, w),
    in coordinates of `base`, the patch's base padded by `pads`. One row gather of C values per
    pixel, from the base's pixels and the patch's stacked together."""
    channels, height, width = base.shape[1:]
    data = patch.data.permute(0, 2, 3, 1)  # (P, h', w', C): a view for channels-last data
    patch_height, patch_width = data.shape[1:3]
    pixels = torch.cat([base.permute(0, 2, 3, 1).reshape(-1, channels), data.reshape(-1, channels)])
    in_rows = rows - (patch.y[:, None] + pads[0])
    in_cols = cols - (patch.x[:, None] + pads[1])
    inside = ((in_rows >= 0) & (in_rows < patch_height))[:, :, None] & (
        (in_cols >= 0) & (in_cols < patch_width)
    )[:, None, :]
    images = torch.arange(len(rows), device=rows.device)[:, None, None]
    from_patch = (
        height * width
        + (images * patch_height + in_rows[:, :, None]) * patch_width
        + in_cols[:, None, :]
    )
    from_base = rows[:, :, None] * width + cols[:, None, :]
    index = torch.where(inside, from_patch, from_base)
    gathered = pixels.index_select(0, index.flatten())
    return gathered.view(*index.shape, channels).permute(0, 3, 1, 2)


def _affected(
    start: torch.Tensor,
    size: int,
    out_length: int,
    kernel: int,
    stride: int,
    pad: int,
    dilation: int,
) -> tuple[torch.Tensor, int]:
    """Along one axis: the origin (P,) and common length of the output span that reads input
    [start, start + size), kept inside the output and equal in length for every image."""
    reach = dilation * (kernel - 1)
    low = -torch.div(-(start + pad - reach), stride, rounding_mode="floor")
    high = torch.div(start + size - 1 + pad, stride, rounding_mode="floor")
    low, high = low.clamp(min=0), high.clamp(max=out_length - 1)
    length = max(1, int((high - low + 1).max()))
    if length >= out_length:
        return torch.zeros_like(start), out_length
    return low.clamp(max=out_length - length), length


def _slide(window: Window, patch: Patch, base_out: torch.Tensor) -> Patch:
    """The op's output over the region its patched input can change."""
    origins, sizes = [], []
    for axis, start in enumerate((patch.y, patch.x)):
        origin, length = _affected(
            start,
            patch.data.shape[2 + axis],
            base_out.shape[2 + axis],
            window.kernel[axis],
            window.stride[axis],
            window.pad[axis],
            window.dilation[axis],
        )
        origins.append(origin)
        sizes.append(length)
    padded = F.pad(
        patch.base,
        (window.pad[1], window.pad[1], window.pad[0], window.pad[0]),
        value=window.pad_value,
    )
    reads = [window.reads(axis, origins[axis], sizes[axis]) for axis in (0, 1)]
    rows, cols = (
        _spans(start + window.pad[axis], size) for axis, (start, size) in enumerate(reads)
    )
    output = window.run(_gather(patch, padded, window.pad, rows, cols))
    return Patch(output, origins[0], origins[1], base_out)


def _union(
    a: Patch, b: Patch
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The two patches' maps over one box per image that holds both boxes."""
    origins, sizes = [], []
    for axis, (start_a, start_b) in enumerate(((a.y, b.y), (a.x, b.x))):
        low = torch.minimum(start_a, start_b)
        high = torch.maximum(start_a + a.data.shape[2 + axis], start_b + b.data.shape[2 + axis])
        total = a.base.shape[2 + axis]
        length = min(int((high - low).max()), total)
        origins.append(low.clamp(max=total - length))
        sizes.append(length)
    rows, cols = _spans(origins[0], sizes[0]), _spans(origins[1], sizes[1])
    crops = (_gather(p, p.base, (0, 0), rows, cols) for p in (a, b))
    return *crops, (origins[0], origins[1])


class _BaseRecorder(fx.Interpreter):
    """Runs the base image once and keeps every node's output (cloned, so later in-place ops
    cannot change it; maps channels-last, so a pixel's channels are one row)."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.outputs: dict[str, object] = {}

    def run_node(self, node: fx.Node) -> object:
        result = super().run_node(node)
        if isinstance(result, torch.Tensor):
            layout = torch.channels_last if result.dim() == 4 else torch.preserve_format
            self.outputs[node.name] = result.clone(memory_format=layout)
        else:
            self.outputs[node.name] = result
        return result


class _IncrementalInterpreter(fx.Interpreter):
    """Runs a batch of patched inputs; every tensor value is a Patch while the ops stay local."""

    def __init__(self, owner: IncrementalForward) -> None:
        super().__init__(owner.module)
        self.owner = owner
        self.captured: torch.Tensor | None = None

    def run_node(self, node: fx.Node) -> object:
        args, kwargs = self.fetch_args_kwargs_from_env(node)
        result = self._local(node, args, kwargs)
        if result is None:
            args, kwargs = fx.node.map_aggregate((args, kwargs), _whole)
            result = getattr(self, node.op)(node.target, args, kwargs)
        if node is self.owner.layer_node:
            self.captured = _whole(result)
        return result

    def _local(self, node: fx.Node, args: tuple, kwargs: dict) -> Patch | None:
        """The node's output as a Patch when its op is local and its input a Patch, else None."""
        if not args or not isinstance(args[0], Patch):
            return None
        base_out = self.owner.base_outputs[node.name]
        patch = args[0]
        if node.op == "call_module":
            module = self.owner.module.get_submodule(node.target)
            window = window_of(module)
            if window is not None and len(args) == 1 and not kwargs:
                return _slide(window, patch, base_out)
            if pointwise_module(module) and len(args) == 1 and not kwargs:
                return Patch(module(patch.data.clone()), patch.y, patch.x, base_out)
            return None
        pointwise, binary = pointwise_node(self.owner.module, node), binary_node(node)
        tensors = (Patch, torch.Tensor)
        if pointwise and not any(isinstance(a, tensors) for a in (*args[1:], *kwargs.values())):
            return Patch(
                apply_node(node, patch.data.clone(), args[1:], kwargs), patch.y, patch.x, base_out
            )
        if binary and len(args) == 2 and not kwargs:
            other = args[1]
            if isinstance(other, (int, float)):
                return Patch(
                    apply_node(node, patch.data.clone(), (other,), {}), patch.y, patch.x, base_out
                )
            if isinstance(other, Patch) and other.base.shape == patch.base.shape:
                first, second, (y, x) = _union(patch, other)
                return Patch(apply_node(node, first, (second,), {}), y, x, base_out)
        return None


def _whole(value: object) -> object:
    return value.full() if isinstance(value, Patch) else value


class IncrementalForward:
    """Forward images that equal a base image (1, C, H, W) except inside a box each.

    Example:
        >>> forward = IncrementalForward(model, layer="layer4")  # doctest: +SKIP
        >>> forward.set_base(image[None])
        >>> logits, maps = forward(Patch(torch.zeros(8, 3, 32, 32), ys, xs, image[None]))

    `layer`'s whole output (P, C, h, w) is returned beside the logits (None without a layer).
    Run it in inference mode with the model in eval mode.
    """

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        self.module = traced(model)
        self.layer_node = output_node(self.module, layer) if layer else None
        self.base_outputs: dict[str, object] = {}

    def set_base(self, base: torch.Tensor) -> None:
        """Run the base image once; later patches are pasted onto its activations."""
        recorder = _BaseRecorder(self.module)
        try:
            recorder.run(base)
        except Exception as error:  # a traced graph can fail where the eager model did not
            raise Untraceable(f"the traced model failed on the image: {error}") from error
        self.base_outputs = recorder.outputs

    def __call__(self, patch: Patch) -> tuple[torch.Tensor, torch.Tensor | None]:
        interpreter = _IncrementalInterpreter(self)
        output = _whole(interpreter.run(patch))
        return output, interpreter.captured
