"""Feature scale clipping and reproducible, resumable training of the built-in network."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from convlens.analysis.filters import filter_rms
from convlens.data.fashion_mnist import DEBIAN_DIR
from convlens.training import TrainConfig, clip_feature_scale, train


def test_clipping_rescales_only_filters_above_the_radius():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3)
    with torch.no_grad():
        conv.weight[:3] *= 10  # these exceed the radius
        conv.weight[3:] *= 0.1  # these do not
    before = conv.weight.detach().clone()
    clip_feature_scale(nn.Sequential(conv), radius=0.1)
    rms = filter_rms(conv.weight)
    torch.testing.assert_close(rms[:3], torch.full((3,), 0.1))
    torch.testing.assert_close(conv.weight[3:], before[3:], rtol=0, atol=0)
    # direction kept: the clipped filter is a positive multiple of the original
    ratio = conv.weight[0] / before[0]
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio.flatten()[0].detach())))


needs_data = pytest.mark.skipif(
    not DEBIAN_DIR.exists(), reason="needs Debian's dataset-fashion-mnist"
)


@needs_data
def test_training_step_keeps_every_filter_within_the_radius_and_resumes_exactly(tmp_path):
    config = TrainConfig(epochs=2, train_subset=512, batch_size=64, checkpoint_epochs=(1,))
    whole = train(config, tmp_path / "whole", progress=False)
    for module in whole.model.modules():
        if isinstance(module, nn.Conv2d):
            assert float(filter_rms(module.weight).max()) <= 0.1 + 1e-6
    # interrupted after epoch 1 (simulated by a run that stops there), then resumed
    first = train(
        TrainConfig(**{**config.__dict__, "epochs": 1}), tmp_path / "split", progress=False
    )
    assert len(first.accuracy) == 1
    state = tmp_path / "split" / "resume.json"
    assert not state.exists()  # a finished 1-epoch run leaves no resume state
    meta = json.loads((tmp_path / "whole" / "epoch-001.json").read_text())
    assert meta["epoch"] == 1 and meta["config"]["clip_radius"] == 0.1
    assert sorted(p.name for p in (tmp_path / "whole").glob("*.safetensors")) == [
        "epoch-001.safetensors",
        "epoch-002.safetensors",
        "final.safetensors",
    ]


@needs_data
def test_a_run_interrupted_after_one_epoch_resumes_to_the_same_weights(tmp_path, monkeypatch):
    config = TrainConfig(epochs=2, train_subset=256, batch_size=64, checkpoint_epochs=())
    whole = train(config, tmp_path / "whole", progress=False)

    def interrupt(epoch, accuracy):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "broken", progress=False, on_epoch=interrupt)
    assert (tmp_path / "broken" / "resume.safetensors").exists()
    resumed = train(config, tmp_path / "broken", progress=False)
    assert resumed.accuracy == whole.accuracy
    a = load_file(str(tmp_path / "whole" / "final.safetensors"))
    b = load_file(str(tmp_path / "broken" / "final.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_clipping_a_conv_trained_with_batch_norm_clips_the_filter_that_is_saved():
    from convlens.models.fusion import folded_state, with_batch_norm

    net = with_batch_norm(nn.Sequential(nn.Conv2d(1, 3, 3)))
    with torch.no_grad():
        net[0][0].weight.copy_(
            torch.ones(3, 1, 3, 3) * torch.tensor([0.05, 0.2, 1.0])[:, None, None, None]
        )
        net[0][1].running_var.fill_(4.0 - net[0][1].eps)  # gain |gamma| / 2
        net[0][1].weight.copy_(torch.tensor([1.0, 2.0, -4.0]))
    clip_feature_scale(net, 0.1)
    folded = folded_state(net.eval())["0.weight"]
    torch.testing.assert_close(filter_rms(folded), torch.tensor([0.025, 0.1, 0.1]))
    torch.testing.assert_close(net[0][0].weight[2], torch.ones(1, 3, 3))  # the conv itself kept


def test_augmentation_flips_and_shifts_by_at_most_two_pixels():
    from convlens.training import _augmented

    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 3, 3] = 1.0
    seen = set()
    generator = torch.Generator().manual_seed(0)
    for _ in range(1000):
        moved = _augmented(image, generator, fill=-1.0)
        assert moved.shape == image.shape and moved.max() == 1.0
        seen.add(divmod(int(moved[0, 0].argmax()), 8))
    # shifted by -2..2 from (3, 3), or from (3, 4) when flipped (column 7 - 3)
    assert seen == {(y, x) for y in range(1, 6) for x in range(1, 7)}


def test_a_cached_model_of_another_recipe_is_moved_aside_and_retrained(cache, monkeypatch):
    from convlens import training
    from convlens._paths import default_model_dir

    folder = default_model_dir("zfnet-fashion")
    folder.mkdir(parents=True)
    (folder / "final.safetensors").write_bytes(b"old")
    (folder / "final.json").write_text(json.dumps({"config": {"epochs": 1}}))
    trained = []

    def fake_train(config, out, **_):
        trained.append(config)
        out.mkdir(parents=True, exist_ok=True)
        (out / "final.safetensors").write_bytes(b"new")
        (out / "final.json").write_text(json.dumps({"config": training.trained_recipe(config)}))

    monkeypatch.setattr(training, "train", fake_train)
    with pytest.warns(UserWarning, match="another recipe"):
        path = training.ensure_trained("zfnet-fashion")
    assert path.read_bytes() == b"new" and trained == [TrainConfig()]
    assert (folder.parent / "zfnet-fashion-old-1" / "final.safetensors").read_bytes() == b"old"
    assert training.ensure_trained("zfnet-fashion") == path and len(trained) == 1  # reused now
