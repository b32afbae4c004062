"""Every result shows itself in a notebook: a decodable, non-blank PNG titled with what it is,
or escaped HTML with its title; `cl.show` lays results out side by side."""

from __future__ import annotations

import copy
import dataclasses
import gc
import io

import numpy as np
import pytest
import torch
from conftest import random_builtin
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

import convlens as cl
from convlens._shown import Page, Picture, shown
from convlens.analysis.evolution import Evolution, evolution_projections
from convlens.embedding import Embedding
from convlens.models.card import _CARDS, card_of
from convlens.models.layers import default_layers
from convlens.models.preprocess import Preprocess
from convlens.models.zoo import BUILTIN_MODELS
from convlens.synthesis import class_score
from convlens.trust.assess import assess

HOSTILE = "<script>alert(1)</script>"
CLASSES = (HOSTILE, *(f"class {i}" for i in range(1, 10)))


@pytest.fixture(scope="module")
def made():
    """A random built-in network loaded under a name, with a hostile class name, and data."""
    loaded = random_builtin(CLASSES, "my-net")
    model = loaded.model
    images = torch.randn(10, 1, 28, 28)
    labels = torch.arange(10) % 10
    return loaded, TensorDataset(images, labels), images, labels, default_layers(model)


def results(made) -> dict[type, tuple[object, list[str]]]:
    """One result of every type the public API returns, and words its title must hold."""
    loaded, data, images, labels, layers = made
    model, x = loaded.model, images[:3]
    found = cl.scan(model, data, layers[-2:], k=3)
    twin = BUILTIN_MODELS["zfnet-fashion"].build().eval()
    xy = np.random.default_rng(0).normal(size=(9, 2))  # t-SNE needs more points than this
    made_results = [
        (cl.grad_cam(model, x, 0), ["my-net", "gradcam"]),
        (cl.channel_attribution(model, x, 0), ["my-net", layers[-1], "channels"]),
        (cl.occlusion(model, x[:2], window=7, stride=7, layer=layers[-1]), ["my-net", "occlusion"]),
        (cl.top_examples(model, data, found, layers[-1], 2), [layers[-1], "channel 2"]),
        (cl.synthesize(loaded, class_score([1, 2]), n=2, steps=2), ["class [1, 2]"]),
        (cl.invert(loaded, layers[1], x[:1], steps=2), [layers[1]]),
        (cl.fooling_image(model, x[0], 3, max_steps=2), ["fooling"]),
        (
            Embedding(
                np.arange(9), xy, cl.grid_layout(xy, 3, 3), labels[:9].numpy(), data, loaded.card
            ),
            ["my-net", "9 images"],
        ),
        (cl.nearest_neighbours(model, data, data, 2), ["my-net", "neighbours"]),
        (evolved(model, data, found, layers[-1]), ["a, b"]),
        (cl.invariance(model, x, labels[:3], layers[:2], "rotate"), ["rotate"]),
        (cl.dead_units(model, data, layers[:2]), ["10 images"]),
        (cl.dead_units(model, data, layers[:1])[layers[0]], ["10 images"]),
        (cl.filters(model, "features.0"), ["features.0", "filters"]),
        (
            cl.neuron_groups(model, x[0], layers[-2], groups=3, icons=True, icon_steps=2),
            ["my-net", "3 neuron groups"],
        ),
        (
            cl.activation_atlas(model, data, layers[-1], grid=3, samples=10, icon_steps=2),
            ["my-net", "activation atlas", layers[-1]],
        ),
        (cl.feature_maps(model, x[0], layers[0]), [layers[0], "feature maps"]),
        (cl.randomisation_test(model, x, 0, ["gradient"]), ["randomisation"]),
        (cl.data_randomisation_test(model, twin, x, 0, ["gradient"]), ["data randomisation"]),
        (cl.deletion(model, x, 0, cl.saliency(model, x, 0), steps=4), ["deletion", "3 images"]),
        (cl.soft_mask(model, x, 0, cl.saliency(model, x, 0)), ["soft masks"]),
        (assess(model, x, labels[:3], ["gradient"], steps=2), ["trust"]),
        (found, ["10 images"]),
        (cl.correspondence(model, x, [(0, 0, 8, 8)] * 3, layers[-1], draws=2), ["correspondence"]),
    ]
    return {type(result): (result, words) for result, words in made_results}


def evolved(model, data, found, layer: str) -> Evolution:
    """An Evolution of two "checkpoints" (the same model twice) with map 0's projections."""
    evo = Evolution(["a", "b"], [found, found], {layer: [0]})
    field = cl.receptive_field(model, layer, (1, 28, 28))
    cells = evolution_projections(evo, [model, model], data, layer, 0, field)
    return dataclasses.replace(evo, projections={layer: cells[None]})


def test_every_result_type_shows_itself_with_its_title(made):
    found = results(made)
    registered = set(shown.registry) - {object}
    assert registered <= set(found) | {cl.AttributionMap}, registered - set(found)
    for kind, (result, words) in found.items():
        bundle = result._repr_mimebundle_()
        title = bundle["text/plain"]
        for word in words:
            assert word in title, (kind.__name__, word, title)
        image = bundle.get("image/png", bundle.get("image/jpeg"))
        if image is not None:
            picture = Image.open(io.BytesIO(image))
            titled = picture.text["Title"] if "image/png" in bundle else picture.info["comment"]
            assert titled in (title, title.encode()), kind.__name__
            pixels = np.asarray(picture.convert("RGB"))
            assert pixels.std() > 10, kind.__name__  # neither blank nor one flat colour
        else:
            assert "<table>" in bundle["text/html"], kind.__name__
            assert "<script>" not in bundle["text/html"], kind.__name__


def test_user_strings_are_escaped_in_html():
    net = nn.Sequential()
    net.add_module(HOSTILE, nn.Conv2d(1, 2, 3))
    found = cl.scan(net, TensorDataset(torch.randn(4, 1, 8, 8)), [HOSTILE], k=2)
    page = found._repr_mimebundle_()["text/html"]
    assert HOSTILE not in page and "&lt;script&gt;" in page
    assert HOSTILE not in Page(HOSTILE, "").html()
    picture = Picture(np.zeros((2, 2, 3), np.uint8), HOSTILE)
    assert (
        HOSTILE not in picture.html()
        and Image.open(io.BytesIO(picture.png())).text["Title"] == HOSTILE
    )


def test_each_row_of_an_attribution_picture_names_its_target(made):
    from convlens.report.display import target_name

    loaded, _, images, _, _ = made
    maps = cl.deconvnet(loaded.model, images[:2], cl.Unit("features.4", 5, 1, 2))
    assert target_name(maps.origin.target, maps.origin.card, 1, 2) == "features.4 unit 5 at (1, 2)"
    maps = cl.saliency(loaded.model, images[:2], [0, 3])
    assert [target_name([0, 3], loaded.card, i, 2) for i in range(2)] == [HOSTILE, "class 3"]


def test_a_batch_draws_at_most_eight_images_and_says_so(made):
    loaded, _, images, _, _ = made
    picture = shown(cl.saliency(loaded.model, images, 0))
    assert "(first 8 of 10)" in picture.title


def test_show_puts_maps_of_the_same_images_in_one_row_per_image(made):
    loaded, _, images, _, _ = made
    model, x = loaded.model, images[:2]
    maps = [cl.saliency(model, x, 0), cl.guided_backprop(model, x, 0), cl.grad_cam(model, x, 0)]
    one = cl.show(maps[0])
    three = cl.show(*maps)
    shared = cl.show(*maps, shared_scale=True)
    assert isinstance(three, Picture)
    assert three.array.shape[1] > 2 * one.array.shape[1]  # the image, then three panels
    assert shared.array.shape[0] > three.array.shape[0]  # each row gains its colour bar
    assert "saliency, guided, gradcam" in three.title


def test_show_refuses_what_it_cannot_lay_out(made):
    loaded, _, images, _, _ = made
    model = loaded.model
    with pytest.raises(ValueError, match="same images"):
        cl.show(cl.saliency(model, images[:2], 0), cl.saliency(model, images[2:4], 0))
    with pytest.raises(ValueError, match="shared_scale"):
        cl.show(cl.filters(model, "features.0"), shared_scale=True)
    scores = cl.soft_mask(model, images[:2], 0, cl.saliency(model, images[:2], 0))
    with pytest.raises(TypeError, match="table"):
        cl.show(cl.filters(model, "features.0"), scores)
    side = cl.show(cl.filters(model, "features.0"), cl.feature_maps(model, images[0], "features.1"))
    assert "filters" in side.title and "feature maps" in side.title


def test_a_loaded_model_is_named_and_the_card_does_not_keep_it_alive():
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    assert card_of(model).name == "Sequential"  # unknown: its class, min-max display
    shown_images = card_of(model).shown(torch.tensor([[[[2.0, 4.0], [6.0, 10.0]]]]))
    torch.testing.assert_close(shown_images.flatten(), torch.tensor([0.0, 0.25, 0.5, 1.0]))
    cl.LoadedModel(model, Preprocess(1, (8, 8), (0.5,), (0.25,)), ("a", "b"), (1, 8, 8), "mine")
    assert card_of(model).name == "mine"
    gc.collect()  # models of earlier tests held only by reference cycles (traced graphs) go first
    before = len(_CARDS)
    del model
    gc.collect()
    assert len(_CARDS) == before - 1


def test_pictures_from_the_cli_and_the_notebook_are_the_same(made, tmp_path):
    from convlens.report.results import save_attribution_row

    loaded, _, images, _, _ = made
    maps = [cl.saliency(loaded.model, images[:1], 0), cl.grad_cam(loaded.model, images[:1], 0)]
    written = np.asarray(Image.open(save_attribution_row(maps, tmp_path, shared_scale=True)))
    np.testing.assert_array_equal(written, cl.show(*maps, shared_scale=True).array)


def test_photographs_go_to_notebooks_as_jpeg_and_charts_as_png():
    from skimage import data as photos

    from convlens import charts

    photo = Picture(photos.chelsea(), "cat")
    chart = Picture(charts.line_plot([0, 1, 2], np.array([[0.0, 1.0, 0.5]]), "y", "x"), "chart")
    assert photo.encoded()[0] == "image/jpeg" and len(photo.jpeg()) * 2 < len(photo.png())
    assert chart.encoded()[0] == "image/png"
    decoded = Image.open(io.BytesIO(photo.encoded()[1]))
    assert decoded.size == (photo.array.shape[1], photo.array.shape[0])
    assert decoded.info["comment"] == b"cat"


def test_class_models_are_captioned_with_their_class_names(made):
    loaded = made[0]
    result = cl.synthesize(loaded, class_score([0, 3]), n=2, steps=1)
    assert result.labels == (f"0: {HOSTILE}", "3: class 3")
    single = cl.synthesize(loaded, "features.4:1", n=2, steps=1, offset=4)
    assert single.labels == ("features.4:1 #4", "features.4:1 #5")


def test_maps_keep_a_small_copy_of_their_inputs_and_save_as_plain_tensors(made, tmp_path):
    loaded, _, images, _, _ = made
    maps = cl.saliency(loaded.model, images, 0)
    assert maps.origin.images.shape[0] == 8  # of 10: what the picture draws, never the batch
    assert maps.origin.images.untyped_storage().data_ptr() != images.untyped_storage().data_ptr()
    torch.save(maps, tmp_path / "maps.pt")
    loaded_back = torch.load(tmp_path / "maps.pt", weights_only=True)
    assert type(loaded_back) is torch.Tensor and torch.equal(loaded_back, maps)
    copied = copy.deepcopy(maps)
    assert copied.method == "saliency" and torch.equal(copied, maps)


def test_show_names_each_panel_when_targets_or_models_differ(made):
    loaded, _, images, _, _ = made
    other = random_builtin(spec="other-net")
    x = images[:1]
    mixed = cl.show(cl.saliency(loaded.model, x, 1), cl.saliency(loaded.model, x, 3))
    twins = cl.show(cl.saliency(loaded.model, x, 1), cl.saliency(loaded.model, x, 1))
    models = cl.show(cl.saliency(loaded.model, x, 1), cl.saliency(other.model, x, 1))
    one = cl.show(cl.saliency(loaded.model, x, 1))
    width = one.array.shape[1]
    for picture in (mixed, twins, models):  # the image and both panels: none dropped
        assert picture.array.shape[1] > width + 200
    assert "my-net, other-net" in models.title


def test_results_without_their_context_still_show(made):
    loaded, data, images, labels, layers = made
    xy = np.random.default_rng(0).normal(size=(9, 2))
    bare = Embedding(np.arange(9), xy, cl.grid_layout(xy, 3, 3), labels[:9].numpy())
    assert "image/png" in bare._repr_mimebundle_()
    near = cl.nearest_neighbours(loaded.model, data, data, 2)
    bare_near = dataclasses.replace(near, queries=None, gallery=None)
    assert "<table>" in bare_near._repr_mimebundle_()["text/html"]
    assert "no layers" in cl.dead_units(loaded.model, data, [])._repr_mimebundle_()["text/html"]
    with torch.inference_mode():
        maps = cl.occlusion(loaded.model, images[0], window=7, stride=7, layer=layers[-1])
    assert maps.projection is None and "image/png" in maps._repr_mimebundle_()


def test_chunked_unit_images_are_labelled_with_their_maps(made):
    loaded, _, _, _, layers = made
    found, _ = cl.synthesize_units(loaded, layers[0], [0, 1, 2], batch_size=2, steps=1)
    assert found.labels == ("map 0", "map 1", "map 2")
    with pytest.raises(cl.ConvlensError, match="2 classes for 3 images"):
        cl.synthesize(loaded, class_score([1, 2]), n=3, steps=1)


def test_a_long_panel_title_wraps_and_the_row_stays_aligned():
    from convlens import render

    tile = np.zeros((40, 60, 3), np.uint8)
    row = render.panel_row([("a", tile), ("a title far too long for sixty pixels", tile)])
    one_line = render.caption(tile, "a")
    assert row.shape[0] > one_line.shape[0]  # the long title took more than one line
    for column in (30, 60 + 8 + 30):  # each image's bottom row is the row's last: aligned
        assert row[-1, column, 0] == 0 and row[-40, column, 0] == 0 and row[-41, column, 0] == 255
