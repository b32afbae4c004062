"""Batch norm folded into the conv before it: same outputs, the user's model untouched, and no
folding where it would change the function."""

from __future__ import annotations

import torch
from conftest import batchnorm_net
from torch import nn

from convlens.models.fusion import conv_batchnorm_pairs, fold_batchnorm


def test_folded_copy_computes_the_same_function_and_leaves_the_model_alone():
    net = batchnorm_net()
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    image = torch.randn(3, 2, 10, 10)
    with torch.inference_mode():
        assert conv_batchnorm_pairs(net, image) == [("0", "1"), ("3", "4")]
        folded = fold_batchnorm(net, image)
        torch.testing.assert_close(folded(image), net(image), atol=1e-5, rtol=1e-5)
    assert folded is not net and isinstance(folded[1], nn.Identity)
    assert isinstance(net[1], nn.BatchNorm2d) and isinstance(net[4], nn.BatchNorm2d)
    assert all(torch.equal(net.state_dict()[name], value) for name, value in before.items())
    # the folded conv is the affine map of the norm applied after the original conv
    norm = net[1]
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    expected = net[0].weight * scale[:, None, None, None]
    torch.testing.assert_close(folded[0].weight, expected)


def test_kept_layers_and_training_norms_are_not_folded():
    net = batchnorm_net()
    image = torch.randn(1, 2, 8, 8)
    with torch.inference_mode():
        kept = fold_batchnorm(net, image, keep=["1"])
        assert isinstance(kept[1], nn.BatchNorm2d) and isinstance(kept[4], nn.Identity)
        assert fold_batchnorm(net.train(), image) is net


class ConvOutputUsedTwice(nn.Module):
    """y = conv(x); bn(y) + y: folding the norm into the conv would change the second use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.norm = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.norm.running_mean.fill_(2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.norm(y) + y


def test_a_conv_output_used_elsewhere_is_not_folded():
    net = ConvOutputUsedTwice().eval()
    with torch.inference_mode():
        assert fold_batchnorm(net, torch.randn(1, 2, 6, 6)) is net


def test_a_network_trained_with_batch_norm_saves_as_its_own_architecture_folded():
    from convlens.models.fusion import folded_state, with_batch_norm
    from convlens.models.zoo import BUILTIN_MODELS

    torch.manual_seed(0)
    plain = BUILTIN_MODELS["zfnet-fashion"].build().eval()
    trained = with_batch_norm(plain)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in trained.modules()) == 5
    with torch.no_grad():
        for norm in (m for m in trained.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.3, 3)
            norm.weight.uniform_(0.5, 2)
            norm.bias.normal_()
    trained.eval()
    plain.load_state_dict(folded_state(trained))  # strict: exactly the plain network's keys
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(plain(x), trained(x), atol=1e-5, rtol=1e-5)
    assert [n for n, _ in plain.named_modules()][:3] == ["", "features", "features.0"]
