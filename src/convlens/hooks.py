"""Hooks that never outlive the call: activation capture, model-state guards and the backward
rules of deconvnet and guided backprop.

Every hook convlens registers goes through `registered_hooks`, which removes it in `finally`,
so a model that raises mid-forward is left exactly as it was found.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from convlens._errors import ConvlensError, unknown_name_error


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name` (a `named_modules()` dotted name), or a ConvlensError naming
    the closest existing names.

    Example:
        >>> resolve_layer(nn.Sequential(nn.Conv2d(1, 2, 3)), "0")
        Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1))
    """
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        raise unknown_name_error("layer", name, [n for n in modules if n])
    return modules[name]


@contextmanager
def registered_hooks() -> Iterator[list[RemovableHandle]]:
    """A list to append hook handles to; every handle is removed on exit, also on error."""
    handles: list[RemovableHandle] = []
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def preserved_state(
    model: nn.Module, *, training: bool | None = False, frozen: bool = False
) -> Iterator[nn.Module]:
    """Put `model` in train/eval mode (`training`, None keeps it) and restore every module's own
    mode and every parameter's `requires_grad` on exit, also on error. With `frozen`, parameters
    do not require gradients inside (input gradients only: no parameter `.grad` is written)."""
    modes = [(module, module.training) for module in model.modules()]
    grads = [(param, param.requires_grad) for param in model.parameters()]
    try:
        if training is not None:
            model.train(training)
        if frozen:
            for param, _ in grads:
                param.requires_grad_(False)
        yield model
    finally:
        for module, mode in modes:
            module.training = mode
        for param, requires_grad in grads:
            param.requires_grad_(requires_grad)


def first_tensor(output: object) -> torch.Tensor | None:
    """The first tensor in a module output (a tensor, or a tuple/list holding one)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


class _StopForward(Exception):
    """Raised by a capture hook once every requested layer has its output: the rest of the
    forward is not needed."""


class Captured(dict):
    """Layer name → captured output, refilled by every forward; `forward(x)` runs the model
    (stopping early when the capture was opened with `stop=True`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> object:
        """Run the model; None when it stopped early after the last captured layer."""
        try:
            return self.model(*inputs)
        except _StopForward:
            return None


@contextmanager
def capture(
    model: nn.Module,
    layers: Sequence[str],
    *,
    detach: bool = True,
    stop: bool = False,
    reduce: Callable[[torch.Tensor], object] | None = None,
) -> Iterator[Captured]:
    """Record the output of each named layer during the forward passes run inside the block.

    The dict is refilled by every forward. Captured tensors are clones, so an in-place ReLU
    that runs later does not change them. A module called more than once per forward (a reused
    ReLU) is refused, because "its output" would be ambiguous. With `stop`, `captured.forward(x)`
    ends the forward as soon as every layer is captured (their first call counts). With
    `reduce`, what is kept is `reduce(output)`, computed at once (no clone of the whole map).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True))
        >>> with capture(net, ["0"]) as acts:
        ...     _ = net(torch.randn(1, 1, 5, 5))
        >>> acts["0"].shape
        torch.Size([1, 2, 3, 3])
    """
    modules = {name: resolve_layer(model, name) for name in layers}
    captured = Captured(model)
    calls: dict[str, int] = {}

    def reset(_module: nn.Module, _inputs: object) -> None:
        calls.clear()

    def recorder(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:
                raise ConvlensError(
                    f"layer {name!r} is called more than once per forward (a reused module), so "
                    "its output is ambiguous; choose the block that contains it or a module "
                    "called once"
                )
            tensor = first_tensor(output)
            if tensor is None:
                raise ConvlensError(f"layer {name!r} returned no tensor; choose another layer")
            if reduce is not None:
                captured[name] = reduce(tensor.detach() if detach else tensor)
            else:
                captured[name] = tensor.detach().clone() if detach else tensor.clone()
            if stop and len(calls) == len(modules):
                raise _StopForward

        return hook

    with registered_hooks() as handles:
        handles.append(model.register_forward_pre_hook(reset))
        for name, module in modules.items():
            handles.append(module.register_forward_hook(recorder(name)))
        yield captured


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


# --- backward rules for rectifiers ---------------------------------------------------------------

RULES = ("gradient", "deconvnet", "guided")


class _RuleReLU(torch.autograd.Function):
    """ReLU forward (in place when asked) with the backward of a projection rule:
    deconvnet `relu(grad)` (Zeiler & Fergus), guided `relu(grad) * (input > 0)` (Springenberg)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: str, inplace: bool) -> torch.Tensor:
        out = x.clamp_min_(0) if inplace else x.clamp_min(0)
        if inplace:
            ctx.mark_dirty(x)
        ctx.rule = rule
        ctx.save_for_backward(out > 0 if rule == "guided" else None)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        rectified = grad.clamp_min(0)
        return (rectified * mask if mask is not None else rectified), None, None


class _PassThrough(torch.autograd.Function):
    """Forward `fn(x)`, backward the identity: how the deconvnet treats contrast normalisation."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn) -> torch.Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _relu_functions() -> dict[object, bool]:
    """Every way a forward can apply a ReLU, with whether it works in place (F.relu_ is
    torch.relu_ itself)."""
    return {
        F.relu: False,
        torch.relu: False,
        torch.relu_: True,
        torch.Tensor.relu: False,
        torch.Tensor.relu_: True,
    }


_UNCOVERED = {
    F.gelu: "GELU",
    F.silu: "SiLU",
    F.leaky_relu: "LeakyReLU",
    F.elu: "ELU",
    F.selu: "SELU",
    F.celu: "CELU",
    F.hardswish: "Hardswish",
    F.hardsigmoid: "Hardsigmoid",
    F.hardtanh: "Hardtanh/ReLU6",
    F.mish: "Mish",
    F.softplus: "Softplus",
    F.prelu: "PReLU",
    F.rrelu: "RReLU",
    torch.sigmoid: "sigmoid",
    torch.tanh: "tanh",
    torch.Tensor.sigmoid: "sigmoid",
    torch.Tensor.tanh: "tanh",
    F.leaky_relu_: "LeakyReLU",
}


class _RuleMode(TorchFunctionMode):
    """Routes every ReLU (module, functional, in place or not, reused) through `_RuleReLU` and
    notes the nonlinearities the rule cannot cover."""

    def __init__(self, rule: str, normalization: str) -> None:
        super().__init__()
        self.rule = rule
        self.normalization = normalization
        self.relus = _relu_functions()
        self.uncovered: set[str] = set()
        self.applied = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.relus and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            inplace = self.relus[func] or bool(
                kwargs.get("inplace", args[1] if len(args) > 1 else False)
            )
            self.applied += 1
            return _RuleReLU.apply(args[0], self.rule, inplace)
        if (
            func is F.local_response_norm
            and self.normalization == "identity"
            and args[0].requires_grad
        ):
            return _PassThrough.apply(args[0], lambda x: func(x, *args[1:], **kwargs))
        if func in _UNCOVERED:
            self.uncovered.add(_UNCOVERED[func])
        return func(*args, **kwargs)


@contextmanager
def backward_rule(
    rule: str, *, normalization: str = "gradient", strict: bool = False
) -> Iterator[_RuleMode | None]:
    """Inside the block, forwards record ReLUs whose backward follows `rule`.

    `rule` is "gradient" (plain autograd), "deconvnet" or "guided". `normalization` is
    "gradient" (back-propagate through local response normalisation) or "identity" (pass the
    signal through, as the deconvnet of Zeiler & Fergus does). Nonlinearities the rule does not
    cover are reported in one warning after the block, or raise a ConvlensError when `strict`.
    Nothing is registered on the model, so nothing can be left behind.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if normalization not in ("gradient", "identity"):
        raise ValueError(f"normalization must be 'gradient' or 'identity', got {normalization!r}")
    if rule == "gradient" and normalization == "gradient":
        yield None
        return
    mode = _RuleMode(rule, normalization)
    with mode:
        yield mode
    if mode.uncovered:
        message = (
            f"the {rule} rule covers ReLU only; this model also uses "
            f"{', '.join(sorted(mode.uncovered))}, whose backward stays the plain gradient"
        )
        if strict:
            raise ConvlensError(message)
        warnings.warn(message, stacklevel=3)
    if rule != "gradient" and mode.applied == 0:
        raise ConvlensError(
            f"the {rule} rule needs ReLUs, and this model's forward applied none; use "
            "method 'gradient' or 'saliency' for it"
        )
