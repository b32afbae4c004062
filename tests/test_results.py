"""Every `report.results.save_*` writes its figures from a finished result alone: each is called
with a model whose forward raises, and a test fails when a new save_* is not covered here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import random_builtin
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

import convlens as cl
from convlens.analysis.evolution import Evolution, evolution_projections
from convlens.analysis.filters import conv_weight, first_layer, layer_maps
from convlens.embedding import Embedding, grid_layout
from convlens.models.layers import default_layers
from convlens.report import results
from convlens.synthesis import adversarial_accuracy, class_score
from convlens.trust.assess import assess


class RaisingForward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a save_* function ran the model")


@pytest.fixture(scope="module")
def made():
    """A random built-in network, a few images, and every kind of result computed from them."""
    loaded = random_builtin()
    model = loaded.model
    images = torch.randn(6, 1, 28, 28)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    data = TensorDataset(images, labels)
    layers = default_layers(model)
    return loaded, data, images, labels, layers


def cases(made) -> dict:
    """save_* name → its arguments, all computed with the real model."""
    loaded, data, images, labels, layers = made
    model, image = loaded.model, images[0]
    maps = cl.occlusion(model, image, 3, window=7, stride=7, layer=layers[-1])
    xy = np.random.default_rng(0).normal(size=(4, 2))
    found = Embedding(
        np.arange(4), xy, grid_layout(xy, 2, 2), labels[:4].numpy(), data, loaded.card
    )
    scans = [cl.scan(model, data, layers[-1:], k=1)] * 2
    evo = Evolution(["run/epoch-001.safetensors", "run/epoch-002.safetensors"], scans, {})
    field = cl.receptive_field(model, layers[-1], loaded.input_size)
    cells = evolution_projections(evo, [model, model], data, layers[-1], 0, field)
    evo = dataclasses.replace(
        evo, channels={layers[-1]: [0]}, projections={layers[-1]: cells[None]}
    )
    meta = {"config": {"model": "zfnet-fashion"}, "test_accuracy": 0.5}
    return {
        "save_filters": ({layer: conv_weight(model, layer) for layer in cl.conv_layers(model)},),
        "save_feature_maps": (layer_maps(model, image, layers),),
        "save_attribution": (loaded, image, "guided", cl.guided_backprop(model, images[:1], 3)[0]),
        "save_attribution_row": (
            [cl.grad_cam(model, images[:1], 3), cl.integrated_gradients(model, images[:1], 3)],
        ),
        "save_occlusion": (maps[0],),
        "save_channels": (cl.channel_attribution(model, images[:2], [3, 1]),),
        "save_neuron_groups": (cl.neuron_groups(model, image, layers[-1], 3, icon_steps=2),),
        "save_activation_atlas": (
            cl.activation_atlas(model, data, layers[-1], grid=2, samples=6, icon_steps=2),
        ),
        "save_synthesis": (cl.synthesize(loaded, class_score([1, 2]), n=2, steps=2),),
        "save_inversion": (cl.invert(loaded, layers[1], image[None], steps=2),),
        "save_fooling": (cl.fooling_image(model, image, 3, max_steps=2),),
        "save_adversarial_accuracy": (adversarial_accuracy(model, images, labels, [0.01]),),
        "save_embedding": (found,),
        "save_neighbours": (cl.nearest_neighbours(model, data, data, 2),),
        "save_diagnosis": ({"run": (meta, first_layer(model, data))},),
        "save_evolution": (evo,),
        "save_invariance": (cl.invariance(model, images[:2], labels[:2], layers[:2], "rotate"),),
        "save_dead_units": (cl.dead_units(model, data, layers),),
        "save_trust": (assess(model, images[:3], labels[:3], ["gradient", "gradcam"], steps=4),),
    }


def test_every_save_writes_its_figures_without_running_the_model(made, tmp_path):
    arguments = cases(made)
    assert set(arguments) == {name for name in dir(results) if name.startswith("save_")}
    raising = dataclasses.replace(made[0], model=RaisingForward())
    for name, args in arguments.items():
        args = tuple(raising if a is made[0] else a for a in args)
        out = tmp_path / name
        if name in ("save_synthesis", "save_activation_atlas"):  # these take a file name
            getattr(results, name)(*args, out, "grid")
        else:
            getattr(results, name)(*args, out)
        written = sorted(out.rglob("*"))
        assert written, name
        for png in (p for p in written if p.suffix == ".png"):
            assert np.asarray(Image.open(png)).std() > 0, (name, png.name)  # not blank


def test_every_save_with_a_suffix_writes_its_figures_as_jpeg_when_asked(made, tmp_path):
    import inspect

    takes = {
        n: a
        for n, a in cases(made).items()
        if "suffix" in inspect.signature(getattr(results, n)).parameters
    }
    assert {"save_synthesis", "save_neighbours", "save_occlusion", "save_neuron_groups"} <= set(
        takes
    )
    for name, args in takes.items():
        out = tmp_path / name
        extra = ("grid",) if name == "save_synthesis" else ()
        written = getattr(results, name)(*args, out, *extra, suffix=".jpg")
        assert written.suffix == ".jpg" and np.asarray(Image.open(written)).std() > 0, name
        assert not list(out.glob("*.png")), name


def test_the_occlusion_figure_shows_the_projection_of_the_followed_map(made, tmp_path):
    loaded, _, images, _, layers = made
    maps = cl.occlusion(loaded.model, images[:2], 3, window=7, stride=7, layer=layers[-1])
    expected = cl.deconvnet(loaded.model, images[1:2], cl.Unit(layers[-1], int(maps.channel[1])))
    torch.testing.assert_close(maps.projection[1:2], expected)
    results.save_occlusion(maps[1], tmp_path)
    saved = np.load(tmp_path / "occlusion.npz")
    np.testing.assert_allclose(saved["projection"], expected[0].numpy(), atol=1e-6)
    assert {p.name for p in tmp_path.glob("occlusion-*.png")} == {
        f"occlusion-{panel}.png" for panel in "abcde"
    }


def test_the_smaller_of_png_and_jpeg_is_written_and_reads_back(tmp_path):
    from convlens.report import write_smaller

    blocks = np.kron(np.random.default_rng(0).integers(0, 256, (8, 8, 1)), np.ones((40, 40, 3)))
    noise = np.random.default_rng(1).normal(128, 40, (320, 320, 3)).clip(0, 255)
    flat = write_smaller(tmp_path / "blocks", blocks.astype(np.uint8))
    fine = write_smaller(tmp_path / "noise", noise.astype(np.uint8))
    assert (flat.name, fine.name) == ("blocks.png", "noise.jpg")
    assert np.array_equal(np.asarray(Image.open(flat)), blocks.astype(np.uint8))  # lossless
    assert np.abs(np.asarray(Image.open(fine)).astype(float) - noise.astype(np.uint8)).mean() < 20
