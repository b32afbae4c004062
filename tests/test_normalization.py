"""convlens's local response normalisation equals torch's, forward and backward, and is the same
module to the rest of the code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens.normalization import LocalResponseNorm, local_response_norm


@pytest.mark.parametrize("shape", [(3, 7, 5, 5), (2, 1, 4, 4), (2, 6, 9), (2, 3, 2, 4, 4)])
@pytest.mark.parametrize("size", [1, 2, 5, 6])
def test_it_equals_torchs_forward_and_backward(shape, size):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    ours = local_response_norm(x, size, alpha=0.3, beta=0.75, k=2.0)
    theirs = F.local_response_norm(x, size, alpha=0.3, beta=0.75, k=2.0)
    torch.testing.assert_close(ours, theirs)
    seed = torch.randn_like(ours)
    (mine,) = torch.autograd.grad(ours, x, seed)
    (reference,) = torch.autograd.grad(theirs, x, seed)
    torch.testing.assert_close(mine, reference)


def test_the_module_is_torchs_module_to_everything_else():
    module = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
    assert isinstance(module, nn.LocalResponseNorm)
    assert repr(module) == repr(nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0))
    x = torch.rand(4, 32, 14, 14).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(module(x), F.local_response_norm(x, 5, 1e-4, 0.75, 2.0))
