"""Layer names, output shapes and receptive fields, read off the model itself.

Receptive fields are traced, not looked up: a forward pass runs under a `TorchFunctionMode`
that carries each tensor's receptive field (size, stride, offset per spatial axis) from op
to op: convolutions and pools grow it, element-wise ops with several inputs (residual sums,
concatenation) take the union, flattening and global pooling cover the whole input. This works
for Sequential nets, skip connections and functional code alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from convlens._errors import ConvlensError
from convlens.hooks import (
    first_tensor,
    model_device,
    preserved_state,
    registered_hooks,
    resolve_layer,
)

Pair = tuple[int, int]


@dataclass(frozen=True)
class ReceptiveField:
    """The input box seen by one position of a feature map.

    The box of position `(y, x)` starts at `offset + (y, x) * stride` and spans `size` pixels
    per axis (it may reach outside the image; clip it when cropping).
    """

    size: Pair
    stride: Pair
    offset: Pair

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """`(top, left, bottom, right)` of position `(y, x)`, bottom and right exclusive."""
        top = self.offset[0] + y * self.stride[0]
        left = self.offset[1] + x * self.stride[1]
        return top, left, top + self.size[0], left + self.size[1]


@dataclass(frozen=True)
class LayerInfo:
    """One named module: its class, output shape (without batch) and receptive field."""

    name: str
    kind: str
    output_shape: tuple[int, ...] | None
    receptive_field: ReceptiveField | None
    calls: int


def _pair(value: object) -> Pair:
    if isinstance(value, int):
        return (value, value)
    first, second = tuple(value)[-2:] if len(tuple(value)) > 1 else (value[0], value[0])
    return (int(first), int(second))


def _argument(args: tuple, kwargs: dict, position: int, name: str, default: object) -> object:
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


def _window(rf: ReceptiveField, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair):
    """The field after a sliding window (convolution or pooling) over a map whose field is rf."""
    return ReceptiveField(
        size=tuple(
            s + (d * (k - 1)) * st for s, k, d, st in zip(rf.size, kernel, dilation, rf.stride)
        ),
        stride=tuple(st * s for st, s in zip(rf.stride, stride)),
        offset=tuple(o - p * st for o, p, st in zip(rf.offset, padding, rf.stride)),
    )


def _conv_rule(args: tuple, kwargs: dict, rf: ReceptiveField) -> ReceptiveField:
    weight = _argument(args, kwargs, 1, "weight", None)
    kernel = _pair(weight.shape[-2:])
    dilation = _pair(_argument(args, kwargs, 5, "dilation", 1))
    padding = _argument(args, kwargs, 4, "padding", 0)
    if padding == "same":
        padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    elif padding == "valid":
        padding = 0
    stride = _pair(_argument(args, kwargs, 3, "stride", 1))
    return _window(rf, kernel, stride, _pair(padding), dilation)


def _pool_rule(args: tuple, kwargs: dict, rf: ReceptiveField) -> ReceptiveField:
    kernel = _pair(_argument(args, kwargs, 1, "kernel_size", 1))
    stride = _argument(args, kwargs, 2, "stride", None)
    stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
    padding = _pair(_argument(args, kwargs, 3, "padding", 0))
    dilation = _pair(_argument(args, kwargs, 4, "dilation", 1))
    return _window(rf, kernel, stride, padding, dilation)


def _avg_pool_rule(args: tuple, kwargs: dict, rf: ReceptiveField) -> ReceptiveField:
    kernel = _pair(_argument(args, kwargs, 1, "kernel_size", 1))
    stride = _argument(args, kwargs, 2, "stride", None)
    stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
    return _window(rf, kernel, stride, _pair(_argument(args, kwargs, 3, "padding", 0)), (1, 1))


def _pad_rule(args: tuple, kwargs: dict, rf: ReceptiveField) -> ReceptiveField:
    pad = tuple(_argument(args, kwargs, 1, "pad", ()))
    left = pad[0] if len(pad) > 0 else 0
    top = pad[2] if len(pad) > 2 else 0
    return ReceptiveField(
        rf.size, rf.stride, (rf.offset[0] - top * rf.stride[0], rf.offset[1] - left * rf.stride[1])
    )


_WINDOW_RULES: dict[Callable, Callable] = {
    F.conv2d: _conv_rule,
    F.max_pool2d: _pool_rule,
    F.avg_pool2d: _avg_pool_rule,
    F.pad: _pad_rule,
}
for _name in ("_max_pool2d", "max_pool2d_with_indices"):
    if hasattr(F, _name):
        _WINDOW_RULES[getattr(F, _name)] = _pool_rule


def _extent(rf: ReceptiveField, spatial: Pair) -> ReceptiveField:
    """The union of the fields of every position of a map of shape `spatial`."""
    size = tuple(s + (n - 1) * st for s, n, st in zip(rf.size, spatial, rf.stride))
    return ReceptiveField(size=size, stride=size, offset=rf.offset)


def _union(fields: list[ReceptiveField]) -> ReceptiveField | None:
    """The field of an element-wise combination of aligned maps (a residual sum, a concat)."""
    if len({rf.stride for rf in fields}) != 1:
        return None
    start = tuple(min(rf.offset[a] for rf in fields) for a in (0, 1))
    end = tuple(max(rf.offset[a] + rf.size[a] for rf in fields) for a in (0, 1))
    return ReceptiveField(tuple(e - s for s, e in zip(start, end)), fields[0].stride, start)


def _tensors(value: object) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


class _FieldTracer(TorchFunctionMode):
    """Carries a receptive field (or None: not computable) along with every tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[int, ReceptiveField | None] = {}
        self._alive: list[torch.Tensor] = []  # keeps ids unique while tracing

    def mark(self, tensor: torch.Tensor, rf: ReceptiveField | None) -> None:
        self.fields[id(tensor)] = rf
        self._alive.append(tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in _tensors((args, kwargs)) if id(t) in self.fields]
        outputs = list(_tensors(out))
        if inputs and outputs:
            rf = self._propagate(func, args, kwargs, inputs, outputs[0])
            for tensor in outputs:
                self.mark(tensor, rf)
        return out

    def _propagate(self, func, args, kwargs, inputs, output) -> ReceptiveField | None:
        fields = [self.fields[id(t)] for t in inputs]
        if any(rf is None for rf in fields):
            return None
        if output.dim() != 4:  # flattened or globally pooled: the whole extent of every input
            return _union(
                [_extent(rf, t.shape[-2:]) if t.dim() == 4 else rf for rf, t in zip(fields, inputs)]
            )
        rule = _WINDOW_RULES.get(func)
        first = inputs[0]
        if rule is not None and first is _argument(args, kwargs, 0, "input", None):
            return rule(args, kwargs, fields[0])
        if func in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d) or getattr(
            func, "__name__", ""
        ) in (
            "adaptive_max_pool2d_with_indices",
            "_adaptive_max_pool2d",
        ):
            return _adaptive_rule(first.shape[-2:], output.shape[-2:], fields[0])
        if all(t.dim() == 4 and t.shape[-2:] == output.shape[-2:] for t in inputs):
            return _union(fields)
        return None


def _adaptive_rule(spatial_in, spatial_out, rf: ReceptiveField) -> ReceptiveField | None:
    if tuple(spatial_out) == (1, 1):
        return _extent(rf, tuple(spatial_in))
    if any(i % o for i, o in zip(spatial_in, spatial_out)):
        return None  # uneven adaptive windows have no single stride
    kernel = tuple(i // o for i, o in zip(spatial_in, spatial_out))
    return _window(rf, kernel, kernel, (0, 0), (1, 1))


def _input_shape(model: nn.Module, input_size: int | tuple[int, ...]) -> tuple[int, int, int]:
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) == 3:
        return input_size
    if len(input_size) != 2:
        raise ValueError(f"input_size must be H, (H, W) or (C, H, W), got {input_size}")
    channels = next((m.in_channels for m in model.modules() if hasattr(m, "in_channels")), 3)
    return (channels, *input_size)


def trace_layers(model: nn.Module, input_size: int | tuple[int, ...]) -> dict[str, LayerInfo]:
    """Output shape and receptive field of every named module, from one traced forward.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU())
        >>> trace_layers(net, (3, 9, 9))["0"].receptive_field
        ReceptiveField(size=(3, 3), stride=(2, 2), offset=(0, 0))
    """
    shape = _input_shape(model, input_size)
    found: dict[str, dict] = {}
    tracer = _FieldTracer()

    def recorder(name: str, module: nn.Module):
        def hook(_module, _inputs, output):
            tensor = first_tensor(output)
            entry = found.setdefault(name, {"calls": 0, "kind": type(module).__name__})
            entry["calls"] += 1
            if entry["calls"] == 1 and tensor is not None:
                entry["shape"] = tuple(tensor.shape[1:])
                entry["rf"] = tracer.fields.get(id(tensor))

        return hook

    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros((1, *shape), device=model_device(model), dtype=dtype)
    with preserved_state(model, training=False), registered_hooks() as handles, torch.no_grad():
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(recorder(name, module)))
        with tracer:
            tracer.mark(x, ReceptiveField((1, 1), (1, 1), (0, 0)))
            try:
                model(x)
            except Exception as error:  # the user's model failed on a plain input of this size
                raise ConvlensError(
                    f"the model could not run on an input of shape {(1, *shape)}: {error}; "
                    "pass the input size the model expects"
                ) from None
    layers = {}
    for name, module in model.named_modules():
        if not name:
            continue
        entry = found.get(name, {"calls": 0, "kind": type(module).__name__})
        layers[name] = LayerInfo(
            name, entry["kind"], entry.get("shape"), entry.get("rf"), entry["calls"]
        )
    return layers


def receptive_field(
    model: nn.Module, layer: str, input_size: int | tuple[int, ...]
) -> ReceptiveField:
    """Size, stride and offset of the receptive field of one position of `layer`'s output.

    Example:
        >>> import torchvision
        >>> receptive_field(torchvision.models.alexnet(), "features.10", 224).size
        (163, 163)

    Args:
        model: any PyTorch CNN.
        layer: a `named_modules()` name.
        input_size: H, (H, W) or (C, H, W) of the model's input.
    """
    resolve_layer(model, layer)
    info = trace_layers(model, input_size)[layer]
    if info.calls == 0:
        raise ConvlensError(f"layer {layer!r} is not used by the model's forward pass")
    if info.receptive_field is None:
        raise ConvlensError(
            f"the receptive field of {layer!r} cannot be traced: an operation before it changes "
            "the spatial size in a way convlens has no rule for (e.g. upsampling)"
        )
    return info.receptive_field


def spatial_size(info: LayerInfo) -> Pair | None:
    """(h, w) of a layer's output map, or None when it has no spatial axes."""
    if info.output_shape is None or len(info.output_shape) != 3:
        return None
    return info.output_shape[1], info.output_shape[2]


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the model's `nn.Conv2d` modules, in definition order."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def rectified_output(model: nn.Module, conv: str) -> str:
    """The ReLU right after conv layer `conv` in its Sequential, else `conv` itself.

    Scans and dead-unit counts look at the rectified map, as Zeiler & Fergus do.
    """
    parent_name, _, index = conv.rpartition(".")
    parent = resolve_layer(model, parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential) and index.isdigit() and int(index) + 1 < len(parent):
        following = parent[int(index) + 1]
        if isinstance(following, nn.ReLU):
            return f"{parent_name}.{int(index) + 1}" if parent_name else str(int(index) + 1)
    return conv


def stages(model: nn.Module) -> list[str]:
    """The stages of a deep network, in order: `nn.Sequential`s whose every child is a block (a
    module other than a convolution that holds one) and none of whose children is such a stage
    itself, chained one after another in the model itself or in one `nn.Sequential` (the one
    holding the most of them). A ResNet's `layer1` to `layer4`, an EfficientNet's or ConvNeXt's
    `features.N`, a RegNet's `trunk_output.blockN`; empty for conv-ReLU stacks (AlexNet, VGG, the
    built-in network) and for parallel branches (GoogLeNet)."""

    def is_block(module: nn.Module) -> bool:
        return not isinstance(module, nn.Conv2d) and any(
            isinstance(m, nn.Conv2d) for m in module.modules()
        )

    def is_stage(module: nn.Module) -> bool:
        return isinstance(module, nn.Sequential) and len(module) > 0 and all(map(is_block, module))

    modules = dict(model.named_modules())
    chains: dict[str, list[str]] = {}
    for name, module in modules.items():
        parent = name.rpartition(".")[0]
        chained = parent == "" or isinstance(modules[parent], nn.Sequential)
        if name and chained and is_stage(module) and not any(map(is_stage, module)):
            chains.setdefault(parent, []).append(name)
    return max(chains.values(), key=len, default=[])


def default_layers(model: nn.Module) -> list[str]:
    """The layers shown by default (feature maps, scans, dead units, the atlas). For a network
    built of stages (`stages`, at least two), the stem's output and each stage's output, as a
    ResNet's `maxpool, layer1, ..., layer4`; otherwise the rectified output of every conv layer
    (the conv itself where no ReLU module follows)."""
    found = stages(model)
    if len(found) < 2:
        return [rectified_output(model, conv) for conv in conv_layers(model)]
    return _stem(model, found[0]) + found


def _stem(model: nn.Module, first_stage: str) -> list[str]:
    """The module run right before `first_stage`: its previous sibling, or its parent's (a
    RegNet's `stem` before `trunk_output.block1`); empty when there is none."""
    name = first_stage
    while name:
        parent_name, _, child = name.rpartition(".")
        parent = resolve_layer(model, parent_name) if parent_name else model
        siblings = [n for n, _ in parent.named_children()]
        before = siblings[: siblings.index(child)]
        if before:
            return [f"{parent_name}.{before[-1]}" if parent_name else before[-1]]
        name = parent_name
    return []


__all__ = [
    "LayerInfo",
    "ReceptiveField",
    "conv_layers",
    "default_layers",
    "receptive_field",
    "rectified_output",
    "spatial_size",
    "stages",
    "trace_layers",
]
