"""Tiny networks with known structure, shared by the tests. No downloads, seconds per test."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


def small_sequential(pool: type[nn.Module] = nn.MaxPool2d) -> nn.Sequential:
    """Conv (stride 2, pad 1) → ReLU → pool 3/2 → dilated conv → ReLU → conv → ReLU."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        pool(3, stride=2, padding=1),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(4, 3, 5, padding=1),
        nn.ReLU(),
    )


class TinyResNet(nn.Module):
    """A stem and one residual block whose ReLU module is called twice, like torchvision's."""

    def __init__(self, pool: type[nn.Module] = nn.MaxPool2d) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.pool = pool(3, stride=2, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.down = nn.Conv2d(4, 4, 1, stride=2)
        self.conv3 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.stem(x)))
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        out += x
        out = self.relu(out)
        out = torch.relu(self.conv3(out)) + self.down(out)
        return self.head(out.mean((2, 3)))


class DataDependent(nn.Module):
    """A conv whose output's sign depends on its values: control flow torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if y.sum() > 0 else -y


def batchnorm_net() -> nn.Sequential:
    """Conv → batch-norm pairs (a conv without bias, a norm without affine) with running
    statistics far from the identity, then a classifier head; in eval mode."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4, affine=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    with torch.no_grad():
        for norm in (net[1], net[4]):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.3, 3)
        net[1].weight.uniform_(0.5, 2)
        net[1].bias.normal_()
    return net.eval()


def random_builtin(classes: tuple[str, ...] | None = None, spec: str = "zfnet-fashion"):
    """The built-in network with random weights (seed 0), in eval mode, as a LoadedModel with
    its preprocessing and `classes` (its own by default), named `spec`."""
    from convlens.models.loading import LoadedModel
    from convlens.models.preprocess import Preprocess
    from convlens.models.zoo import BUILTIN_MODELS, FASHION_CLASSES

    torch.manual_seed(0)
    entry = BUILTIN_MODELS["zfnet-fashion"]
    transform = Preprocess(1, (28, 28), entry.mean, entry.std)
    names = FASHION_CLASSES if classes is None else classes
    return LoadedModel(entry.build().eval(), transform, names, entry.input_size, spec)


@pytest.fixture
def sequential_net() -> nn.Sequential:
    torch.manual_seed(0)
    return small_sequential()


@pytest.fixture
def resnet_net() -> TinyResNet:
    torch.manual_seed(0)
    return TinyResNet()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty convlens cache for the test."""
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def trained_default():
    """The built-in default exactly as `convlens demo` uses it: today's recipe (about 5 minutes
    on 2 cores), trained once per machine into the user cache where load_model finds it, and
    reused after; a cached model of another recipe is moved aside (`ensure_trained`). Returns
    (LoadedModel, checkpoint folder)."""
    from convlens.data.fashion_mnist import DEBIAN_DIR
    from convlens.models.loading import load_model
    from convlens.training import ensure_trained

    if not DEBIAN_DIR.exists():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    path = ensure_trained("zfnet-fashion")
    return load_model("zfnet-fashion", str(path)), path.parent
