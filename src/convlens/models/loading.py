"""`load_model`: built-in names, `torchvision:<name>` specs and checkpoint files, loaded safely."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from convlens._errors import ConvlensError, unknown_name_error
from convlens._io import read_checkpoint, read_checkpoint_meta
from convlens._paths import default_model_dir
from convlens.models.card import ModelCard, file_card
from convlens.models.preprocess import Preprocess
from convlens.models.zoo import BUILTIN_MODELS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


@dataclass
class LoadedModel:
    """A model ready for convlens: in eval mode, with its preprocessing and class names.

    Attributes:
        model: the `nn.Module`, in eval mode.
        transform: `Preprocess` turning a PIL image or uint8 tensor into the model's input.
        classes: one name per output.
        input_size: (C, H, W) the model expects.
        spec: the spec it was loaded from; weights: the weights file or name, if any.
    """

    model: nn.Module
    transform: Preprocess
    classes: tuple[str, ...]
    input_size: tuple[int, int, int]
    spec: str
    weights: str | None = None

    def __post_init__(self) -> None:
        file_card(self.model, self.card)  # results made by `self.model` know where it came from

    @property
    def card(self) -> ModelCard:
        """What pictures of this model's results show: its spec, transform and class names."""
        return ModelCard(self.spec, self.transform, tuple(self.classes))


def load_model(
    spec: str | Path, weights: str | Path | None = None, *, trust_pickle: bool = False
) -> LoadedModel:
    """Load a model from a spec.

    Example:
        >>> loaded = load_model("zfnet-fashion")  # doctest: +SKIP
        >>> loaded.input_size
        (1, 28, 28)

    Args:
        spec: a built-in name (`zfnet-fashion`), `torchvision:<name>`, or a checkpoint file
            (`.safetensors` written by convlens, or a pickled module with `trust_pickle`).
        weights: a weights file (state dict as `.safetensors` or `.pt`), or `DEFAULT` for
            torchvision's own pretrained weights (downloaded by torchvision). For a built-in
            name, None means the trained default in the user cache (`cl.load_model`, from
            `convlens.training`, trains it once when it is missing; this one refuses).
        trust_pickle: allow unpickling a full module. Unpickling runs arbitrary code; pass it
            only for files you trust.
    """
    spec = str(spec)
    if spec in BUILTIN_MODELS:
        loaded = _builtin(spec, weights)
    elif spec.startswith("torchvision:"):
        loaded = _torchvision(spec.removeprefix("torchvision:"), weights)
    elif Path(spec).suffix in CHECKPOINT_SUFFIXES or Path(spec).is_file():
        loaded = _checkpoint(Path(spec), trust_pickle)
    else:
        raise unknown_name_error(
            "model spec", spec, [*BUILTIN_MODELS, "torchvision:<name>", "<file>.safetensors"]
        )
    loaded.model.eval()
    return loaded


def _builtin(name: str, weights: str | Path | None) -> LoadedModel:
    entry = BUILTIN_MODELS[name]
    model = entry.build()
    if weights is None:
        weights = default_model_dir(name) / "final.safetensors"
        if not weights.exists():
            raise ConvlensError(
                f"no trained {name} in {weights.parent}; train it with `convlens train --model "
                f"{name}` (cl.load_model trains it once when missing), or pass a weights file"
            )
    load_weights(model, weights)
    # Channels-last weights. The methods pass channels-last inputs, but a one-channel input is
    # the same in both layouts, so without this every map of the built-in stays NCHW, where
    # the CPU's max-pooling is 10x slower: forwards 1.6x, forward+backward 1.2x and the warm
    # demo 74 -> 60 s faster, outputs equal to 2.4e-6.
    model.to(memory_format=torch.channels_last)
    transform = Preprocess(entry.input_size[0], entry.input_size[1:], entry.mean, entry.std)
    return LoadedModel(model, transform, entry.classes, entry.input_size, name, str(weights))


def _torchvision(name: str, weights: str | Path | None) -> LoadedModel:
    import torchvision.models as tvm

    available = tvm.list_models(module=tvm)
    if name not in available:
        raise unknown_name_error("torchvision model", name, available)
    weight_enum = tvm.get_model_weights(name).DEFAULT
    model = tvm.get_model(name, weights=None)
    if weights is not None and str(weights).upper() == "DEFAULT":
        try:
            model.load_state_dict(weight_enum.get_state_dict(progress=True))
        except (OSError, RuntimeError) as error:  # URLError is an OSError
            raise ConvlensError(
                f"could not download torchvision's weights for {name} ({error}); download "
                f"{weight_enum.url} elsewhere and pass it with --weights FILE"
            ) from None
    elif weights is not None:
        load_weights(model, weights)
    preset = weight_enum.transforms()
    size = int(preset.crop_size[0])
    transform = Preprocess(
        3, (size, size), tuple(preset.mean), tuple(preset.std), resize=int(preset.resize_size[0])
    )
    classes = tuple(weight_enum.meta["categories"])
    return LoadedModel(
        model, transform, classes, (3, size, size), f"torchvision:{name}", _str(weights)
    )


def _checkpoint(path: Path, trust_pickle: bool) -> LoadedModel:
    if path.suffix == ".safetensors":
        meta = read_checkpoint_meta(path)
        name = meta.get("config", {}).get("model")
        if name in BUILTIN_MODELS:
            return _builtin(name, path)
        raise ConvlensError(
            f"{path} holds weights but not which architecture they belong to; pass the "
            "architecture as the spec and the file as weights (e.g. --model torchvision:alexnet "
            f"--weights {path})"
        )
    if not trust_pickle:
        state = read_state_dict(path)  # raises the clear refusal if it is a pickled module
        raise ConvlensError(
            f"{path} is a state dict ({len(state)} tensors) without its architecture; pass the "
            f"architecture as the spec and the file as weights (--weights {path})"
        )
    module = _unpickle(path)
    if not isinstance(module, nn.Module):
        raise ConvlensError(f"{path} does not hold an nn.Module (found {type(module).__name__})")
    channels = next((m.in_channels for m in module.modules() if hasattr(m, "in_channels")), 3)
    mean, std = (
        (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,) * channels, (0.5,) * channels)
    )
    outputs = _output_count(module, (channels, 224, 224))
    transform = Preprocess(channels, (224, 224), mean, std, resize=256)
    classes = tuple(f"class {i}" for i in range(outputs))
    return LoadedModel(module, transform, classes, (channels, 224, 224), str(path), str(path))


def _unpickle(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise ConvlensError(f"cannot read checkpoint {path}: {error}") from None


def _output_count(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, *input_size)).shape[-1])


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a `.safetensors` file or a `.pt` state dict, never unpickling code.

    A `.pt` file is read with `torch.load(weights_only=True)`; a file that needs full
    unpickling (a pickled module) is refused with a message naming the trust flag.
    """
    path = Path(path)
    if not path.is_file():
        raise ConvlensError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return read_checkpoint(path)[0]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConvlensError(
            f"{path} is not a plain state dict: loading it would unpickle arbitrary objects "
            "(it may hold a whole pickled module), which can run code. Save a state dict "
            "(torch.save(model.state_dict(), ...)) or, only if you trust the file, pass "
            "trust_pickle=True (--trust-pickle)"
        ) from None
    except (OSError, RuntimeError, EOFError) as error:
        raise ConvlensError(f"cannot read checkpoint {path}: {error}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConvlensError(f"{path} does not hold a state dict of tensors")
    return state


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a weights file into `model`, or raise a ConvlensError listing missing, unexpected
    and wrongly shaped keys."""
    state = read_state_dict(weights)
    if all(key.startswith("module.") for key in state):  # saved from DataParallel/DDP
        state = {key.removeprefix("module."): value for key, value in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{label}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape", mismatched),
            )
            if keys
        ]
        raise ConvlensError(f"{weights} does not fit the architecture; " + "; ".join(parts))
    model.load_state_dict(state)
