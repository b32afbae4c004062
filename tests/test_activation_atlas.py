"""Activation atlas: the reservoir is uniform and bounded, duplicates share a cell, cells are the
brute-force averages, the class filter keeps its class, bad requests are refused up front."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import convlens as cl
from convlens.analysis import activation_atlas as aa
from convlens.analysis import activation_samples as sampling
from convlens.models.layers import default_layers


class Generated(Dataset):
    """`count` random 4x4 one-channel images made on demand (nothing stored), label i % 3."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(index)
        return torch.randn(1, 4, 4, generator=generator), index % 3


def one_position_net() -> nn.Sequential:
    """Conv 4x4 → ReLU: a 1x1 map of 8 channels on 4x4 images (one position per image), then
    three class scores."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 4), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).eval()


def test_the_reservoir_keeps_each_row_with_equal_chance_whatever_the_batches():
    kept = np.zeros(100)
    for seed in range(1500):
        reservoir = sampling.Reservoir(10, seed)
        rows = torch.arange(100.0)[:, None]
        for start in range(0, 100, 13):
            reservoir.add(
                rows[start : start + 13],
                torch.zeros(13, dtype=torch.long)[: len(rows[start : start + 13])],
            )
        assert reservoir.vectors.shape == (10, 1)
        kept[reservoir.vectors[:, 0].long().numpy()] += 1
    assert np.abs(kept / 1500 - 0.1).max() < 0.035  # each of 100 rows kept with p = 10/100
    one, whole = sampling.Reservoir(10, 7), sampling.Reservoir(10, 7)
    for row in range(100):
        one.add(torch.tensor([[float(row)]]), torch.tensor([row]))
    whole.add(torch.arange(100.0)[:, None], torch.arange(100))
    assert torch.equal(one.vectors, whole.vectors) and torch.equal(one.classes, whole.classes)


def test_memory_is_bounded_by_the_samples_not_the_dataset(monkeypatch):
    held = []
    original = sampling.Reservoir._put

    def spy(self, slots, vectors, classes):
        original(self, slots, vectors, classes)
        held.append(len(self.vectors))

    monkeypatch.setattr(sampling.Reservoir, "_put", spy)
    loader = DataLoader(Generated(20_000), batch_size=500)  # streamed whole
    vectors, classes = sampling.sample_activations(one_position_net(), loader, ["1"], 64)["1"]
    assert vectors.shape == (64, 8) and max(held) == 64 and len(held) > 1
    assert set(classes.tolist()) <= {0, 1, 2}


def test_a_long_dataset_is_read_only_at_the_drawn_images(monkeypatch):
    read = []
    monkeypatch.setattr(
        Generated, "__getitem__", lambda self, i: read.append(i) or (torch.ones(1, 4, 4) * i, 0)
    )
    vectors, _ = sampling.sample_activations(one_position_net(), Generated(20_000), ["1"], 64)["1"]
    assert read[0] == 0 and len(read) == 65  # the first image checks the layer, then 64 drawn
    assert len(set(read[1:])) == 64 and len(vectors) <= 64
    assert max(read) > 10_000  # drawn over the whole dataset, not from its start


def test_exact_duplicates_share_a_place_and_a_cell():
    images = torch.randn(40, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    images = torch.cat([images, images[:10], images[:10]])  # images 0-9 three times each
    found = cl.activation_atlas(
        one_position_net(), TensorDataset(images), "1", grid=6, samples=1000, icon_steps=2
    )
    first, again, third = found.xy[:10], found.xy[40:50], found.xy[50:60]
    assert np.array_equal(first, again) and np.array_equal(first, third)
    cell = np.minimum((found.xy[:, ::-1] * 6).astype(int), 5)
    assert np.array_equal(cell[:10], cell[40:50])
    assert found.icons.shape == (len(found.cells), 1, 4, 4)


def test_cells_are_the_brute_force_means_counts_and_majority_classes():
    rng = np.random.default_rng(0)
    xy = rng.random((200, 2))
    vectors = torch.from_numpy(rng.random((200, 5))).float()
    classes = rng.integers(0, 4, 200)
    cells, means, counts, dominant, share = aa._cells(xy, 4, vectors, classes)
    for (row, col), mean, count, top, fraction in zip(cells, means, counts, dominant, share):
        inside = [
            i
            for i in range(200)
            if min(int(xy[i, 1] * 4), 3) == row and min(int(xy[i, 0] * 4), 3) == col
        ]
        assert count == len(inside)
        assert torch.allclose(mean, vectors[inside].mean(dim=0), atol=1e-6)
        tally = np.bincount(classes[inside], minlength=4)
        assert top == tally.argmax() and fraction == pytest.approx(tally.max() / len(inside))
    assert counts.sum() == 200


def test_a_class_atlas_keeps_the_layout_and_only_that_class():
    found = cl.activation_atlas(
        one_position_net(), Generated(300), "1", grid=5, samples=300, icons=False
    )
    label = int(np.bincount(found.classes).argmax())
    kept = cl.class_atlas(found, one_position_net(), label, icons=False)
    mine = found.classes == label
    assert np.array_equal(kept.xy, found.xy[mine]) and set(kept.dominant.tolist()) == {label}
    assert kept.counts.sum() == mine.sum() and kept.only == label
    with pytest.raises(cl.ConvlensError, match="classes present"):
        cl.class_atlas(found, one_position_net(), 7)


def test_the_same_seed_gives_the_same_atlas_whatever_the_batch_size():
    net, data = one_position_net(), Generated(500)
    a = cl.activation_atlas(net, data, "1", grid=5, samples=120, icons=False, batch_size=64)
    b = cl.activation_atlas(net, data, "1", grid=5, samples=120, icons=False, batch_size=500)
    assert torch.equal(a.vectors, b.vectors) and np.array_equal(a.xy, b.xy)


def test_bad_requests_are_refused_before_the_data_is_read():
    net = one_position_net()
    with pytest.raises(ValueError, match="grid must be an integer >= 1"):
        cl.activation_atlas(net, Generated(10), "1", grid=0)
    with pytest.raises(ValueError, match="samples must be"):
        cl.activation_atlas(net, Generated(10), "1", samples=1)
    with pytest.raises(cl.ConvlensError, match="not a spatial map"):
        cl.activation_atlas(net, Generated(10), "3")
    with pytest.raises(cl.ConvlensError, match=r"unknown layer 'l'; known"):
        cl.activation_atlas(net, Generated(10), "l")


def test_a_resnet_gets_an_atlas_of_every_stage_and_neuron_groups_with_icons():
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=4).eval()
    images = torch.rand(24, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    layers = default_layers(resnet)
    assert layers == ["maxpool", "layer1", "layer2", "layer3", "layer4"]
    found = cl.activation_atlases(
        resnet, TensorDataset(images), layers, grid=3, samples=24, icon_steps=2
    )
    for layer, atlas in found.items():
        assert atlas.counts.sum() == 24 and atlas.icons.shape[:2] == (len(atlas.cells), 3)
        side = cl.synthesis.unit_canvas(resnet, layer, (3, 64, 64)).side
        assert atlas.icons.shape[-1] == side and float(atlas.icons.std()) > 0
    groups = cl.neuron_groups(resnet, images[0], "layer3", 3, icons=True, icon_steps=2)
    assert bool((groups.maps >= 0).all()) and bool((groups.directions >= 0).all())
    assert 0 <= groups.error < 1 and groups.icons.shape == (3, 3, 64, 64)


def test_a_model_without_class_scores_gets_an_atlas_that_shows_and_saves(tmp_path):
    from convlens.report.results import save_activation_atlas

    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU())  # outputs maps, no class scores
    found = cl.activation_atlas(features, Generated(60), "1", grid=4, samples=60, icon_steps=2)
    assert set(found.classes.tolist()) == {-1} and set(found.dominant.tolist()) == {-1}
    assert "image/png" in found._repr_mimebundle_()
    written = save_activation_atlas(found, tmp_path, "atlas")
    assert [p.name for p in written] == ["atlas.png"]  # no class panels without classes
    bare = cl.activation_atlas(features, Generated(60), "1", grid=4, samples=60, icons=False)
    assert "image/png" in bare._repr_mimebundle_()  # neither icons nor classes: the counts


def test_the_sampled_vectors_are_ordinary_tensors_a_user_can_change_and_differentiate():
    found = cl.activation_atlas(one_position_net(), Generated(50), "1", grid=3, icons=False)
    found.vectors.mul_(1.0)
    probe = nn.Linear(8, 1)
    probe(found.vectors).sum().backward()
    assert probe.weight.grad is not None


def test_the_class_map_gives_each_listed_class_its_own_colour_and_the_rest_grey():
    from convlens.charts import CLASS_COLOURS, class_map

    many = torch.arange(1000).view(40, 25) % 997  # a 1000-class model's cells
    drawn = class_map(many, [], 200, legend=20)[:200].reshape(-1, 3)
    colours = {tuple(c) for c in drawn.tolist()}
    assert len(colours) == 21 and (160, 160, 160) in colours  # 20 listed, the rest grey
    few = class_map(torch.tensor([[3, 12], [-1, 3]]), [], 40)  # ten-class maps keep colours
    assert tuple(few[0, 0]) == tuple(CLASS_COLOURS[3]) and tuple(few[0, 39]) == tuple(
        CLASS_COLOURS[12]
    )
    assert tuple(few[39, 0]) == (255, 255, 255)
