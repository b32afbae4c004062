"""Hooks that never outlive the call: activation capture and model-state guards (the backward
rules of deconvnet and guided backprop are in `convlens.rules`).

Every hook convlens registers goes through `registered_hooks`, which removes it in `finally`,
so a model that raises mid-forward is left exactly as it was found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
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


def _kept(
    name: str,
    output: object,
    detach: bool,
    reduce: Callable[[torch.Tensor], object] | None,
    leaf: bool,
) -> tuple[object, torch.Tensor | None]:
    """What `capture` keeps of a layer's output, and the output the forward goes on with (None:
    unchanged)."""
    tensor = first_tensor(output)
    if tensor is None:
        raise ConvlensError(f"layer {name!r} returned no tensor; choose another layer")
    if leaf:
        if not isinstance(output, torch.Tensor):
            raise ConvlensError(
                f"layer {name!r} returns a {type(output).__name__}, not a tensor; choose another layer"
            )
        held = tensor.detach().requires_grad_(True)
        return held, held.clone()
    if reduce is not None:
        return reduce(tensor.detach() if detach else tensor), None
    return (tensor.detach().clone() if detach else tensor.clone()), None


@contextmanager
def capture(
    model: nn.Module,
    layers: Sequence[str],
    *,
    detach: bool = True,
    stop: bool = False,
    reduce: Callable[[torch.Tensor], object] | None = None,
    leaf: bool = False,
) -> Iterator[Captured]:
    """Record the output of each named layer during the forward passes run inside the block.

    The dict is refilled by every forward. Captured tensors are clones, so an in-place ReLU
    that runs later does not change them. A module called more than once per forward (a reused
    ReLU) is refused, because "its output" would be ambiguous. With `stop`, `captured.forward(x)`
    ends the forward as soon as every layer is captured (their first call counts). With
    `reduce`, what is kept is `reduce(output)`, computed at once (no clone of the whole map).
    With `leaf`, each captured output becomes a leaf that requires grad and the rest of the
    forward runs on a copy of it: a backward from the model's output then ends at the captured
    layers (gradients with respect to their outputs, nothing below them is differentiated) and
    later in-place ops leave the captured values intact.

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
        def hook(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor | None:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:
                raise ConvlensError(
                    f"layer {name!r} is called more than once per forward (a reused module), so "
                    "its output is ambiguous; choose the block that contains it or a module "
                    "called once"
                )
            captured[name], replaced = _kept(name, output, detach, reduce, leaf)
            if stop and len(calls) == len(modules):
                raise _StopForward
            return replaced

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
