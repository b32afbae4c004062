"""Training dynamics and invariance: evolution = a k=1 scan per checkpoint, invariance against
a direct computation, the correspondence measure on a hand-worked case, and the first-layer
diagnosis of feature scale clipping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convlens as cl
from convlens.analysis.correspondence import box_masks, correspondence, sign_change
from convlens.analysis.evolution import checkpoint_label, evolution
from convlens.analysis.invariance import invariance, transformed
from convlens.scan import scan


def test_delta_of_a_hand_worked_example():
    eps = torch.tensor([[1.0, -2.0, 0.0, 3.0], [2.0, 1.0, 0.0, 1.0], [-1.0, -1.0, 5.0, 0.0]])
    # signs: (+,-,0,+), (+,+,0,+), (-,-,+,0); Hamming / 4: d01 = 1/4, d02 = 3/4, d12 = 4/4
    assert sign_change(eps) == pytest.approx(2 * (0.25 + 0.75 + 1.0))


class Identity(nn.Module):
    """Its layer 'code' outputs the image itself, so eps is the occluded pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.code = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.code(x)


def test_correspondence_through_an_identity_layer():
    images = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1).expand(2, 1, 4, 4).clone()
    boxes = [(0, 0, 2, 2), (0, 0, 2, 2)]
    result = correspondence(Identity(), images, boxes, "code", draws=3)
    # eps = image inside the box, 0 outside: signs differ on the 4 box pixels of 16
    assert result.delta == pytest.approx(2 * 4 / 16)
    assert result.random_mean == pytest.approx(2 * 4 / 16) and result.random_std == 0
    masks = box_masks(boxes, (4, 4))
    assert correspondence(Identity(), images, masks, "code", draws=1).delta == result.delta


def classifier() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


@pytest.mark.parametrize("transform", ["translate", "scale", "rotate"])
def test_invariance_is_zero_at_the_identity_and_matches_a_direct_computation(transform):
    model = classifier()
    images, labels = torch.randn(3, 1, 12, 12), [0, 2, 1]
    values = {"translate": [0, 2, -3], "scale": [1.0, 0.8, 1.3], "rotate": [0, 45, 90]}[transform]
    result = invariance(model, images, labels, ["1", "3"], transform, values)
    assert float(result.distance["1"][0].abs().max()) == 0.0
    assert float(result.distance["3"][0].abs().max()) == 0.0
    with torch.no_grad():
        for v, value in enumerate(values):
            moved = transformed(images, transform, value)
            for layer, end in (("1", 2), ("3", 4)):
                a, b = model[:end](images).flatten(1), model[:end](moved).flatten(1)
                torch.testing.assert_close(
                    result.distance[layer][v], (b - a).norm(dim=1) / a.norm(dim=1)
                )
            probs = model(moved).softmax(1)[torch.arange(3), torch.tensor(labels)]
            torch.testing.assert_close(result.prob[v], probs)
    if transform == "rotate":  # a clockwise quarter turn moves pixels onto pixels
        torch.testing.assert_close(
            transformed(images, "rotate", 90),
            torch.rot90(images, -1, dims=(2, 3)),
            atol=1e-5,
            rtol=0,
        )


@pytest.mark.slow
def test_evolution_equals_a_k1_scan_of_each_checkpoint(trained_default):
    from torch.utils.data import Subset

    from convlens.data import FashionMNIST
    from convlens.models.loading import load_model

    loaded, folder = trained_default
    checkpoints = sorted(folder.glob("epoch-*.safetensors"))
    assert [checkpoint_label(c) for c in checkpoints] == [
        "epoch 1",
        "epoch 2",
        "epoch 5",
        "epoch 8",
    ]
    data = Subset(FashionMNIST("test", transform=loaded.transform), range(500))
    evo = evolution(checkpoints, data, ["features.5", "features.13"], channels=[0, 3])
    for checkpoint, result in zip(checkpoints, evo.results):
        alone = scan(
            load_model("zfnet-fashion", str(checkpoint)).model,
            data,
            ["features.5", "features.13"],
            k=1,
        )
        for layer in ("features.5", "features.13"):
            assert torch.equal(result[layer].values, alone[layer].values)
            assert torch.equal(result[layer].indices, alone[layer].indices)
    values = [v for v, _, _ in evo.strongest("features.13", 3)]
    assert len(values) == 4 and values[0] != values[-1]  # the feature changed during training
    # Fig. 4's cells: the last checkpoint's projection of map 3's strongest activation, cropped
    _, index, (y, x) = evo.strongest("features.13", 3)[-1]
    model = load_model("zfnet-fashion", str(checkpoints[-1])).model
    projected = cl.deconvnet(model, data[index][0][None], cl.Unit("features.13", 3, y, x))[0]
    top, left, bottom, right = cl.receptive_field(model, "features.13", (1, 28, 28)).box(y, x)
    padded = torch.nn.functional.pad(projected, (64, 64, 64, 64))
    expected = padded[:, top + 64 : bottom + 64, left + 64 : right + 64]
    assert evo.projections["features.13"].shape[:2] == (2, 4)
    torch.testing.assert_close(evo.projections["features.13"][1, -1], expected)


@pytest.mark.slow
def test_without_feature_scale_clipping_one_first_layer_filter_dominates_more(tmp_path):
    from convlens.analysis.filters import filter_rms, largest_share
    from convlens.data.fashion_mnist import DEBIAN_DIR
    from convlens.models.loading import load_model
    from convlens.training import TrainConfig, train

    if not DEBIAN_DIR.exists():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    shares = {}
    for name, radius in (("clipped", 0.1), ("free", None)):
        config = TrainConfig(epochs=2, train_subset=20000, clip_radius=radius, checkpoint_epochs=())
        train(config, tmp_path / name, progress=False)
        model = load_model("zfnet-fashion", str(tmp_path / name / "final.safetensors")).model
        rms = filter_rms(model.features[0].weight)
        shares[name] = (largest_share(rms), float(rms.max()))
    # measured: largest share 0.049 (max RMS 0.100, the radius) with clipping, 0.062 (0.131) without
    assert shares["clipped"][1] <= 0.1 + 1e-6 < shares["free"][1]
    assert shares["free"][0] > shares["clipped"][0] * 1.1, shares


def test_evolution_refuses_a_channel_past_the_layer_width_before_scanning(tmp_path):
    from torch.utils.data import TensorDataset

    import convlens as cl
    from convlens.models.zoo import BUILTIN_MODELS
    from convlens.report import write_checkpoint

    entry = BUILTIN_MODELS["zfnet-fashion"]
    path = write_checkpoint(tmp_path / "epoch-001.safetensors", entry.build().state_dict(), {})
    data = TensorDataset(torch.randn(2, 1, 28, 28))
    with pytest.raises(
        cl.ConvlensError, match=r"channel 64 is out of range: layer 'features\.13' has 64"
    ):
        evolution([path, path], data, ["features.13"], channels=[0, 64])


def test_a_checkpoint_with_the_scanned_weights_reuses_the_scan(tmp_path, monkeypatch):
    from torch.utils.data import TensorDataset

    from convlens._io import write_checkpoint
    from convlens.analysis import evolution as module
    from convlens.models.zoo import BUILTIN_MODELS

    entry = BUILTIN_MODELS["zfnet-fashion"]
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = entry.build().eval()
        paths.append(
            write_checkpoint(tmp_path / f"epoch-{seed + 1:03d}.safetensors", model.state_dict(), {})
        )
    data = TensorDataset(torch.randn(40, 1, 28, 28))
    known = cl.scan(model, data, ["features.13"], k=9)  # model: the last checkpoint's weights
    scans = []
    monkeypatch.setattr(module, "scan", lambda *a, **k: scans.append(1) or cl.scan(*a, **k))
    reused = evolution(paths, data, ["features.13"], [0], known=(model, known))
    assert len(scans) == 1  # only the first checkpoint was scanned
    fresh = evolution(paths, data, ["features.13"], [0])
    assert len(scans) == 3
    for a, b in zip(reused.results, fresh.results):
        assert torch.equal(a["features.13"].indices, b["features.13"].indices)
        torch.testing.assert_close(a["features.13"].values, b["features.13"].values)
    assert reused.results[1].meta["k"] == 1
