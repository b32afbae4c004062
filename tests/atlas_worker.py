"""A small atlas built in its own process, for the torchrun test.

Usage: python atlas_worker.py OUT   (under torchrun: every rank builds its share)
"""

from __future__ import annotations

import sys

import torch
from torch.utils.data import Subset

from convlens.atlas import AtlasConfig, write_atlas
from convlens.data import FashionMNIST
from convlens.distributed import sharded
from convlens.models.loading import LoadedModel
from convlens.models.preprocess import Preprocess
from convlens.models.zoo import BUILTIN_MODELS


def main() -> None:
    entry = BUILTIN_MODELS["zfnet-fashion"]
    torch.manual_seed(1)
    model = entry.build().eval()
    transform = Preprocess(1, (28, 28), entry.mean, entry.std)
    loaded = LoadedModel(model, transform, entry.classes, entry.input_size, entry.name)
    data = Subset(FashionMNIST("test", transform=transform), range(144))
    config = AtlasConfig(
        layers=["features.1", "features.9", "features.13"],
        images=5,
        skip=("evolution",),
        trust_images=4,
        synthesis_steps=4,
        embed=100,
        data_description="fashion-mnist test, first 144",
    )
    with sharded():
        write_atlas(loaded, data, sys.argv[1], config, progress=False)


if __name__ == "__main__":
    main()
