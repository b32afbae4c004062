"""Streaming top-k against brute force; resumption after a kill; torchrun shards; crops."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TinyResNet, small_sequential
from scan_worker import WorkerData, worker_model
from torch.utils.data import TensorDataset

import convlens as cl
from convlens import render
from convlens.hooks import capture
from convlens.scan import ScanResult, channel_maxima, scan

HERE = Path(__file__).parent


def brute_force(model, images: torch.Tensor, layer: str, k: int):
    """All activations at once, each channel's images sorted by (score desc, index asc)."""
    with torch.no_grad(), capture(model, [layer]) as acts:
        model(images)
    maps = acts[layer]  # (N, C, h, w)
    scores, flat = maps.flatten(2).max(dim=2)
    width = maps.shape[-1]
    values, indices, positions = [], [], []
    for channel in range(maps.shape[1]):
        order = sorted(range(len(images)), key=lambda i: (-float(scores[i, channel]), i))[:k]
        values.append(scores[order, channel])
        indices.append(torch.tensor(order))
        positions.append(
            torch.stack([flat[order, channel] // width, flat[order, channel] % width], dim=1)
        )
    return torch.stack(values), torch.stack(indices), torch.stack(positions)


def tied_images(count: int = 20, channels: int = 2, size: int = 20) -> torch.Tensor:
    torch.manual_seed(3)
    base = torch.randn(count, channels, size, size)
    return torch.cat([base, base.flip(0)])  # every image twice: exact ties across batches


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("net", ["sequential", "resnet"])
def test_scan_equals_brute_force_with_ties(net, channels_last):
    model = small_sequential() if net == "sequential" else TinyResNet()
    with torch.no_grad():  # a channel that never fires: all-zero ties in every image
        (model[5] if net == "sequential" else model.conv3).bias[0] = -1e3
    images = tied_images()
    layers = ["1", "4", "6"] if net == "sequential" else ["stem", "conv2", "conv3", "down"]
    result = scan(
        model, TensorDataset(images), layers, k=7, batch_size=6, channels_last=channels_last
    )
    for layer in layers:
        values, indices, positions = brute_force(model, images, layer, 7)
        top = result[layer]
        assert torch.equal(top.indices, indices), layer
        assert torch.equal(top.positions, positions), layer
        if channels_last:
            torch.testing.assert_close(top.values, values)
        else:
            assert torch.equal(top.values, values), layer


@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_maxima_keep_the_first_maximum_in_row_major_order(channels_last):
    torch.manual_seed(0)
    maps = torch.randint(0, 4, (5, 6, 7, 9)).float()  # many tied maxima inside each map
    if channels_last:
        maps = maps.contiguous(memory_format=torch.channels_last)
    values, positions = channel_maxima(maps)
    for image in range(5):
        for channel in range(6):
            grid = maps[image, channel].tolist()
            best = max(max(row) for row in grid)
            first = next(
                (y, x) for y, row in enumerate(grid) for x, v in enumerate(row) if v == best
            )
            assert values[image, channel] == best
            assert tuple(positions[image, channel].tolist()) == first


def test_fewer_images_than_k_and_save_load_round_trip(tmp_path):
    model = small_sequential()
    result = scan(
        model, TensorDataset(torch.randn(3, 2, 20, 20)), ["6"], k=5, description={"model": "tiny"}
    )
    top = result["6"]
    assert top.indices[:, 3:].eq(-1).all() and top.indices[:, :3].ge(0).all()
    loaded = ScanResult.load(result.save(tmp_path / "r.safetensors"))
    assert (
        loaded.meta["model"] == "tiny"
        and loaded.meta["k"] == 5
        and loaded.meta["dataset_size"] == 3
    )
    assert torch.equal(loaded["6"].values, top.values) and torch.equal(
        loaded["6"].positions, top.positions
    )
    with pytest.raises(cl.ConvlensError, match="was not scanned"):
        loaded["1"]


def test_default_layers_are_the_rectified_conv_outputs():
    result = scan(small_sequential(), TensorDataset(torch.randn(2, 2, 20, 20)), k=1)
    assert list(result.layers) == ["1", "4", "6"]


def test_unknown_layer_names_close_matches():
    with pytest.raises(cl.ConvlensError, match="closest"):
        scan(TinyResNet(), TensorDataset(torch.randn(2, 2, 20, 20)), ["conv_3"])


def test_a_changed_model_is_refused_when_resuming(tmp_path):
    data = WorkerData()
    state = tmp_path / "state.safetensors"
    model = worker_model()
    partial = scan(model, data, k=5, batch_size=4, checkpoint=state, checkpoint_every=1)
    assert not state.exists()  # a finished scan removes its state
    del partial

    # leave a state behind by scanning with a dataset that fails halfway
    class Failing(WorkerData):
        def __getitem__(self, index):
            if index == 20:
                raise KeyboardInterrupt
            return super().__getitem__(index)

    with pytest.raises(KeyboardInterrupt):
        scan(model, Failing(), k=5, batch_size=4, checkpoint=state, checkpoint_every=1)
    assert state.exists()
    other = worker_model()
    with torch.no_grad():
        other[0].weight.mul_(2)
    with pytest.raises(cl.ConvlensError, match="different model_fingerprint"):
        scan(other, data, k=5, batch_size=4, checkpoint=state)
    with pytest.raises(cl.ConvlensError, match="different k"):
        scan(model, data, k=4, batch_size=4, checkpoint=state)


def reference_result() -> ScanResult:
    return scan(worker_model(), WorkerData(), k=5, batch_size=4)


def assert_same(a: ScanResult, b: ScanResult) -> None:
    assert list(a.layers) == list(b.layers)
    for layer in a.layers:
        for name in ("values", "indices", "positions"):
            assert torch.equal(getattr(a[layer], name), getattr(b[layer], name)), (layer, name)


def test_a_scan_killed_at_a_random_batch_resumes_to_the_same_result(tmp_path):
    kill_at = random.Random().randrange(8, 44)
    worker = [sys.executable, str(HERE / "scan_worker.py"), str(tmp_path)]
    killed = subprocess.run([*worker, str(kill_at)], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert (tmp_path / "state-0.safetensors").exists() and not (
        tmp_path / "result.safetensors"
    ).exists()
    subprocess.run(worker, check=True, capture_output=True)
    assert_same(ScanResult.load(tmp_path / "result.safetensors"), reference_result())


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_gloo_processes_under_torchrun_give_the_one_process_result(tmp_path):
    command = [
        "torchrun",
        "--standalone",
        "--nnodes=1",
        "--nproc-per-node=2",
        str(HERE / "scan_worker.py"),
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    merged = ScanResult.load(tmp_path / "result.safetensors")
    assert merged.meta["world_size"] == 2
    assert_same(merged, reference_result())


def test_border_crops_have_the_receptive_field_size_and_are_padded():
    model = small_sequential()
    field = cl.receptive_field(model, "6", (2, 20, 20))
    image = torch.arange(2 * 20 * 20, dtype=torch.float32).view(2, 20, 20)
    corner = render.crop_padded(image, field.box(0, 0), fill=-1.0)
    assert tuple(corner.shape[-2:]) == field.size
    top, left, _, _ = field.box(0, 0)
    assert top < 0 and bool((corner[:, :-top, :] == -1).all())  # padded above, not shifted
    assert corner[0, -top, -left] == image[0, 0, 0]


def test_several_channels_in_one_deconvnet_pass_equal_one_pass_each():
    from convlens.scan import top_examples, top_examples_of

    torch.manual_seed(0)
    model = TinyResNet().eval()
    images = torch.randn(14, 2, 16, 16)
    data = TensorDataset(images, torch.zeros(14, dtype=torch.long))
    result = scan(model, data, ["conv2"], k=5)
    field = cl.receptive_field(model, "conv2", (2, 16, 16))
    together = top_examples_of(model, data, result["conv2"], "conv2", [0, 3, 1], field)
    for channel, found in zip([0, 3, 1], together):
        alone = top_examples(model, data, result["conv2"], "conv2", channel, field)
        assert found.indices == alone.indices == result["conv2"].indices[channel].tolist()
        assert found.boxes == alone.boxes
        torch.testing.assert_close(found.images, alone.images)
        torch.testing.assert_close(found.projections, alone.projections, atol=1e-6, rtol=1e-5)
        assert found.projections.abs().sum() > 0
