"""Folding eval-mode batch norm into the convolution before it: the same function with one pass
over each feature map less, for work that runs the same model over many images (occlusion).

A BatchNorm2d in eval mode is a per-channel affine map y = a * x + b, so conv → bn equals a conv
with weights scaled by a and bias a * bias + b (values agree to float rounding, ~1e-6).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from convlens.hooks import registered_hooks

FOLD_TOLERANCE = 1e-4  # largest output difference of a folded copy, relative to the output's scale


def conv_batchnorm_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv, bn) names where an eval-mode BatchNorm2d's input is exactly the output of a Conv2d,
    each called once in a forward of `example`."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []

    def conv_hook(name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            produced[id(output)] = (name, output)  # the tensor is kept, so its id stays unique

        return hook

    def bn_hook(name: str):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            calls[name] = calls.get(name, 0) + 1
            if inputs and id(inputs[0]) in produced:
                pairs.append((produced[id(inputs[0])][0], name))

        return hook

    with registered_hooks() as handles:
        for name, module in model.named_modules():
            if type(module) is nn.Conv2d:
                handles.append(module.register_forward_hook(conv_hook(name)))
            elif _foldable_batchnorm(module):
                handles.append(module.register_forward_pre_hook(bn_hook(name)))
        model(example)
    return [(conv, bn) for conv, bn in pairs if calls[conv] == 1 and calls[bn] == 1]


def fold_batchnorm(model: nn.Module, example: torch.Tensor, keep: Iterable[str] = ()) -> nn.Module:
    """A copy of `model` with every conv → batch-norm pair folded into the conv, or `model` itself
    when nothing folds or the copy's output on `example` differs by more than FOLD_TOLERANCE (a
    conv output also used elsewhere). Layers named in `keep` (whose outputs are captured) are
    left unfolded. Call it in inference mode; the model is not changed.
    """
    keep = set(keep)
    pairs = [
        (conv, bn)
        for conv, bn in conv_batchnorm_pairs(model, example)
        if conv not in keep and bn not in keep
    ]
    if not pairs:
        return model
    folded = copy.deepcopy(model)
    for conv, bn in pairs:
        _fold_pair(folded.get_submodule(conv), folded.get_submodule(bn))
        parent, _, child = bn.rpartition(".")
        setattr(folded.get_submodule(parent), child, nn.Identity().train(False))
    return folded if outputs_agree(model(example), folded(example), FOLD_TOLERANCE) else model


def outputs_agree(expected: torch.Tensor, got: torch.Tensor, tolerance: float) -> bool:
    """Whether `got` has `expected`'s shape and differs from it nowhere by more than `tolerance`
    times the largest |expected| (at least 1)."""
    expected, got = expected.float(), got.float()
    scale = float(expected.abs().max().clamp(min=1.0))
    return got.shape == expected.shape and bool(((got - expected).abs() <= tolerance * scale).all())


def _foldable_batchnorm(module: nn.Module) -> bool:
    return (
        type(module) is nn.BatchNorm2d
        and not module.training
        and module.running_mean is not None
        and module.running_var is not None
    )


@torch.no_grad()
def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv ← bn ∘ conv, in place (on a copy)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 in hardware (a CUDA GPU of compute capability 8 or
    more, a CPU with AVX-512 BF16 or AMX), where autocast to bfloat16 is faster; elsewhere it is
    emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own checks
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def bfloat16_copy(runner: nn.Module, model: nn.Module) -> nn.Module:
    """`runner` with its weights in bfloat16, cast once (under inference mode autocast would cast
    them again at every forward). Never the user's model: a copy of it is made with its tensors
    cast on the way, so no float32 copy is held at the same time."""
    if runner is not model:
        return runner.to(torch.bfloat16)  # already a private copy (batch norm folded)
    cast: dict[int, torch.Tensor] = {
        id(param): nn.Parameter(param.detach().to(torch.bfloat16), requires_grad=False)
        for param in model.parameters()
        if param.is_floating_point()
    }
    cast.update(
        {
            id(buffer): buffer.to(torch.bfloat16)
            for buffer in model.buffers()
            if buffer.is_floating_point()
        }
    )
    return copy.deepcopy(model, memo=cast)


def with_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of `model` to train with a batch norm after every convolution: each Conv2d becomes
    Sequential(conv, BatchNorm2d) in its place, so `folded_state` gives back the state of
    `model`'s own architecture (Zeiler & Fergus's conv / ReLU / pool, which the deconvnet
    inverts exactly) with each batch norm folded into its conv."""
    trained = copy.deepcopy(model)
    for name, module in list(trained.named_modules()):
        if type(module) is nn.Conv2d:
            parent, _, child = name.rpartition(".")
            pair = nn.Sequential(module, nn.BatchNorm2d(module.out_channels))
            setattr(trained.get_submodule(parent), child, pair)
    return trained


def _pairs(trained: nn.Module) -> dict[str, nn.Sequential]:
    """The Sequential(conv, batch norm) pairs of a `with_batch_norm` network, by name."""
    return {
        name: module
        for name, module in trained.named_modules()
        if isinstance(module, nn.Sequential)
        and len(module) == 2
        and type(module[0]) is nn.Conv2d
        and isinstance(module[1], nn.BatchNorm2d)
    }


def conv_batchnorm_modules(trained: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The (conv, batch norm) modules of a `with_batch_norm` network (none for another)."""
    return [(pair[0], pair[1]) for pair in _pairs(trained).values()]


def folded_state(trained: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the architecture `with_batch_norm` started from: every (conv, batch
    norm) pair of `trained` folded into one conv with the norm's running statistics
    (`torch.nn.utils.fusion.fuse_conv_bn_weights`), everything else as it is."""
    pairs = _pairs(trained)
    state = {
        key: value.detach()
        for key, value in trained.state_dict().items()
        if key.rsplit(".", 2)[0] not in pairs
    }
    for name, (conv, norm) in pairs.items():
        weight, bias = fuse_conv_bn_weights(
            conv.weight,
            conv.bias,
            norm.running_mean,
            norm.running_var,
            norm.eps,
            norm.weight,
            norm.bias,
        )
        state[f"{name}.weight"], state[f"{name}.bias"] = weight.detach(), bias.detach()
    return state
