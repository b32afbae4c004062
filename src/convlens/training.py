"""Training the built-in networks: SGD with Nesterov momentum and a one-cycle schedule, batch
norm during training folded into the convolutions of the saved network (which keeps Zeiler &
Fergus's conv / ReLU / pool layers), their feature scale clipping, label smoothing, epoch
checkpoints as safetensors, and resumption that gives the same weights as an unbroken run."""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from convlens._errors import ConvlensError, unknown_name_error
from convlens._io import read_checkpoint, remove_checkpoint, write_checkpoint
from convlens._paths import default_model_dir
from convlens._progress import tqdm
from convlens.analysis.evaluate import accuracy
from convlens.data.fashion_mnist import FashionMNIST
from convlens.models import loading
from convlens.models.fusion import conv_batchnorm_modules, folded_state, with_batch_norm
from convlens.models.loading import LoadedModel
from convlens.models.zoo import BUILTIN_MODELS, BuiltinModel

DEFAULT_CHECKPOINT_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; every field goes into the checkpoints' metadata."""

    model: str = "zfnet-fashion"
    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip_radius: float | None = 0.1
    seed: int = 0
    checkpoint_epochs: tuple[int, ...] = DEFAULT_CHECKPOINT_EPOCHS
    train_subset: int | None = None
    shuffle_labels: bool = False
    batch_norm: bool = True  # during training only: folded into the convs of what is saved
    dropout: float = 0.25  # the classifier's dropout while training
    label_smoothing: float = 0.1
    warmup: float = 0.15  # share of the steps with the learning rate rising linearly from 0
    augment: bool = False  # random horizontal flips and shifts of up to 2 pixels


@dataclass
class TrainResult:
    """What a run produced: the model, accuracy per epoch, and where checkpoints went."""

    model: nn.Module
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0
    checkpoints: list[Path] = field(default_factory=list)


@torch.no_grad()
def clip_feature_scale(model: nn.Module, radius: float) -> None:
    """Rescale every conv filter whose RMS exceeds `radius` to exactly that RMS (Zeiler & Fergus
    2014, Sec. 3: "renormalize each filter in the convolutional layers whose RMS value exceeds a
    fixed radius of 10^-1 to this fixed radius"). A conv trained with a batch norm after it
    (`with_batch_norm`) has its filter clipped as the saved network gets it (`folded_state`):
    its weights times the norm's gain |gamma| / sqrt(running var + eps), by scaling gamma."""
    paired = conv_batchnorm_modules(model)
    for conv, norm in paired:
        gain = norm.weight.abs() / (norm.running_var + norm.eps).sqrt()
        rms = conv.weight.pow(2).mean(dim=(1, 2, 3)).sqrt() * gain
        norm.weight.mul_(torch.where(rms > radius, radius / rms, torch.ones_like(rms)))
    inside = {id(conv) for conv, _ in paired}
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and id(module) not in inside:
            weight = module.weight
            rms = weight.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            weight.mul_(torch.where(rms > radius, radius / rms, torch.ones_like(rms)))


def _normalised(dataset: FashionMNIST, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return (dataset.images.unsqueeze(1).float() / 255 - mean[0]) / std[0]


def _lr_at(config: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """One cycle: a linear rise to `lr` over the `warmup` share of the run, then cosine
    annealing to 0."""
    progress = (epoch + step / steps) / config.epochs
    if progress < config.warmup:
        return config.lr * progress / config.warmup
    rest = (progress - config.warmup) / (1 - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * rest))


def _augmented(images: torch.Tensor, generator: torch.Generator, fill: float) -> torch.Tensor:
    """Each image flipped left-right with probability 1/2 and shifted by up to 2 pixels each
    way (padded with `fill`, the normalised black)."""
    count, side = len(images), images.shape[-1]
    flip = torch.rand(count, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    padded = F.pad(images, (2, 2, 2, 2), value=fill)
    dy, dx = (torch.randint(0, 5, (count,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(side))[:, :, None]
    cols = (dx[:, None] + torch.arange(side))[:, None, :]
    return padded[torch.arange(count)[:, None, None], :, rows, cols].movedim(-1, 1)


def train(
    config: TrainConfig = TrainConfig(),
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train a built-in network on Fashion-MNIST, reproducibly for a fixed seed.

    Checkpoints at `config.checkpoint_epochs` and the final epoch go to `out_dir` as
    `epoch-NNN.safetensors` with a JSON of metadata beside each; `final.safetensors` is the last.
    An interrupted run (Ctrl-C) keeps the epochs it finished and the same call resumes from there,
    ending with the weights an unbroken run would have.

    Example:
        >>> result = train(TrainConfig(epochs=1, train_subset=2000), "runs/quick")  # doctest: +SKIP
    """
    if config.model not in BUILTIN_MODELS:
        raise unknown_name_error("built-in model", config.model, BUILTIN_MODELS)
    spec = BUILTIN_MODELS[config.model]
    out = Path(out_dir) if out_dir is not None else default_model_dir(config.model)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    saved = spec.build()
    model = _trainable(saved, config)
    train_set, test_set = _tensors(config, spec)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.momentum > 0,
    )
    result = TrainResult(saved)
    start_epoch = _resume(out, config, model, optimizer, result)
    started = time.perf_counter() - result.seconds
    for epoch in range(start_epoch, config.epochs):
        _train_epoch(model, optimizer, config, train_set, epoch, progress)
        weights = _deployed_state(model, config)  # folded once: evaluated, then saved
        saved.load_state_dict(weights)
        result.accuracy.append(accuracy(saved, test_set))
        result.seconds = time.perf_counter() - started
        _save_epoch(out, config, (model, weights), optimizer, result, epoch + 1)
        if on_epoch is not None:
            on_epoch(epoch + 1, result.accuracy[-1])
    saved.eval()  # a resume file is always of an unfinished run: the loop ran at least once
    return result


def _trainable(saved: nn.Module, config: TrainConfig) -> nn.Module:
    """The network trained: `saved`'s own (shared) or, with `batch_norm`, a copy with a batch
    norm after every conv; channels-last, with the classifier's dropout at `dropout`."""
    model = with_batch_norm(saved) if config.batch_norm else saved
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = config.dropout
    return model.to(memory_format=torch.channels_last)


def _deployed_state(model: nn.Module, config: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights of the saved architecture: batch norms folded into their convs, contiguous."""
    state = folded_state(model.eval()) if config.batch_norm else model.state_dict()
    return {key: value.contiguous() for key, value in state.items()}


def _tensors(config: TrainConfig, spec: BuiltinModel) -> tuple[TensorDataset, TensorDataset]:
    """The normalised training images (the first `train_subset`) and test images, as tensors."""
    train_set, test_set = FashionMNIST("train"), FashionMNIST("test")
    x_train, y_train = _normalised(train_set, spec.mean, spec.std), train_set.labels
    if config.train_subset:
        x_train, y_train = x_train[: config.train_subset], y_train[: config.train_subset]
    if config.shuffle_labels:  # the data randomisation test's model: labels that mean nothing
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(config.seed))
        y_train = y_train[order]
    test = TensorDataset(_normalised(test_set, spec.mean, spec.std), test_set.labels)
    return TensorDataset(x_train, y_train), test


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    train_set: TensorDataset,
    epoch: int,
    progress: bool,
) -> None:
    """One epoch of SGD with the one-cycle schedule, label smoothing, the augmentation when
    asked, and feature scale clipping after every step."""
    x_train, y_train = train_set.tensors
    steps = -(-len(x_train) // config.batch_size)
    torch.manual_seed(config.seed * 1000 + epoch)  # dropout and order depend only on the epoch
    order = torch.randperm(len(x_train))
    shifts = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    black = float(x_train.min())
    model.train()
    bar = tqdm(
        range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False
    )
    for step in bar:
        batch = order[step * config.batch_size : (step + 1) * config.batch_size]
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(config, epoch, step, steps)
        images = _augmented(x_train[batch], shifts, black) if config.augment else x_train[batch]
        images = images.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(
            model(images), y_train[batch], label_smoothing=config.label_smoothing
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if config.clip_radius is not None:
            clip_feature_scale(model, config.clip_radius)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")


def ensure_trained(name: str = "zfnet-fashion") -> Path:
    """The trained built-in model `name` in the user cache, trained there first (once, a few
    minutes, with a warning) when it is missing or was trained with another recipe than
    today's `TrainConfig` (that one is moved aside, never reused silently). Returns its
    `final.safetensors`."""
    folder = default_model_dir(name)
    path = folder / "final.safetensors"
    recipe = trained_recipe(TrainConfig(model=name))
    if path.exists() and cached_recipe(folder) == recipe:
        return path
    if path.exists():
        aside = _set_aside(folder)
        message = f"the {name} in the cache was trained with another recipe (moved to {aside})"
    else:
        message = f"no trained {name} in {folder}"
    warnings.warn(f"{message}; training it now (once, a few minutes)", stacklevel=3)
    train(TrainConfig(model=name), folder)
    return path


def trained_recipe(config: TrainConfig) -> dict:
    """`config` as its checkpoints' metadata records it (tuples as lists)."""
    return json.loads(json.dumps(_metadata_config(config)))


def cached_recipe(folder: Path) -> dict | None:
    """The recipe the model in `folder` was trained with, or None when there is none."""
    meta = folder / "final.json"
    return json.loads(meta.read_text()).get("config") if meta.exists() else None


def _set_aside(folder: Path) -> Path:
    """Move a cached model folder to the first free `<folder>-old-N`."""
    number = 1
    while folder.with_name(f"{folder.name}-old-{number}").exists():
        number += 1
    return folder.rename(folder.with_name(f"{folder.name}-old-{number}"))


def load_model(
    spec: str | Path, weights: str | Path | None = None, *, trust_pickle: bool = False
) -> LoadedModel:
    """`convlens.models.loading.load_model`, but a built-in model without weights is trained
    once first when the user cache has none (`ensure_trained`). This is `cl.load_model`.

    Example:
        >>> loaded = load_model("zfnet-fashion")  # doctest: +SKIP
        >>> loaded.classes[9]
        'Ankle boot'
    """
    if weights is None and str(spec) in BUILTIN_MODELS:
        ensure_trained(str(spec))
    return loading.load_model(spec, weights, trust_pickle=trust_pickle)


def _metadata_config(config: TrainConfig) -> dict:
    return {**asdict(config), "checkpoint_epochs": list(config.checkpoint_epochs)}


def _metadata(config: TrainConfig, result: TrainResult, epoch: int) -> dict:
    return {
        "config": _metadata_config(config),
        "epoch": epoch,
        "test_accuracy": result.accuracy[epoch - 1],
        "accuracy_per_epoch": result.accuracy[:epoch],
        "seconds": round(result.seconds, 2),
        "torch": torch.__version__,
    }


def _save_epoch(out: Path, config, trained, optimizer, result: TrainResult, epoch: int) -> None:
    """`trained` (the network trained, the saved architecture's weights): the weights at a
    checkpoint epoch (and `final` at the last), and the trained network's state with its
    momentum in `resume.safetensors`."""
    model, weights = trained
    meta = _metadata(config, result, epoch)
    names = ["final"] if epoch == config.epochs else []
    if epoch in config.checkpoint_epochs or epoch == config.epochs:
        names.append(f"epoch-{epoch:03d}")
    for name in names:
        write_checkpoint(out / f"{name}.safetensors", weights, meta)
        if name != "final":
            result.checkpoints.append(out / f"{name}.safetensors")
    momentum = {
        f"momentum.{i}": optimizer.state[p]["momentum_buffer"].contiguous()
        for i, p in enumerate(model.parameters())
        if optimizer.state[p].get("momentum_buffer") is not None
    }
    trained = {k: v.contiguous() for k, v in model.state_dict().items()}
    write_checkpoint(out / "resume.safetensors", {**trained, **momentum}, meta)
    if epoch == config.epochs:
        remove_checkpoint(out / "resume.safetensors")


def _resume(out: Path, config: TrainConfig, model, optimizer, result: TrainResult) -> int:
    state_path = out / "resume.safetensors"
    if not state_path.exists():
        return 0
    tensors, meta = read_checkpoint(state_path)
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
    if saved != asdict(config):
        raise ConvlensError(
            f"{out} holds an unfinished run with other settings; remove {state_path} to start afresh"
        )
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("momentum.")})
    for i, param in enumerate(model.parameters()):
        if f"momentum.{i}" in tensors:
            optimizer.state[param]["momentum_buffer"] = tensors[f"momentum.{i}"].clone()
    result.accuracy = list(meta["accuracy_per_epoch"])
    result.seconds = meta["seconds"]
    return meta["epoch"]
