"""load_model: built-in names, torchvision specs, safe checkpoint loading."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import convlens as cl
from convlens._paths import default_model_dir
from convlens.models.zoo import BUILTIN_MODELS
from convlens.report import write_checkpoint


def cache_random_default(name: str = "zfnet-fashion") -> torch.nn.Module:
    """Put randomly initialised weights where load_model looks for the trained default, as
    if trained with today's recipe (so that it is used, not retrained)."""
    from convlens.training import TrainConfig, trained_recipe

    torch.manual_seed(0)
    model = BUILTIN_MODELS[name].build()
    write_checkpoint(
        default_model_dir(name) / "final.safetensors",
        model.state_dict(),
        {"config": trained_recipe(TrainConfig(model=name))},
    )
    return model


def test_builtin_loads_cached_weights_in_eval_mode(cache):
    model = cache_random_default()
    loaded = cl.load_model("zfnet-fashion")
    assert (
        not loaded.model.training and loaded.input_size == (1, 28, 28) and len(loaded.classes) == 10
    )
    for (name, a), b in zip(model.state_dict().items(), loaded.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    again = cl.load_model(default_model_dir("zfnet-fashion") / "final.safetensors")
    assert again.spec == "zfnet-fashion"


def test_torchvision_weights_from_a_state_dict_file(tmp_path):
    torch.manual_seed(1)
    model = torchvision.models.resnet18()
    torch.save(model.state_dict(), tmp_path / "r18.pt")
    loaded = cl.load_model("torchvision:resnet18", tmp_path / "r18.pt")
    torch.testing.assert_close(loaded.model.fc.weight, model.fc.weight)
    assert loaded.input_size == (3, 224, 224) and loaded.classes[0] == "tench"


def test_torchvision_default_offline_suggests_a_weights_file(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(cl.ConvlensError, match="--weights FILE"):
        cl.load_model("torchvision:alexnet", "DEFAULT")


def test_pickled_module_is_refused_unless_trusted(tmp_path):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 5),
    )
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(cl.ConvlensError, match="trust_pickle"):
        cl.load_model(tmp_path / "whole.pt")
    with pytest.raises(cl.ConvlensError, match="trust_pickle"):
        cl.load_model("torchvision:alexnet", tmp_path / "whole.pt")
    trusted = cl.load_model(tmp_path / "whole.pt", trust_pickle=True)
    assert len(trusted.classes) == 5 and trusted.input_size == (3, 224, 224)


def test_state_dict_that_does_not_fit_lists_missing_and_unexpected_keys(tmp_path):
    state = torchvision.models.alexnet().state_dict()
    state.pop("classifier.6.bias")
    state["extra.weight"] = torch.zeros(1)
    state["features.0.weight"] = torch.zeros(1, 3, 11, 11)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(cl.ConvlensError) as error:
        cl.load_model("torchvision:alexnet", tmp_path / "bad.safetensors")
    message = str(error.value)
    assert "missing: classifier.6.bias" in message and "unexpected: extra.weight" in message
    assert "features.0.weight (1, 3, 11, 11) vs (64, 3, 11, 11)" in message


def test_unknown_spec_lists_close_matches():
    with pytest.raises(cl.ConvlensError, match="'zfnet-fashion'"):
        cl.load_model("zfnet-fashon")


def test_a_built_in_name_registered_twice_is_refused():
    from convlens.models.zoo import register_model

    with pytest.raises(ValueError, match="already registered"):
        register_model(name="zfnet-fashion", description="again")(lambda: torch.nn.Identity())
    assert BUILTIN_MODELS["zfnet-fashion"].description.startswith("ZFNet-style")


def test_models_loading_refuses_a_missing_built_in_and_cl_load_model_trains_it(cache, monkeypatch):
    import convlens.training as training
    from convlens.models.loading import load_model

    with pytest.raises(cl.ConvlensError, match="convlens train --model zfnet-fashion"):
        load_model("zfnet-fashion")
    trained = []

    def fake_train(config, out):
        trained.append(config.model)
        cache_random_default(config.model)

    monkeypatch.setattr(training, "train", fake_train)
    with pytest.warns(UserWarning, match="training it now"):
        loaded = cl.load_model("zfnet-fashion")
    assert trained == ["zfnet-fashion"] and not loaded.model.training
    cl.load_model("zfnet-fashion")  # the second call finds it in the cache
    assert trained == ["zfnet-fashion"]
