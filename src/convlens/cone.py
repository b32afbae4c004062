"""The cone forward: one position of a layer computed from only what it depends on. Every local op
below the layer (convolution, pooling, pointwise and element-wise ops) is run over just the
region of its output that the position reads, found by walking the traced graph back from the
position (outputs o .. o + n - 1 of a window read inputs o * stride - pad onwards, for
(n - 1) * stride + dilation * (kernel - 1) + 1 of them); an op that is not local gets its whole
input and gives its whole output. The result equals the layer's whole map at that position, and
so do the gradients, which are zero outside the cone anyway. On a deep layer it is a fraction of
the work: alexnet's features.11 on its 177-pixel unit canvas computes conv5 at 1 position of 100
and conv2 at 15x15 of 21x21, a third of the convolutions' work. Unit synthesis is the use: every
step optimises one position of a layer.

The model is traced with torch.fx in eval mode. What the cone cannot follow (a model fx cannot
trace, a layer called more than once, an in-place op on a map that is read elsewhere, a layer
that is not local) raises `Untraceable`, and so does a cone that disagrees with the model on a
random input, checked once when it is built; callers then run the plain forward.
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
    in_place_node,
    output_node,
    pointwise_node,
    traced,
    window_of,
)

Box = tuple[int, int, int, int]
"""A region of a map: rows [top, bottom) and columns [left, right)."""


@dataclass(frozen=True)
class _Plan:
    """How one node is computed: `kind` "input", "window", "pointwise", "binary" or "whole", the
    region `box` of its output that is kept, and its window (window nodes only)."""

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
        seeded = torch.Generator().manual_seed(0)
        example = torch.randn(1, *input_size, generator=seeded).to(model_device(model))
        self._input_size, self._layer = tuple(input_size), layer
        with preserved_state(model, training=False), torch.no_grad():
            self._traced = traced(model)  # traced in eval mode: `self.training` is frozen in
            self._layer_node = output_node(self._traced, layer)
            shapes, expected = _shapes(self._traced, self._layer_node, example)
            self._plans = _plan(self._traced, self._layer_node, shapes, position)
            _check_in_place(self._traced, self._plans, shapes)
            self.work = _conv_work(self._traced, self._plans, shapes)
            _hold(self, layer)
            _verify(self, example, expected[..., position[0], position[1]])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, *input_size) → (N, C', 1, 1): the layer's activations at the position."""
        if tuple(images.shape[1:]) != self._input_size:
            raise ValueError(
                f"this cone takes inputs of {self._input_size}, got {tuple(images.shape[1:])}"
            )
        values: dict[fx.Node, tuple[object, Box]] = {}
        for node in self._traced.graph.nodes:
            if node in self._plans:
                values[node] = self._run(node, images, values), self._plans[node].box
            if node is self._layer_node:
                return self.get_submodule(self._layer)(values[node][0])
        raise Untraceable("the layer was not reached")  # a plan always holds the layer node

    def _run(self, node: fx.Node, images: torch.Tensor, values: dict) -> object:
        """One node's value over its planned box."""
        plan = self._plans[node]
        if plan.kind == "input":
            return _crop(images, _full(tuple(images.shape)), plan.box)
        if node.op == "placeholder":  # another argument of forward: its default
            return node.args[0] if node.args else None
        if plan.kind == "window":
            return _windowed(plan.window, *values[node.args[0]], plan.box)
        if plan.kind in ("pointwise", "binary"):
            args = fx.node.map_arg(node.args, lambda a: _crop(*values[a], plan.box))
            kwargs = fx.node.map_arg(node.kwargs, lambda a: _crop(*values[a], plan.box))
            return _call(self._traced, node, args, kwargs)
        args = fx.node.map_arg(node.args, lambda a: values[a][0])
        kwargs = fx.node.map_arg(node.kwargs, lambda a: values[a][0])
        return _call(self._traced, node, args, kwargs)


def _verify(cone: Cone, example: torch.Tensor, expected: torch.Tensor) -> None:
    """The cone's output on `example` against the model's (N, C) `expected` there: a cone that
    fails or disagrees is refused, so that it is never silently wrong."""
    try:
        got = cone(example).flatten(1)
    except Exception as error:  # an op that cannot run on a crop
        raise Untraceable(f"the cone failed on a random input: {error}") from error
    scale = float(expected.abs().max()) or 1.0
    if got.shape != expected.shape or not torch.allclose(
        got, expected, rtol=1e-3, atol=1e-4 * scale
    ):
        raise Untraceable("the cone disagrees with the model on a random input")


def _hold(cone: Cone, layer: str) -> None:
    """An identity module at `layer`'s dotted name inside `cone`, for `capture` to hook (a name
    the cone itself uses, e.g. "work", is refused)."""
    parent: nn.Module = cone
    *path, last = layer.split(".")
    for part in path:
        child = parent._modules.get(part)
        if child is None and not hasattr(parent, part):
            child = nn.Module()
            parent.add_module(part, child)
        elif type(child) is not nn.Module:  # not a holder made here
            raise Untraceable(f"layer {layer!r} clashes with the cone's own {part!r}")
        parent = child
    if hasattr(parent, last):
        raise Untraceable(f"layer {layer!r} clashes with the cone's own {last!r}")
    parent.add_module(last, nn.Identity())


def _check_in_place(module: fx.GraphModule, plans: dict[fx.Node, _Plan], shapes: dict) -> None:
    """In-place ops the cone cannot follow: one on a map another op also reads (the cone
    crops a copy for it, so the other reader would not see the change), or one whose result is
    unused (the walk back from the layer never reaches it)."""
    for node in shapes:
        source = node.args[0] if node.args else None
        if not (isinstance(source, fx.Node) and source in plans and in_place_node(module, node)):
            continue
        if len(source.users) > 1 or not node.users:
            raise Untraceable(f"{node.name} overwrites a map that other ops read")


def _conv_work(module: fx.GraphModule, plans: dict[fx.Node, _Plan], shapes: dict) -> float:
    """The convolutions' multiply-adds over their planned boxes (whole maps for those not run
    as windows), as a share of those over their whole outputs."""
    done = whole = 0
    for node, plan in plans.items():
        if node.op != "call_module":
            continue
        conv = module.get_submodule(node.target)
        if isinstance(conv, nn.Conv2d) and _is_map(shapes[node]):
            top, bottom, left, right = plan.box
            done += conv.weight.numel() * (bottom - top) * (right - left)
            whole += conv.weight.numel() * shapes[node][2] * shapes[node][3]
    return done / whole if whole else 1.0


def _shapes(
    module: fx.GraphModule, layer: fx.Node, example: torch.Tensor
) -> tuple[dict[fx.Node, tuple[int, ...] | None], torch.Tensor]:
    """Each node's output shape on `example` (None: not a tensor), up to the layer, and the
    layer's output there."""
    shapes: dict[fx.Node, tuple[int, ...] | None] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> object:
            result = super().run_node(node)
            shapes[node] = tuple(result.shape) if isinstance(result, torch.Tensor) else None
            if node is layer:
                raise _Reached(result)  # fx rewrites args of what it passes on: kept apart
            return result

    try:
        Recorder(module).run(example)
    except _Reached as reached:
        return shapes, reached.output
    except Exception as error:  # a traced graph can fail where the eager model did not
        raise Untraceable(f"the traced model failed on the input: {error}") from error
    raise Untraceable("the layer was not reached")


class _Reached(Exception):
    """The shape recorder reached the layer, whose `output` it carries."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__("reached the layer")
        self.output = output


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
    first = next(n for n in module.graph.nodes if n.op == "placeholder")
    for node in reversed(list(shapes)):
        if node not in needed:
            continue
        kind, window = ("input", None) if node is first else _kind(module, node, shapes)
        box = _full(shapes[node]) if kind == "whole" else needed[node]
        plans[node] = _Plan(kind, box, window)
        for source, wanted in _reads(node, kind, window, box, shapes):
            needed[source] = _union(needed.get(source), wanted)
    if plans[layer].kind == "whole":
        raise Untraceable(f"{layer}'s own op is not local; its map is computed whole")
    return plans


def _kind(module: fx.GraphModule, node: fx.Node, shapes: dict) -> tuple[str, Window | None]:
    """How a node other than the input is computed over a box: "window" (conv, pooling),
    "pointwise", "binary" (element-wise on same-shaped maps, or a map and a number), else
    "whole" (also a placeholder for another argument of forward)."""
    maps = [a for a in node.all_input_nodes if _is_map(shapes.get(a))]
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
    """The box of each input node that `node` reads to compute `box` of its output (all of it
    for a whole node, which may read sizes and other non-maps too)."""
    if kind == "whole":
        return [(a, _full(shapes[a])) for a in node.all_input_nodes]
    if kind == "window":
        source = node.args[0]
        return [(source, _clip(_span(window, box), shapes[source]))]
    return [(a, box) for a in node.all_input_nodes]


def _span(window: Window, box: Box) -> Box:
    """The input box (unclipped, padding included) that `window` reads for output `box`."""
    rows = window.reads(0, box[0], box[1] - box[0])
    columns = window.reads(1, box[2], box[3] - box[2])
    return (rows[0], rows[0] + rows[1], columns[0], columns[0] + columns[1])


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


def _crop(value: object, held: Box, wanted: Box) -> object:
    """`wanted` of a map that holds region `held` (any other value as it is); a copy when it
    is a strict part, so that an in-place op on it leaves the whole map alone."""
    if held == wanted or not isinstance(value, torch.Tensor):
        return value
    top, left = wanted[0] - held[0], wanted[2] - held[2]
    part = value[..., top : top + wanted[1] - wanted[0], left : left + wanted[3] - wanted[2]]
    return part.clone(memory_format=torch.channels_last)


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
