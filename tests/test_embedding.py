"""Embeddings: codes, grid layout against brute force, neighbours against brute force, and a
t-SNE of the trained network's codes that keeps the classes apart."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from convlens import embedding


def test_codes_are_the_input_of_the_last_linear_layer_and_can_stream_to_disk(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 2)
    )
    images = torch.randn(10, 1, 4, 4)
    expected = model[:5](images)
    torch.testing.assert_close(
        embedding.codes(model, TensorDataset(images), batch_size=3), expected
    )
    streamed = embedding.codes(model, TensorDataset(images), batch_size=4, out=tmp_path / "c.npy")
    torch.testing.assert_close(streamed, expected)
    assert np.load(tmp_path / "c.npy").shape == (10, 6)
    torch.testing.assert_close(
        embedding.codes(model, TensorDataset(images), "3"), model[:3](images)
    )


@pytest.mark.parametrize(("rows", "cols", "count"), [(2, 3, 6), (2, 2, 3), (2, 2, 6)])
def test_grid_layout_is_a_bijection_with_the_least_total_squared_distance(rows, cols, count):
    rng = np.random.default_rng(rows * 10 + count)
    xy = rng.normal(size=(count, 2))
    layout = embedding.grid_layout(xy, rows, cols)
    placed = layout[layout >= 0]
    assert len(set(placed.tolist())) == len(placed) == min(count, rows * cols)
    low, high = xy.min(0), xy.max(0)
    unit = (xy - low) / (high - low)
    centres = [((c + 0.5) / cols, (r + 0.5) / rows) for r in range(rows) for c in range(cols)]

    def cost(cells_of_points: dict[int, int]) -> float:
        return sum(float(((unit[p] - centres[c]) ** 2).sum()) for p, c in cells_of_points.items())

    ours = cost({int(p): cell for cell, p in enumerate(layout.flatten()) if p >= 0})
    placed_count = min(count, rows * cols)
    best = (
        min(  # every way of giving `placed_count` distinct points distinct cells
            cost(dict(zip(points, cells)))
            for points in itertools.permutations(range(count), placed_count)
            for cells in [tuple(range(rows * cols))[:placed_count]]
        )
        if count >= rows * cols
        else min(
            cost(dict(zip(range(count), cells)))
            for cells in itertools.permutations(range(rows * cols), count)
        )
    )
    assert ours == pytest.approx(best)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_nearest_neighbours_equal_brute_force(metric):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    queries, gallery = torch.randn(4, 2, 2, 2), torch.randn(30, 2, 2, 2)
    found = embedding.nearest_neighbours(
        model, TensorDataset(queries), TensorDataset(gallery), k=4, metric=metric
    )

    def brute(q: torch.Tensor, g: torch.Tensor) -> list[list[int]]:
        rows = []
        for a in q:
            if metric == "cosine":
                d = [1 - float(torch.dot(a, b) / (a.norm() * b.norm())) for b in g]
            else:
                d = [float((a - b).norm()) for b in g]
            rows.append(sorted(range(len(g)), key=d.__getitem__)[:4])
        return rows

    with torch.no_grad():
        codes_q, codes_g = model[:3](queries), model[:3](gallery)
    assert found.feature_indices.tolist() == brute(codes_q, codes_g)
    assert found.pixel_indices.tolist() == brute(queries.flatten(1), gallery.flatten(1))


@pytest.mark.slow
def test_tsne_of_trained_codes_keeps_the_classes_apart(trained_default):
    from convlens.data import FashionMNIST

    loaded, _ = trained_default
    data = Subset(FashionMNIST("test", transform=loaded.transform), range(2000))
    labels = np.array([data[i][1] for i in range(len(data))])
    x = embedding.codes(loaded.model, data)
    xy = embedding.tsne(x)
    in_codes, in_plane = embedding.knn_accuracy(x, labels), embedding.knn_accuracy(xy, labels)
    assert in_codes > 0.85
    assert abs(in_codes - in_plane) <= 0.05, (in_codes, in_plane)
