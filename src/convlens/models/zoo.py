"""Built-in networks, registered once so the CLI and `load_model` read the same list."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from convlens.normalization import LocalResponseNorm

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MEAN = (0.2860,)
FASHION_STD = (0.3530,)


@dataclass(frozen=True)
class BuiltinModel:
    """A registered built-in network: how to build it and what it expects."""

    name: str
    build: Callable[[], nn.Module]
    description: str
    input_size: tuple[int, int, int]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {}


def register_model(**spec) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Decorator adding a network builder to `BUILTIN_MODELS` under `spec["name"]`; a name
    registered twice is refused (as torchvision's `register_model` does)."""

    def decorate(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if spec["name"] in BUILTIN_MODELS:
            raise ValueError(f"a built-in model called {spec['name']!r} is already registered")
        BUILTIN_MODELS[spec["name"]] = BuiltinModel(build=build, **spec)
        return build

    return decorate


def zfnet(conv1_kernel: int = 5, conv1_stride: int = 1, num_classes: int = 10) -> nn.Sequential:
    """A ZFNet-style network for 1x28x28 images.

    Zeiler & Fergus (2014) Fig. 3 scaled down: five conv layers with ReLU, max-pooling after
    layers 1, 2 and 5 (3x3, stride 2, overlapping, so the switches matter), contrast
    normalisation across feature maps after layers 1 and 2, and two hidden fully connected
    layers with dropout before the classifier. Module names mirror torchvision's AlexNet.
    """
    padding = conv1_kernel // 2
    size = (28 + 2 * padding - conv1_kernel) // conv1_stride + 1

    def pooled(n: int) -> int:
        return (n + 2 - 3) // 2 + 1

    final = pooled(pooled(pooled(size)))
    features = nn.Sequential(
        nn.Conv2d(1, 32, conv1_kernel, stride=conv1_stride, padding=padding),  # 0: layer 1
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
        LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
        nn.Conv2d(32, 64, 3, padding=1),  # 4: layer 2
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
        LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
        nn.Conv2d(64, 96, 3, padding=1),  # 8: layer 3
        nn.ReLU(inplace=True),
        nn.Conv2d(96, 96, 3, padding=1),  # 10: layer 4
        nn.ReLU(inplace=True),
        nn.Conv2d(96, 64, 3, padding=1),  # 12: layer 5
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    classifier = nn.Sequential(
        nn.Dropout(0.5),
        nn.Linear(64 * final * final, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, num_classes),
    )
    net = ZFNet(features, classifier)
    _init_weights(net)
    return net


def _init_weights(net: nn.Module) -> None:
    """Zeiler & Fergus's 10^-2 for the first layer (so its filters are what training put there,
    not leftover noise), He initialisation for the deeper ReLU layers, small weights for the
    classifier, zero biases.

    PyTorch's default initialisation shrinks the signal layer by layer; without batch
    normalisation (which ZFNet does not have) that stalls training of eight layers.
    """
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers:
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    nn.init.normal_(layers[0].weight, std=0.01)
    nn.init.normal_(layers[-1].weight, std=0.01)


class ZFNet(nn.Module):
    """features -> flatten -> classifier, with AlexNet-style attribute names."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


_FASHION = dict(
    input_size=(1, 28, 28),
    classes=FASHION_CLASSES,
    mean=FASHION_MEAN,
    std=FASHION_STD,
    dataset="fashion-mnist",
)


@register_model(
    name="zfnet-fashion",
    description="ZFNet-style 5-conv network for Fashion-MNIST (5x5 first layer, stride 1)",
    **_FASHION,
)
def zfnet_fashion() -> nn.Module:
    return zfnet()


@register_model(
    name="zfnet-fashion-coarse",
    description="the same network with a large, coarse first layer (9x9, stride 3), the "
    "AlexNet-like setting whose aliasing Zeiler & Fergus diagnosed",
    **_FASHION,
)
def zfnet_fashion_coarse() -> nn.Module:
    return zfnet(conv1_kernel=9, conv1_stride=3)
