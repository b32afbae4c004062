"""The synthesis loop: parameterise an image, transform it, run the model, step toward the
objective, apply the image priors. Shared by class models, unit maximisation and inversion."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from convlens._errors import ConvlensError, unknown_name_error
from convlens._progress import tqdm
from convlens._shown import Shown
from convlens.hooks import Captured, capture, model_device, preserved_state
from convlens.models.card import ModelCard, card_of
from convlens.models.loading import LoadedModel
from convlens.models.preprocess import Preprocess
from convlens.render import signed_stretch
from convlens.rules import backward_rule
from convlens.synthesis import transforms as T
from convlens.synthesis.objectives import Objective, as_objective, diversity
from convlens.synthesis.parameterization import FourierImage, PixelImage
from convlens.synthesis.presets import PRESETS, Preset

REFERENCE_SIDE = 224  # the image side the sources' pixel amounts were chosen for
CAFFE_SIDE = 227  # Yosinski et al.'s image side: blur radii shrink in proportion below it
IMAGENET = Preprocess(3, (224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class Synthesis(Shown):
    """`images` (N, C, H, W) in [0, 1] for display (see `display`), `inputs` the images in the
    model's input space, `trace` (steps, N) the objective per step, what produced them, and a
    caption per image (`image_labels`)."""

    images: torch.Tensor
    inputs: torch.Tensor
    trace: torch.Tensor
    objective: str
    preset: Preset
    labels: tuple[str, ...] = ()


def resolve_model(
    model: nn.Module | LoadedModel, preprocess: Preprocess | None = None
) -> tuple[nn.Module, Preprocess]:
    """The module and its preprocessing: `preprocess` when given, else a LoadedModel's own (or
    that of the LoadedModel a bare module came from, by its card); else ImageNet statistics at
    224x224 for a 3-channel first convolution, else identity."""
    if isinstance(model, LoadedModel):
        return model.model, preprocess or model.transform
    preprocess = preprocess or card_of(model).transform
    if preprocess is not None:
        return model, preprocess
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return model, _fallback(first.in_channels if first is not None else 3, (224, 224))


def input_space(model: nn.Module, shape: Sequence[int]) -> Preprocess:
    """The preprocessing synthesis for `model` optimises in, for inputs of `shape` (C, H, W):
    the one `load_model` filed for it, else ImageNet statistics (3 channels) or the identity
    at that size."""
    known = card_of(model).transform
    return known if known is not None else _fallback(int(shape[0]), tuple(shape[-2:]))


def _fallback(channels: int, size: tuple[int, int]) -> Preprocess:
    """ImageNet statistics for 3 channels, else the identity, at `size`."""
    if channels == 3:
        return replace(IMAGENET, size=size)
    return Preprocess(channels, size, (0.0,) * channels, (1.0,) * channels)


def preset_named(name: str | Preset, **overrides: object) -> Preset:
    """A preset by name (close matches on a typo), with fields replaced by `overrides`."""
    if isinstance(name, Preset):
        preset = name
    elif name in PRESETS:
        preset = PRESETS[name]
    else:
        raise unknown_name_error("preset", name, list(PRESETS))
    return replace(preset, **{k: v for k, v in overrides.items() if v is not None})


def build_transforms(preset: Preset, prep: Preprocess, device: torch.device) -> T.Transform:
    """The preset's transform chain in input space, then `fit` to the model's input size. The
    sources transform [0, 1] images before the model's normalisation: padding is their grey 0.5
    and corners rotated in are 0 (black), here both normalised; scaling and cropping commute
    with the normalisation.
    Pad and jitter amounts were set for models with 224-pixel inputs; for smaller inputs they
    shrink in proportion (a 12-pixel pad on a 28-pixel image would be most of the picture)."""
    grey = prep.normalize(torch.full((prep.channels, 1, 1), 0.5, device=device)).flatten()
    black = prep.normalize(torch.zeros((prep.channels, 1, 1), device=device)).flatten()

    def pixels(amount: int) -> int:
        return round(amount * min(prep.size[0], REFERENCE_SIDE) / REFERENCE_SIDE)

    makers = {
        "pad": lambda width: T.pad(pixels(width), grey),  # none below 10 pixels
        "jitter": lambda shift: T.jitter(max(1, pixels(shift))),  # jitter 1 is no shift
        "scale": T.random_scale,
        "rotate": lambda degrees: T.random_rotate(degrees, black),
    }
    chain = [makers[kind](value) for kind, value in preset.transforms]
    return T.compose([*chain, T.fit(prep.size)])


def total_variation(image: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Sum over pixels of (dx^2 + dy^2)^(beta / 2), per image (N,)."""
    dx = image[..., :-1, 1:] - image[..., :-1, :-1]
    dy = image[..., 1:, :-1] - image[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2) + 1e-12).pow(beta / 2).flatten(1).sum(dim=1)


def synthesize(
    model: nn.Module | LoadedModel,
    objective: Objective | int | str,
    *,
    preset: str | Preset = "lucid",
    steps: int | None = None,
    size: int | None = None,
    n: int = 1,
    seed: int = 0,
    diversity_weight: float = 0.0,
    preprocess: Preprocess | None = None,
    redirect_relu: bool = False,
    fast: bool = False,
    progress: bool = False,
    offset: int = 0,
    keep_on_interrupt: bool = False,
    **overrides: object,
) -> Synthesis:
    """Images that maximise `objective` (class index, "layer:channel", Objective, ...).

    Example:
        >>> result = synthesize(loaded, 7, preset="lucid")  # doctest: +SKIP
        >>> result.images.shape  # the "Sneaker" class model of the built-in network
        torch.Size([1, 1, 28, 28])

    Args:
        preset: a name from `PRESETS` (simonyan, yosinski-1..4, lucid, distill) or a Preset.
        steps: override the preset's step count; `overrides` replace any other Preset field.
        size: side of the optimised image (default: the model's input size); smaller images are
            upsampled to the input size before the forward.
        n: images per objective; with `diversity_weight`, the n images are pushed apart.
        preprocess: the model's normalisation when `model` is a bare module.
        redirect_relu: Lucid's redirected ReLU gradient (`convlens.rules`): an image whose unit
            is silent at the start still gets a gradient.
        fast: run the model in bfloat16 (autocast; the image and optimiser stay float32).
        offset: this batch's first image's place in a larger batch split in chunks: each image
            starts from the draws it would get in the whole batch, and the random transforms are
            the whole batch's, so the chunks together equal one run unless a diversity term
            couples the images.
        keep_on_interrupt: Ctrl-C ends the optimisation and returns the images so far, with a
            warning (the `synthesize` command); otherwise it propagates, so that a run of many
            chunks (an atlas) stops instead of keeping half-optimised images as finished ones.
    """
    module, prep = resolve_model(model, preprocess)
    preset = preset_named(preset, steps=steps, **overrides)
    labels = image_labels(as_objective(objective), card_of(module), n, offset)
    objective = _with_diversity(as_objective(objective), module, n, diversity_weight)
    loop = _start(module, prep, preset, n, size, seed, offset)
    with (
        preserved_state(module, training=False, frozen=True),
        capture(
            module, sorted(objective.layers), detach=False, stop=not objective.needs_logits
        ) as acts,
        backward_rule("redirected", whole=False) if redirect_relu else nullcontext(),
        torch.autocast(model_device(module).type, dtype=torch.bfloat16, enabled=fast),
    ):
        _steps(loop, acts, objective, preset, progress, keep_on_interrupt)
    return replace(_finish(loop, objective, preset, prep, n), labels=labels)


def _steps(
    loop: _Loop,
    acts: Captured,
    objective: Objective,
    preset: Preset,
    progress: bool,
    keep_on_interrupt: bool,
) -> None:
    """The preset's steps; Ctrl-C ends them with a warning when `keep_on_interrupt`, else it
    propagates."""
    try:
        for step in tqdm(range(preset.steps), desc="synthesize", disable=not progress):
            _step(loop, acts, objective, preset, step)
    except KeyboardInterrupt:
        if not keep_on_interrupt:
            raise
        warnings.warn(
            f"interrupted at step {len(loop.trace)}; returning the image so far", stacklevel=3
        )


def image_labels(goal: Objective, card: ModelCard, n: int, offset: int = 0) -> tuple[str, ...]:
    """A caption per image: "class: name" for a class objective, else the objective and the
    image's number (counted from `offset`, the first image's place in a chunked batch)."""
    numbers = range(offset, offset + n)
    if len(goal.classes) not in (1, n):  # no class, or a count the objective itself refuses
        return tuple(f"{goal.name} #{i}" for i in numbers)
    classes = goal.classes * n if len(goal.classes) == 1 else goal.classes
    return tuple(f"{classes[i - offset]}: {card.class_name(classes[i - offset])}" for i in numbers)


@dataclass
class _Loop:
    """The optimisation's state: the parameterised image, the input transforms and their random
    generator, Adam (None for plain ascent), the pixel scale and the objective per step so far."""

    image: FourierImage | PixelImage
    transform: T.Transform
    generator: torch.Generator
    adam: torch.optim.Adam | None
    pixel_scale: torch.Tensor
    trace: list[torch.Tensor] = field(default_factory=list)


def _with_diversity(
    objective: Objective, module: nn.Module, n: int, diversity_weight: float
) -> Objective:
    """`objective`, plus the weighted diversity term when several images are pushed apart."""
    if diversity_weight and n > 1:
        layer = min(objective.layers) if objective.layers else _first_conv(module)
        objective = objective + diversity_weight * diversity(layer)
    return objective


def _start(
    module: nn.Module,
    prep: Preprocess,
    preset: Preset,
    n: int,
    size: int | None,
    seed: int,
    offset: int = 0,
) -> _Loop:
    """The loop's initial state: a seeded image of side `size` (the draws of images `offset` to
    `offset + n` of a seeded batch), transforms with their own seeded generator, optimiser."""
    device = model_device(module)
    side = size or prep.size[0]
    shape = (n, prep.channels, side, side)
    pixel_scale = 255 * torch.tensor(prep.std, device=device).view(1, -1, 1, 1)
    init = torch.Generator().manual_seed(seed)
    image = _parameterized_image(preset, shape, init, device, prep, pixel_scale, offset)
    generator = torch.Generator().manual_seed(seed)
    transform = build_transforms(preset, prep, device)
    adam = torch.optim.Adam(image.params, lr=preset.lr) if preset.optimizer == "adam" else None
    return _Loop(image, transform, generator, adam, pixel_scale)


def _parameterized_image(
    preset: Preset,
    shape: tuple[int, int, int, int],
    generator: torch.Generator,
    device: torch.device,
    prep: Preprocess,
    pixel_scale: torch.Tensor,
    skip: int = 0,
) -> FourierImage | PixelImage:
    """The preset's image parameterisation: a Fourier spectrum or plain pixels."""
    if preset.parameterization == "fourier":
        return FourierImage(shape, generator, device, prep.normalize, skip=skip)
    if preset.parameterization == "pixels":
        return PixelImage(shape, generator, device, preset.init_std / pixel_scale.cpu(), skip)
    raise ConvlensError(f"unknown parameterization {preset.parameterization!r}")


def _step(loop: _Loop, acts: Captured, objective: Objective, preset: Preset, step: int) -> None:
    """One step: forward, ascend the objective less the l2/tv penalties, priors, record it."""
    image = loop.image
    current = image()
    logits = acts.forward(
        loop.transform(current, loop.generator).contiguous(memory_format=torch.channels_last)
    )
    value = objective(acts, logits)
    loss = -value.sum()
    if preset.l2:
        loss = loss + preset.l2 * current.pow(2).sum()
    if preset.tv:
        loss = loss + preset.tv * total_variation(current).sum()
    grads = torch.autograd.grad(loss, image.params)
    with torch.no_grad():
        if loop.adam is not None:
            for param, grad in zip(image.params, grads):
                param.grad = grad
            loop.adam.step()
        else:
            _ascent(image.tensor, -grads[0], preset, loop.pixel_scale)
        if isinstance(image, PixelImage):
            _priors(image.tensor, -grads[0], step, preset, loop.pixel_scale)
    loop.trace.append(value.detach().float().cpu())


def _finish(
    loop: _Loop, objective: Objective, preset: Preset, prep: Preprocess, n: int
) -> Synthesis:
    """The Synthesis of the image as optimised so far, with its display form and trace."""
    with torch.no_grad():
        final = loop.image().detach()
    return Synthesis(
        images=display(final, prep, stretch=isinstance(loop.image, PixelImage)),
        inputs=final,
        trace=torch.stack(loop.trace) if loop.trace else torch.empty(0, n),
        objective=objective.name,
        preset=preset,
    )


def display(inputs: torch.Tensor, prep: Preprocess, stretch: bool) -> torch.Tensor:
    """Input-space images → [0, 1]. Unbounded pixel parameterisations are contrast-stretched
    per image around the mean (grey), their 99.5th percentile deviation reaching black or white,
    as Simonyan's and Yosinski's figures are stretched; bounded ones are shown as they are."""
    if not stretch:
        return prep.denormalize(inputs)
    std = torch.tensor(prep.std, device=inputs.device).view(1, -1, 1, 1)
    return signed_stretch(inputs * std, dims=(1, 2, 3), quantile=0.995)


def _first_conv(module: nn.Module) -> str:
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            return name
    raise ConvlensError("diversity needs a conv layer; the model has none")


def _ascent(
    x: torch.Tensor, ascent: torch.Tensor, preset: Preset, pixel_scale: torch.Tensor
) -> None:
    """One plain gradient-ascent step in place. With `pixel_units` the step is taken as in
    0-255 pixel space (Caffe) and mapped back; the "progress" policy picks the step that would
    raise a linear objective by `desired_progress`, capped at `lr`, for each image on its own."""
    if not preset.pixel_units:
        x.add_(preset.lr * ascent)
        return
    pixel_gradient = ascent / pixel_scale
    lr = torch.full((len(x), 1, 1, 1), preset.lr, device=x.device)
    if preset.lr_policy == "progress":  # per image, as Yosinski optimises one image at a time
        norms = pixel_gradient.pow(2).sum((1, 2, 3), keepdim=True).clamp_min(1e-12)
        lr = (preset.desired_progress / norms).clamp_max(preset.lr)
    x.add_(lr * pixel_gradient / pixel_scale)


def _priors(
    x: torch.Tensor, ascent: torch.Tensor, step: int, preset: Preset, pixel_scale: torch.Tensor
) -> None:
    """Yosinski et al.'s four image priors, in place and in their order: decay, blur every k
    steps, zero pixels of small norm, zero pixels of small contribution. The blur radius was set
    for 227-pixel images and shrinks in proportion for smaller ones."""
    if preset.decay:
        x.mul_(1 - preset.decay)
    if preset.blur_every and preset.blur_radius and step % preset.blur_every == 0:
        sigma = preset.blur_radius * min(min(x.shape[-2:]) / CAFFE_SIDE, 1.0)
        radius = max(1, math.ceil(3 * sigma))
        kernel = min(2 * radius + 1, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)
        x.copy_(TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma]))
    if preset.norm_percentile:
        norms = (x * pixel_scale).norm(dim=1)
        x.mul_((norms >= _percentile(norms, preset.norm_percentile)).unsqueeze(1))
    if preset.contribution_percentile:
        contribution = (-x * ascent).sum(dim=1).abs()  # the objective's change if set to zero
        keep = contribution >= _percentile(contribution, preset.contribution_percentile)
        x.mul_(keep.unsqueeze(1))


def _percentile(values: torch.Tensor, percent: float) -> torch.Tensor:
    """Per image (N, H, W) → (N, 1, 1): the `percent` percentile of its values."""
    return values.flatten(1).quantile(percent / 100, dim=1).view(-1, 1, 1)
