"""The cone forward: one position of a layer computed from only what it depends on. Every local op
below the layer (convolution, pooling, pointwise and element-wise ops) is run over just the
region of its output that the position reads, found by walking the traced graph back from the
position (each window's input span is (o - 1) * stride - pad + dilation * (kernel - 1) + 1 from
output span o); an op that is not local gets its whole input and gives its whole output. The
result equals the layer's whole map at that position, and so do the gradients, which are zero
outside the cone anyway; on a deep layer it is several times less work (alexnet's features.11
on its 177-pixel unit canvas: conv5 at 1 position instead of 81, conv2 at 11x11 instead of
21x21). Unit synthesis is the use: every step optimises one position of a layer.

The model is traced with torch.fx; a model fx cannot trace raises `Untraceable`, and callers run
the plain forward instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from convlens._errors import ConvlensError
from convlens.hooks import model_device, preserved_state
from convlens.locality import (
    Untraceable,
    Window,
    binary_node,
    output_node,
    pointwise_node,
    traced,
    window_of,
)

Box = tuple[int, int, int, int]
"""A region of a map: rows [top, bottom) and columns [left, right)."""


@dataclass(frozen=True)
class _Plan:
    """How one node is computed: `kind` "window", "pointwise", "binary" or "whole", the region
    `box` of its output that is kept, and its window (window nodes only)."""

    kind: str
    box: Box
    window: Window | None = None


class Cone(nn.Module):
    """The output of `layer` at map position (y, x) for inputs of `input_size` (C, H, W), as a
    (N, C, 1, 1) map, computed over the position's cone only, the model in eval mode. The
    module at `layer`'s name inside it is an identity that sees that output, so
    `capture(cone, [layer])` records it; `work` is the share of the whole forward's convolution
    work (multiply-adds) it does.

    Example:
        >>> cone = Cone(model, "features.11", (3, 177, 177), (5, 5))  # doctest: +SKIP
        >>> cone(images).shape
        torch.Size([8, 256, 1, 1])  # model's features.11 output at [..., 5:6, 5:6]
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        input_size: tuple[int, int, int],
        position: tuple[int, int],
    ) -> None:
        super().__init__()
        self._traced = traced(model)
        self.layer_node = output_node(self._traced, layer)
        example = torch.zeros(1, *input_size, device=model_device(model))
        with preserved_state(model, training=False):  # the plan holds for eval mode, as run
            shapes = _shapes(self._traced, self.layer_node, example)
            self.plans = _plan(self._traced, self.layer_node, shapes, position)
        self.layer = layer
        self.work = _conv_work(self._traced, self.plans, shapes)
        _hold(self, layer)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, side, side) → (N, C', 1, 1): the layer's activations at the position."""
        values: dict[fx.Node, tuple[object, Box | None]] = {}
        for node in self._traced.graph.nodes:
            if node not in self.plans:
                continue
            values[node] = self._run(node, images, values)
            if node is self.layer_node:
                return self.get_submodule(self.layer)(values[node][0])
        raise Untraceable("the layer was not reached")  # a plan always holds the layer node

    def _run(self, node: fx.Node, images: torch.Tensor, values: dict) -> tuple[object, Box | None]:
        """One node's value over its planned box (and the box)."""
        plan = self.plans[node]
        if node.op == "placeholder":
            return _crop(images, _full(tuple(images.shape)), plan.box), plan.box
        if plan.kind == "window":
            value, box = values[node.args[0]]
            return _windowed(plan.window, value, box, plan.box), plan.box
        if plan.kind in ("pointwise", "binary"):
            args = tuple(_cropped(values.get(a, (a, None)), plan.box) for a in node.args)
            kwargs = {
                k: _cropped(values.get(v, (v, None)), plan.box) for k, v in node.kwargs.items()
            }
            return _call(self._traced, node, args, kwargs), plan.box
        args = fx.node.map_arg(node.args, lambda a: values[a][0])
        kwargs = fx.node.map_arg(node.kwargs, lambda a: values[a][0])
        return _call(self._traced, node, args, kwargs), plan.box


def _hold(cone: Cone, layer: str) -> None:
    """An identity module at `layer`'s dotted name inside `cone`, for `capture` to hook."""
    parent: nn.Module = cone
    *path, last = layer.split(".")
    for part in path:
        if not hasattr(parent, part):
            parent.add_module(part, nn.Module())
        parent = getattr(parent, part)
    parent.add_module(last, nn.Identity())


def _conv_work(module: fx.GraphModule, plans: dict[fx.Node, _Plan], shapes: dict) -> float:
    """The convolutions' multiply-adds over their planned boxes, as a share of those over their
    whole outputs."""
    done = whole = 0
    for node, plan in plans.items():
        if plan.kind == "window" and isinstance(module.get_submodule(node.target), nn.Conv2d):
            size = module.get_submodule(node.target).weight.numel()
            top, bottom, left, right = plan.box
            done += size * (bottom - top) * (right - left)
            whole += size * shapes[node][2] * shapes[node][3]
    return done / whole if whole else 1.0


def _shapes(
    module: fx.GraphModule, layer: fx.Node, example: torch.Tensor
) -> dict[fx.Node, tuple[int, ...] | None]:
    """Each node's output shape on `example` (None: not a tensor), up to the layer."""
    shapes: dict[fx.Node, tuple[int, ...] | None] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> object:
            result = super().run_node(node)
            shapes[node] = tuple(result.shape) if isinstance(result, torch.Tensor) else None
            if node is layer:
                raise _Reached
            return result

    try:
        with torch.no_grad():
            Recorder(module).run(example)
    except _Reached:
        return shapes
    except Exception as error:  # a traced graph can fail where the eager model did not
        raise Untraceable(f"the traced model failed on the input: {error}") from error
    raise Untraceable("the layer was not reached")


class _Reached(Exception):
    """The shape recorder reached the layer."""


def _plan(
    module: fx.GraphModule,
    layer: fx.Node,
    shapes: dict[fx.Node, tuple[int, ...] | None],
    position: tuple[int, int],
) -> dict[fx.Node, _Plan]:
    """Every node the layer depends on, with the box of its output the position needs: walked
    from the layer back, each box the union of what its users read."""
    if shapes[layer] is None or len(shapes[layer]) != 4:
        raise Untraceable("the layer's output is not a (N, C, H, W) map")
    y, x = position
    if not (0 <= y < shapes[layer][2] and 0 <= x < shapes[layer][3]):
        raise ConvlensError(f"position {position} is outside the {shapes[layer][2:]} map")
    needed: dict[fx.Node, Box] = {layer: (y, y + 1, x, x + 1)}
    plans: dict[fx.Node, _Plan] = {}
    order = [n for n in module.graph.nodes if n in shapes]
    for node in reversed(order):
        if node not in needed:
            continue
        kind, window = _kind(module, node, shapes)
        box = needed[node] if kind != "whole" else _full(shapes[node])
        plans[node] = _Plan(kind, box, window)
        for source, wanted in _reads(node, kind, window, box, shapes):
            needed[source] = _union(needed.get(source), wanted)
    return plans


def _kind(module: fx.GraphModule, node: fx.Node, shapes: dict) -> tuple[str, Window | None]:
    """How a node is computed over a box: "window" (conv, pooling), "pointwise", "binary"
    (element-wise on same-shaped maps, or a map and a number), else "whole"."""
    maps = [a for a in node.all_input_nodes if _is_map(shapes.get(a))]
    if node.op == "placeholder":
        return "pointwise", None
    if not _is_map(shapes[node]) or len(maps) != len(node.all_input_nodes):
        return "whole", None
    if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
        window = window_of(module.get_submodule(node.target))
        if window is not None:
            return "window", window
    if pointwise_node(module, node) and len(maps) == 1:
        return "pointwise", None
    if binary_node(node) and all(shapes[a] == shapes[node] for a in maps):
        return "binary", None
    return "whole", None


def _reads(
    node: fx.Node, kind: str, window: Window | None, box: Box, shapes: dict
) -> list[tuple[fx.Node, Box]]:
    """The box of each input node that `node` reads to compute `box` of its output."""
    if kind == "whole":
        return [(a, _full(shapes[a])) for a in node.all_input_nodes if shapes[a] is not None]
    if kind == "window":
        source = node.args[0]
        return [(source, _clip(_span(window, box), shapes[source]))]
    return [(a, box) for a in node.all_input_nodes]


def _span(window: Window, box: Box) -> Box:
    """The input box (unclipped, padding included) that `window` reads for output `box`."""
    spans = []
    for axis, (low, high) in enumerate(((box[0], box[1]), (box[2], box[3]))):
        stride, pad = window.stride[axis], window.pad[axis]
        reach = window.dilation[axis] * (window.kernel[axis] - 1)
        spans += [low * stride - pad, (high - 1) * stride - pad + reach + 1]
    return tuple(spans)


def _clip(box: Box, shape: tuple[int, ...]) -> Box:
    return (max(box[0], 0), min(box[1], shape[2]), max(box[2], 0), min(box[3], shape[3]))


def _full(shape: tuple[int, ...] | None) -> Box:
    return (0, shape[2], 0, shape[3]) if _is_map(shape) else (0, 0, 0, 0)


def _is_map(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) == 4


def _union(a: Box | None, b: Box) -> Box:
    if a is None:
        return b
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _crop(value: torch.Tensor, held: Box, wanted: Box) -> torch.Tensor:
    """`wanted` of a map that holds region `held`; a copy when it is a strict part (so that an
    in-place op on it leaves the whole map alone)."""
    if held == wanted:
        return value
    top, left = wanted[0] - held[0], wanted[2] - held[2]
    part = value[..., top : top + wanted[1] - wanted[0], left : left + wanted[3] - wanted[2]]
    return part.contiguous(memory_format=torch.channels_last)


def _cropped(entry: tuple[object, Box | None], box: Box) -> object:
    value, held = entry
    return (
        _crop(value, held, box) if held is not None and isinstance(value, torch.Tensor) else value
    )


def _windowed(window: Window, value: torch.Tensor, held: Box, box: Box) -> torch.Tensor:
    """The window op's output over `box`, from its input held over `held`, padded as the op
    pads where the span runs past the map."""
    span = _span(window, box)
    inside = (
        max(span[0], held[0]),
        min(span[1], held[1]),
        max(span[2], held[2]),
        min(span[3], held[3]),
    )
    part = _crop(value, held, inside)
    pads = (inside[2] - span[2], span[3] - inside[3], inside[0] - span[0], span[1] - inside[1])
    if any(pads):
        part = F.pad(part, pads, value=window.pad_value)
    return window.run(part)


def _call(module: fx.GraphModule, node: fx.Node, args: tuple, kwargs: dict) -> object:
    if node.op == "call_module":
        return module.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "get_attr":
        return _get_attr(module, node.target)
    raise Untraceable(f"cannot run node {node.op} {node.target}")


def _get_attr(module: nn.Module, target: str) -> object:
    value: object = module
    for part in target.split("."):
        value = getattr(value, part)
    return value
