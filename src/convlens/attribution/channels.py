"""Which feature maps carried a decision: each channel's contribution to the target's score,
activation times gradient summed over the layer's positions (Olah et al. 2018, "The Building
Blocks of Interpretability"), through the one backward of `convlens.attribution.backward`."""

from __future__ import annotations

import torch
from torch import nn

from convlens._shown import Shown
from convlens.attribution.backward import backward
from convlens.attribution.cam import cam_layer
from convlens.attribution.result import Origin, origin
from convlens.targets import Target


class ChannelScores(Shown, torch.Tensor):
    """(N, K): each channel's contribution to each image's target score at `layer`; `origin`
    says what it was made from. Shown in a notebook as the top channels with their sign.
    Operations on it return plain tensors."""

    __torch_function__ = torch._C._disabled_torch_function_impl
    layer: str
    origin: Origin

    def __reduce_ex__(self, protocol: int) -> object:
        """Saved (`torch.save`, pickle) as the plain tensor."""
        return self.as_subclass(torch.Tensor).__reduce_ex__(protocol)


def channel_attribution(
    model: nn.Module, images: torch.Tensor, target: Target, layer: str | None = None
) -> ChannelScores:
    """(N, K): sum over positions of A_k * dS/dA_k, for A the output of `layer` (None: the
    last default layer, as for Grad-CAM) and S the target's pre-softmax score (or unit).

    It is a first-order estimate of how much S would fall if channel k were zeroed: exact when
    S is linear in the layer's output (a linear head after global pooling), an approximation
    through the ReLUs and pooling after it. On the built-in network its per-image rank
    correlation with the real drop, measured by zeroing each channel, has a median of 0.996 at
    features.13 and 0.944 at features.9 (tests/test_channels.py).

    Example:
        >>> scores = channel_attribution(model, images, 3, "features.13")  # doctest: +SKIP
        >>> scores[0].topk(5).indices  # the five maps that pushed image 0 to class 3 most
    """
    name = cam_layer(model, layer)
    found = backward(model, images, target, layer=name)
    product = found.values * found.grad
    values = product.flatten(2).sum(2) if product.dim() > 2 else product
    result = values.detach().as_subclass(ChannelScores)
    result.layer = name
    result.origin = origin(model, images, target)
    return result
