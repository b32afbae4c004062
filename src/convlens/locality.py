"""Which ops of a traced model are local, and how: the knowledge shared by the forwards that
compute a map over part of its positions (`incremental`, for occlusion; `cone`, for one unit). A
window op (convolution, pooling) reads a sliding window of its input, and is run unpadded on an
input padded by hand; a pointwise op reads one position (across channels at most); a binary op
combines two maps position by position. Anything else is not local.

Models are traced with torch.fx (`traced`); a model it cannot trace raises `Untraceable`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from convlens.normalization import LocalResponseNorm

POINTWISE_MODULES = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.LocalResponseNorm,  # across channels at one position
)
TRAINING_DEPENDENT = (nn.BatchNorm2d, nn.Dropout, nn.Dropout2d)
POINTWISE_FUNCTIONS = {
    torch.relu,
    torch.relu_,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.gelu,
    F.silu,
    F.hardswish,
    F.hardsigmoid,
    torch.sigmoid,
    torch.tanh,
}
POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "sigmoid_", "tanh_"}
BINARY_FUNCTIONS = {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub}
BINARY_FUNCTIONS |= {torch.add, torch.mul, torch.sub}
BINARY_METHODS = {"add", "add_", "mul", "mul_", "sub", "sub_"}


class Untraceable(Exception):
    """The model cannot be run over part of its positions (torch.fx could not trace it)."""


@dataclass(frozen=True)
class Window:
    """A local op with a sliding window: its geometry per axis and how to run it unpadded."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    pad_value: float
    run: Callable[[torch.Tensor], torch.Tensor]

    def reads(self, axis: int, first, count: int) -> tuple[object, int]:
        """(start, length) along `axis` of the input that outputs `first` .. `first + count - 1`
        read: start = first * stride - pad (negative inside the padding; `first` an int or a
        tensor of them), length = (count - 1) * stride + dilation * (kernel - 1) + 1."""
        stride, reach = self.stride[axis], self.dilation[axis] * (self.kernel[axis] - 1)
        return first * stride - self.pad[axis], (count - 1) * stride + reach + 1


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def window_of(module: nn.Module) -> Window | None:
    """The window of a conv or pooling module, None for any other (or an unsupported variant)."""
    if type(module) is nn.Conv2d and module.padding_mode == "zeros":
        if isinstance(module.padding, str):
            return None
        return Window(
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            0.0,
            lambda x: F.conv2d(
                x, module.weight, module.bias, module.stride, 0, module.dilation, module.groups
            ),
        )
    if type(module) is nn.MaxPool2d and not module.ceil_mode and not module.return_indices:
        kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
        dilation = _pair(module.dilation)
        return Window(
            kernel,
            stride,
            _pair(module.padding),
            dilation,
            float("-inf"),
            lambda x: F.max_pool2d(x, kernel, stride, 0, dilation),
        )
    if (
        type(module) is nn.AvgPool2d
        and not module.ceil_mode
        and module.divisor_override is None
        and (module.count_include_pad or _pair(module.padding) == (0, 0))
    ):
        kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
        return Window(
            kernel,
            stride,
            _pair(module.padding),
            (1, 1),
            0.0,
            lambda x: F.avg_pool2d(x, kernel, stride, 0),
        )
    return None


def pointwise_module(module: nn.Module) -> bool:
    """A module acting on each position alone (batch norm and dropout only in eval mode, batch
    norm only with running statistics: without them it normalises by the batch's)."""
    if isinstance(module, nn.BatchNorm2d) and module.running_mean is None:
        return False
    if isinstance(module, TRAINING_DEPENDENT):
        return not module.training
    return isinstance(module, POINTWISE_MODULES)


def pointwise_node(module: fx.GraphModule, node: fx.Node) -> bool:
    """A node applying a pointwise op to its first argument (its other arguments being no
    tensors is for the caller to check)."""
    if node.op == "call_module":
        return pointwise_module(module.get_submodule(node.target))
    return (node.op == "call_function" and node.target in POINTWISE_FUNCTIONS) or (
        node.op == "call_method" and node.target in POINTWISE_METHODS
    )


def binary_node(node: fx.Node) -> bool:
    """A node adding, subtracting or multiplying two operands element by element."""
    return (node.op == "call_function" and node.target in BINARY_FUNCTIONS) or (
        node.op == "call_method" and node.target in BINARY_METHODS
    )


IN_PLACE_FUNCTIONS = {operator.iadd, operator.imul, operator.isub, torch.relu_}


def in_place_node(module: fx.GraphModule, node: fx.Node) -> bool:
    """A node that may overwrite its first argument (an in-place method, `+=`, a module or a
    function asked for `inplace`)."""
    if node.op == "call_module":
        return bool(getattr(module.get_submodule(node.target), "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_")
    if node.op == "call_function":
        flagged = node.kwargs.get("inplace") is True or any(a is True for a in node.args[1:])
        return node.target in IN_PLACE_FUNCTIONS or flagged
    return False


def apply_node(node: fx.Node, tensor: torch.Tensor, rest: tuple, kwargs: dict) -> torch.Tensor:
    """A call_function or call_method node's op applied to `tensor` and the other arguments."""
    if node.op == "call_method":
        return getattr(tensor, node.target)(*rest, **kwargs)
    return node.target(tensor, *rest, **kwargs)


class _Tracer(fx.Tracer):
    """fx's tracer, keeping a local response normalisation (torch's or convlens's forward, in
    any subclass) as one module call, so that it is recomputed as one local module; a subclass
    with a forward of its own is traced into, as any user module."""

    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        lrn = type(module).forward in (nn.LocalResponseNorm.forward, LocalResponseNorm.forward)
        return lrn or super().is_leaf_module(module, name)


def traced(model: nn.Module) -> fx.GraphModule:
    """`model` traced by torch.fx, local response normalisations kept whole."""
    try:
        return fx.GraphModule(model, _Tracer().trace(model))
    except Exception as error:  # fx raises many kinds for control flow it cannot follow
        raise Untraceable(f"torch.fx could not trace the model: {error}") from error


def output_node(module: fx.GraphModule, layer: str) -> fx.Node:
    """The last node computed inside module `layer` (its output); a module called more than
    once (a reused ReLU) has no one output and is refused, as `capture` refuses it."""
    inside, calls = [], set()  # fx names a module's second call "<layer>@1" in node stacks
    for node in module.graph.nodes:
        keys = {p for p in node.meta.get("nn_module_stack", {}) if p.split("@")[0] == layer}
        if keys or (node.op == "call_module" and node.target == layer):
            inside.append(node)
            calls |= keys
    if not inside:
        raise Untraceable(f"layer {layer!r} has no node in the traced graph")
    if len(calls) > 1:
        raise Untraceable(f"layer {layer!r} is called more than once per forward")
    return inside[-1]
