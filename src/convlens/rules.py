"""Backward rules for rectifiers, applied through one `TorchFunctionMode`: during the forward
every ReLU (module, functional, in place or not, reused) is routed through a function whose
backward follows the rule (plain gradient, deconvnet, guided backprop). Nothing is registered
on the model, so nothing can be left behind."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from convlens._errors import ConvlensError
from convlens.normalization import local_response_norm

RULES = ("gradient", "deconvnet", "guided", "redirected")
NORMALIZATIONS = (F.local_response_norm, local_response_norm)
"""The local response normalisations the deconvnet passes the signal through."""


class _RuleReLU(torch.autograd.Function):
    """ReLU forward (in place when asked) with the backward of a rule: deconvnet `relu(grad)`
    (Zeiler & Fergus), guided `relu(grad) * (input > 0)` (Springenberg), redirected (Lucid's
    `redirected_relu_grad`, for synthesis): the plain gradient, except for an image whose plain
    gradient through this ReLU is all zero, which gets the incoming gradient wherever it does
    not push an already negative input lower, so an optimisation that starts with a silent
    unit still moves."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: str, inplace: bool) -> torch.Tensor:
        out = x.clamp_min_(0) if inplace else x.clamp_min(0)
        if inplace:
            ctx.mark_dirty(x)
        ctx.rule = rule
        ctx.save_for_backward(out > 0 if rule in ("guided", "redirected") else None)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (positive,) = ctx.saved_tensors
        if ctx.rule == "redirected":
            return _redirected(grad, positive), None, None
        rectified = grad.clamp_min(0)
        return (rectified * positive if positive is not None else rectified), None, None


def _redirected(grad: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Lucid's redirected ReLU gradient, `grad` being d loss / d output (a loss to minimise)."""
    plain = grad * positive
    silent = ~plain.flatten(1).any(dim=1)
    if not bool(silent.any()):  # the usual case once the optimisation is under way
        return plain
    redirected = grad * ~(~positive & (grad > 0))
    return torch.where(silent.view(-1, *[1] * (grad.dim() - 1)), redirected, plain)


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
        if func in NORMALIZATIONS and self.normalization == "identity" and args[0].requires_grad:
            return _PassThrough.apply(args[0], lambda x: func(x, *args[1:], **kwargs))
        if func in _UNCOVERED:
            self.uncovered.add(_UNCOVERED[func])
        return func(*args, **kwargs)


@contextmanager
def backward_rule(
    rule: str, *, normalization: str = "gradient", strict: bool = False, whole: bool = True
) -> Iterator[_RuleMode | None]:
    """Inside the block, forwards record ReLUs whose backward follows `rule`.

    `rule` is "gradient" (plain autograd), "deconvnet" or "guided". `normalization` is
    "gradient" (back-propagate through local response normalisation) or "identity" (pass the
    signal through, as the deconvnet of Zeiler & Fergus does). Nonlinearities the rule does not
    cover are reported in one warning after the block, or raise a ConvlensError when `strict`.
    A `whole` forward that applied no ReLU at all is refused (the rule would be the plain
    gradient); a forward stopped at a unit's layer may end before the first ReLU.
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
    if mode.uncovered and rule != "redirected":  # synthesis redirects ReLUs only on purpose
        message = (
            f"the {rule} rule covers ReLU only; this model also uses "
            f"{', '.join(sorted(mode.uncovered))}, whose backward stays the plain gradient"
        )
        if strict:
            raise ConvlensError(message)
        warnings.warn(message, stacklevel=3)
    if rule != "gradient" and whole and mode.applied == 0:
        raise ConvlensError(
            f"the {rule} rule needs ReLUs, and this model's forward applied none; use "
            "method 'gradient' or 'saliency' for it"
        )
