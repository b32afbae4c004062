"""Sanity checks and faithfulness: deletion and insertion against the analytic curve of a linear
model, the randomisation test against methods known to pass and to fail, the user's model left
bit-identical."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TinyResNet
from torch import nn

import convlens as cl
from convlens.trust import randomisable_layers, reference_maps, similarity
from convlens.trust.reference import edge_map


class Linear2(nn.Module):
    """logits = (sum(w * x), 0): the probability of class 0 is sigmoid(sum(w * x))."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (self.weight * x).flatten(1).sum(1)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def analytic(weight, image, attribution, steps, kind, baseline=0.0):
    """The curve written out: pixels in order of attribution (ties to the lower index), the
    score after each step summed by hand."""
    flat_w, flat_x, flat_a = (
        weight.flatten().tolist(),
        image.flatten().tolist(),
        attribution.flatten().tolist(),
    )
    order = sorted(range(len(flat_a)), key=lambda p: (-flat_a[p], p))
    curve = []
    for i in range(steps + 1):
        chosen = set(order[: round(i * len(order) / steps)])
        score = 0.0
        for p in range(len(order)):
            removed = p in chosen if kind == "deletion" else p not in chosen
            score += flat_w[p] * (baseline if removed else flat_x[p])
        curve.append(1 / (1 + math.exp(-score)))
    return torch.tensor(curve)


@pytest.mark.parametrize("kind", ["deletion", "insertion"])
def test_deletion_and_insertion_follow_the_analytic_curve_of_a_linear_model(kind):
    torch.manual_seed(0)
    weight = torch.randn(1, 1, 6, 5) * 0.5
    images = torch.randn(3, 1, 6, 5)
    model = Linear2(weight)
    attribution = (weight * images)[:, 0]
    attribution[1, 0, :3] = attribution[1, 0, 0]  # ties, broken by the lower index
    method = cl.deletion if kind == "deletion" else cl.insertion
    found = method(model, images, 0, attribution, steps=7, baseline=0.25, batch_size=5)
    for n in range(3):
        expected = analytic(weight, images[n], attribution[n], 7, kind, 0.25)
        torch.testing.assert_close(found.curve[n], expected, atol=1e-6, rtol=1e-5)
        area = (expected.sum() - (expected[0] + expected[-1]) / 2) / 7
        torch.testing.assert_close(found.auc[n], area, atol=1e-6, rtol=1e-5)
    # a channel axis sums into the ranking
    again = method(model, images, 0, attribution[:, None], steps=7, baseline=0.25)
    torch.testing.assert_close(again.curve, found.curve)


@pytest.mark.parametrize("steps", [6, 1])
def test_faithfulness_of_several_maps_follows_the_analytic_curves(steps):
    torch.manual_seed(4)
    weight = torch.randn(1, 1, 5, 4) * 0.5
    images = torch.randn(3, 1, 5, 4)
    maps = {"signal": (weight * images)[:, 0], "noise": torch.rand(3, 5, 4)}
    model = Linear2(weight)
    found = cl.faithfulness(
        model,
        images,
        0,
        maps,
        steps,
        deletion_baseline=-0.5,
        insertion_baseline=0.75,
        batch_size=4,
    )
    for kind, baseline in (("deletion", -0.5), ("insertion", 0.75)):
        for name, attribution in maps.items():
            for n in range(3):
                expected = analytic(weight, images[n], attribution[n], steps, kind, baseline)
                torch.testing.assert_close(
                    found[kind][name].curve[n], expected, atol=1e-6, rtol=1e-5
                )
            assert found[kind][name].kind == kind
    with pytest.raises(ValueError, match=r"\{name: attribution\} dict"):
        cl.faithfulness(model, images, 0, maps["noise"])


def test_soft_mask_scores_by_hand():
    torch.manual_seed(1)
    weight = torch.randn(1, 1, 4, 4)
    images = torch.randn(5, 1, 4, 4)
    model = Linear2(weight)
    maps = torch.rand(5, 4, 4)
    found = cl.soft_mask(model, images, 0, maps)
    for n in range(5):
        scaled = (maps[n] - maps[n].min()) / (maps[n].max() - maps[n].min())
        before = torch.sigmoid((weight[0, 0] * images[n, 0]).sum())
        after = torch.sigmoid((weight[0, 0] * images[n, 0] * scaled).sum())
        assert math.isclose(
            float(found.drop[n]), max(0.0, float((before - after) / before)), abs_tol=1e-6
        )
        assert bool(found.increase[n]) == bool(after > before)
    assert found.average_drop == pytest.approx(100 * float(found.drop.mean()))


def test_the_randomisation_test_leaves_the_model_bit_identical():
    torch.manual_seed(0)
    model = TinyResNet().train()
    model.conv1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    images = torch.randn(3, 2, 16, 16)
    found = cl.randomisation_test(model, images, [0, 1, 2], ["gradient", "deconvnet"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert modes == [m.training for m in model.modules()]
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert found.steps == randomisable_layers(model) and found.steps[0] == "head"
    assert found.similarity["gradient"]["ssim"].shape == (len(found.steps), 3)
    assert found.maps["deconvnet"].shape == (len(found.steps) + 1, 3, 2, 16, 16)


def edges(model, images, target):
    """A 'method' that never looks at the model."""
    return edge_map(images)


def test_an_edge_detector_fails_and_the_gradient_of_a_trained_model_passes(trained_default):
    loaded, _ = trained_default
    data = cl.data.FashionMNIST("test", transform=loaded.transform)
    images = torch.stack([data[i][0] for i in range(16)])
    labels = [data[i][1] for i in range(16)]
    found = cl.randomisation_test(loaded.model, images, labels, ["gradient", edges])
    assert found.passed == {"gradient": True, "edges": False}
    assert found.score["edges"] == pytest.approx(1.0)
    again = cl.randomisation_test(loaded.model, images, labels, ["gradient", edges])
    assert found.score == again.score
    independent = cl.randomisation_test(loaded.model, images, labels, [edges], order="independent")
    assert not independent.passed["edges"]


def test_blocks_group_a_resnet_by_stage_and_end_where_layer_by_layer_ends():
    import torchvision

    from convlens.trust import layer_blocks

    resnet = torchvision.models.resnet18()
    blocks = layer_blocks(resnet, ["maxpool", "layer1", "layer2", "layer3", "layer4"])
    assert list(blocks) == ["fc", "layer4", "layer3", "layer2", "layer1", "maxpool"]
    assert blocks["maxpool"] == ["bn1", "conv1"] and blocks["fc"] == ["fc"]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        assert all(name.startswith(f"{stage}.") for name in blocks[stage])
    every = sorted(name for block in blocks.values() for name in block)
    assert every == sorted(randomisable_layers(resnet))
    alexnet = layer_blocks(torchvision.models.alexnet(), ["features.1", "features.11"])
    assert alexnet == {
        "classifier": ["classifier.6", "classifier.4", "classifier.1"],
        "features.11": ["features.10", "features.8", "features.6", "features.3"],
        "features.1": ["features.0"],
    }
    torch.manual_seed(0)
    model, images = TinyResNet().eval(), torch.randn(4, 2, 16, 16)
    grouped = layer_blocks(model, ["pool", "conv2"])
    assert grouped == {"head": ["head", "conv3", "down"], "conv2": ["conv2", "conv1"]} | {
        "pool": ["stem"]
    }
    one_by_one = cl.randomisation_test(model, images, [0, 1, 2, 0], ["gradient"])
    by_block = cl.randomisation_test(model, images, [0, 1, 2, 0], ["gradient"], blocks=grouped)
    assert by_block.steps == ["head", "conv2", "pool"]
    for metric in ("spearman_abs", "ssim"):  # the same fully random model at the end
        last = by_block.similarity["gradient"][metric][-1]
        assert last == pytest.approx(one_by_one.similarity["gradient"][metric][-1])
    assert by_block.similarity["gradient"]["spearman"][0] == pytest.approx(
        one_by_one.similarity["gradient"]["spearman"][2]  # head, conv3 and down, both ways
    )
    with pytest.raises(cl.ConvlensError, match="conv3"):
        cl.randomisation_test(model, images, 0, ["gradient"], blocks={"top": ["conv33"]})
    for bad, message in (
        (["conv3"], "must map each step's name"),
        ({"top": "conv3"}, "non-empty list of layer names"),
        ({"a": ["conv3"], "b": ["conv3", "head"]}, "in two blocks"),
    ):
        with pytest.raises(ValueError, match=message):
            cl.randomisation_test(model, images, 0, ["gradient"], blocks=bad)
    with pytest.raises(ValueError, match="list of layer names"):
        layer_blocks(model, "pool")


def test_similarity_of_a_map_with_itself_is_one_and_references_have_their_shapes():
    torch.manual_seed(2)
    maps = torch.randn(4, 3, 24, 24)
    found = similarity(maps, maps)
    for metric, values in found.items():
        assert values == pytest.approx(1.0), metric
    refs = reference_maps(torch.randn(4, 3, 24, 20))
    assert {name: tuple(m.shape) for name, m in refs.items()} == {
        name: (4, 24, 20) for name in ("random", "edges", "centre")
    }
    centre = refs["centre"][0]
    assert float(centre[11:13, 9:11].min()) == pytest.approx(float(centre.max()), rel=0.05)


def test_similarity_equals_scipy_spearman_and_numpy_correlation_with_ties():
    from scipy.stats import rankdata, spearmanr
    from skimage.feature import hog

    from convlens.trust.similarity import average_ranks

    rows = torch.randn(6, 40).round(decimals=0).double().numpy()  # many ties
    rows[2] = 0.0
    assert average_ranks(rows) == pytest.approx(rankdata(rows, axis=1))
    torch.manual_seed(3)
    first = torch.randn(3, 2, 16, 16).clamp_min(0)  # ties at 0, as rectified maps have
    second = first + 0.5 * torch.randn(3, 2, 16, 16)
    found = similarity(first, second)
    for i in range(3):
        a, b = first[i].sum(0).flatten().numpy(), second[i].sum(0).flatten().numpy()
        assert found["spearman"][i] == pytest.approx(spearmanr(a, b).statistic)
        a, b = first[i].abs().sum(0).numpy(), second[i].abs().sum(0).numpy()
        assert found["spearman_abs"][i] == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic)
        unit = [(m - m.min()) / (m.max() - m.min()) for m in (a, b)]
        hogs = [hog(m, 9, pixels_per_cell=(2, 2), cells_per_block=(2, 2)) for m in unit]
        assert found["hog"][i] == pytest.approx(np.corrcoef(*hogs)[0, 1])


def test_bad_inputs_are_clear_errors():
    model = Linear2(torch.ones(1, 1, 4, 4))
    images = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match="does not match images"):
        cl.deletion(model, images, 0, torch.rand(2, 5, 5))
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        cl.insertion(model, images, 0, torch.rand(2, 4, 4), steps=0)
    with pytest.raises(ValueError, match="order must be one of cascade, independent"):
        cl.randomisation_test(model, images, 0, ["gradient"], order="backwards")


def test_data_randomisation_compares_the_two_models_maps():
    torch.manual_seed(0)
    model, other = TinyResNet().eval(), TinyResNet().eval()
    images = torch.randn(4, 2, 16, 16)
    same = cl.data_randomisation_test(model, model, images, [0, 1, 2, 0], ["gradient", edges])
    assert same.score["gradient"] == pytest.approx(1.0) and not same.passed["gradient"]
    found = cl.data_randomisation_test(model, other, images, [0, 1, 2, 0], ["gradient", edges])
    assert found.passed == {"gradient": True, "edges": False}
    assert found.maps["gradient"].shape == (2, 4, 2, 16, 16)


@pytest.mark.skipif(not cl.data.fashion_mnist.DEBIAN_DIR.exists(), reason="needs Fashion-MNIST")
def test_shuffled_labels_are_a_seeded_permutation_of_the_labels():
    from convlens.models.zoo import BUILTIN_MODELS
    from convlens.training import TrainConfig, _tensors

    spec = BUILTIN_MODELS["zfnet-fashion"]
    plain, _ = _tensors(TrainConfig(train_subset=500), spec)
    shuffled, _ = _tensors(TrainConfig(train_subset=500, shuffle_labels=True), spec)
    again, _ = _tensors(TrainConfig(train_subset=500, shuffle_labels=True), spec)
    labels, permuted = plain.tensors[1], shuffled.tensors[1]
    assert torch.equal(permuted, again.tensors[1]) and torch.equal(
        plain.tensors[0], shuffled.tensors[0]
    )
    assert torch.equal(labels.sort().values, permuted.sort().values)
    assert (labels == permuted).float().mean() < 0.2


def test_a_shuffled_model_with_constant_maps_is_flagged():
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return self.bias.expand(len(x), 3) + 0 * x.flatten(1)[:, :3]

    torch.manual_seed(0)
    images = torch.randn(4, 2, 16, 16)
    with pytest.warns(UserWarning, match="has not fitted its labels"):
        cl.data_randomisation_test(TinyResNet().eval(), Constant(), images, 0, ["gradient"])


def test_one_image_and_two_callables_of_one_name_are_refused():
    model = TinyResNet().eval()
    with pytest.raises(ValueError, match="needs at least 2 images"):
        cl.randomisation_test(model, torch.randn(1, 2, 16, 16), 0, ["gradient"])
    with pytest.raises(ValueError, match="two methods are called 'edges'"):
        cl.randomisation_test(model, torch.randn(2, 2, 16, 16), 0, [edges, edges])
