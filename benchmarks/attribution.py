"""Attribution speed: each convlens method next to its peers in other libraries, on the same
random-init torchvision model (alexnet, resnet18), images (random, 224x224, batch 16) and class
targets (a random class per image, seed 0), measured in one run. Prints one JSON line per
(model, method) and a final summary line.

- Grad-CAM, Grad-CAM++ at convlens's default layer (alexnet `features.11`, resnet18 `layer4`),
  full-resolution maps: pytorch-grad-cam `GradCAM` / `GradCAMPlusPlus` (`ClassifierOutputTarget`)
  and Captum `LayerGradCam` + `LayerAttribution.interpolate(..., "bilinear")` (Captum has no
  Grad-CAM++). The peers get the model as torchvision builds it: pytorch-grad-cam calls
  `loss.backward()`, which needs parameters that require grad (and fills their `.grad`).
- Score-CAM on the first --scorecam-images images, seconds per image: convlens exact (its
  default batch of 16 masked images, batch norm folded) and with fast=True (bfloat16 masked
  forwards; `fast_ratio`), against pytorch-grad-cam `ScoreCAM` with `batch_size` 64 and 16 (its
  default); the faster of the two is the peer time.
- Integrated gradients, 50 steps, gausslegendre, zero baseline, --ig-batch path points per
  forward on both sides: Captum `IntegratedGradients(internal_batch_size=...)`, plus the peak
  memory of one call of each: the growth of the RSS high-water mark (VmHWM, /proc/self/status)
  during the call, in a fresh 'spawn' process per measurement whose mark is reset
  (/proc/self/clear_refs) after its setup. Not tracemalloc, which does not see torch's CPU
  tensors, nor ru_maxrss, which in a spawned child starts at the parent's RSS (the kernel keeps
  the high-water mark of the forked process across exec).
- deconvnet, guided backprop, saliency: Captum `Deconvolution`, `GuidedBackprop`, `Saliency`
  (abs=True, then the max over channels as convlens's map). Captum hooks ReLU modules, so its
  peers get a deep copy of the model with no ReLU in place (resnet18 still calls each block's
  `relu` twice; Captum hooks every call, and its maps equal convlens's); convlens runs on the
  original.

Timing: one warm-up of every contender, then the best of --repeats rounds (time.perf_counter),
each round running convlens and its peers in turn, so that a load drift hits all of them;
torch's default thread count. `ratio` = peer seconds / convlens seconds (> 1: convlens faster).
`agrees`: the maps are equal (allclose, tolerance relative to the map's largest value) where
the definitions are the same: Captum's Grad-CAM, IG and pixel methods as they are,
pytorch-grad-cam's Grad-CAM(++) after its own per-image min-max scaling applied to convlens's
layer-resolution map (its Grad-CAM++ adds 1e-6 to the denominator of alpha, convlens nothing,
so the two differ where gradients are small). Its Score-CAM is not compared: it weighs channels
by a softmax over the channels of the raw class scores (convlens: the class's softmax
probability) and upsamples with align_corners=True.

Targets (issue 16): ratio >= 1.0 against every peer for Grad-CAM, Grad-CAM++, IG and the pixel
methods, >= 3.0 for Score-CAM. Captum and pytorch-grad-cam are benchmark extras:
pip install -e '.[benchmark]'.
Run: python benchmarks/attribution.py [--models alexnet,resnet18] [--batch 16] [--size 224]
     [--repeats 2] [--scorecam-images 2] [--ig-batch 64]
"""

from __future__ import annotations

import os

# No progress bar per image from pytorch-grad-cam's Score-CAM; set before tqdm is imported,
# which reads it then.
os.environ["TQDM_DISABLE"] = "1"

import argparse
import copy
import json
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
import torchvision
from _spawn import in_fresh_process
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Saliency,
)
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import convlens
from convlens.attribution.cam import cam_layer
from convlens.attribution.score import DEFAULT_BATCH as SCORECAM_BATCH

PEER_SCORECAM_BATCHES = (64, 16)  # pytorch-grad-cam's default is 16; the faster counts

STEPS, QUADRATURE = 50, "gausslegendre"
TARGETS = {
    "gradcam": 1.0,
    "gradcam++": 1.0,
    "scorecam": 3.0,
    "ig": 1.0,
    "deconvnet": 1.0,
    "guided": 1.0,
    "saliency": 1.0,
}
CAMS = {
    "gradcam": (convlens.grad_cam, GradCAM),
    "gradcam++": (convlens.grad_cam_plus_plus, GradCAMPlusPlus),
}
PIXEL = {
    "deconvnet": (convlens.deconvnet, Deconvolution),
    "guided": (convlens.guided_backprop, GuidedBackprop),
    "saliency": (convlens.saliency, Saliency),
}
Setup = tuple[nn.Module, torch.Tensor, torch.Tensor]


def setup(name: str, batch: int, size: int) -> Setup:
    """The random-init model, images and one random class per image, from seed 0."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    images = torch.randn(batch, 3, size, size)
    return model, images, torch.randint(0, 1000, (batch,))


def timed(
    contenders: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], dict[str, object]]:
    """Best seconds of each contender over `repeats` rounds that run them in turn, after one
    warm-up each; and each one's output from the warm-up."""
    outputs = {name: run() for name, run in contenders.items()}
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeats):
        for name, run in contenders.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best, outputs


def agrees(ours: torch.Tensor, theirs: object) -> bool:
    """Equal up to float32 error: at least 99% of the values within 1e-3 relative or 1e-4 of
    the largest |value|, and a correlation above 0.999. Not every value: a random-init resnet18
    is chaotic in float32, where one ReLU or max-pool decision flipped by rounding reroutes a
    few gradient paths; measured against a float64 reference, the default and the channels-last
    layout each miss by up to 2% of the largest value at a few hundred pixels of 4 images."""
    theirs = torch.as_tensor(theirs).detach().to(ours.dtype)
    if ours.shape != theirs.shape:
        return False
    scale = float(theirs.abs().max())
    close = torch.isclose(ours, theirs, rtol=1e-3, atol=1e-4 * scale).float().mean()
    correlation = torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1]
    return bool(close >= 0.99 and correlation > 0.999)


def peer(seconds: float, ours: float, agree: bool | None, **notes: object) -> dict:
    """One peer's entry: its seconds, the ratio to convlens's, agreement and notes."""
    return {
        "seconds": round(seconds, 4),
        "ratio": round(seconds / ours, 3),
        "agrees": agree,
        **notes,
    }


def row(name: str, method: str, images: int, size: int, ours: float, peers: dict) -> dict:
    """One JSON line: convlens's seconds, its peers, and whether the target is met."""
    worst = min(entry["ratio"] for entry in peers.values() if entry.get("ratio") is not None)
    return {
        "model": name,
        "method": method,
        "images": images,
        "size": size,
        "convlens_seconds": round(ours, 4),
        "peers": peers,
        "target": TARGETS[method],
        "meets_target": worst >= TARGETS[method],
    }


def grad_cam_library_scaling(low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """pytorch-grad-cam's output for a layer-resolution map (N, h, w): each map min-max scaled
    (1e-7 added to the max), resized bilinearly (cv2, half-pixel centres), scaled again."""

    def scale(maps: torch.Tensor) -> torch.Tensor:
        maps = maps - maps.amin((1, 2), keepdim=True)
        return maps / (1e-7 + maps.amax((1, 2), keepdim=True))

    resized = F.interpolate(scale(low)[:, None], size=size, mode="bilinear", align_corners=False)
    return scale(resized[:, 0])


def captum_grad_cam(
    model: nn.Module, module: nn.Module, images: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Captum's Grad-CAM at `module`, upsampled bilinearly to the images, (N, H, W)."""
    low = LayerGradCam(model, module).attribute(images, targets, relu_attributions=True)
    return LayerAttribution.interpolate(low, tuple(images.shape[-2:]), "bilinear")[:, 0]


def cam_row(name: str, method: str, setup_: Setup, repeats: int) -> dict:
    """Grad-CAM or Grad-CAM++ against pytorch-grad-cam's and (Grad-CAM only) Captum's."""
    model, images, targets = setup_
    layer = cam_layer(model, None)
    module = model.get_submodule(layer)
    ours, kind = CAMS[method]
    classes = [ClassifierOutputTarget(int(t)) for t in targets]

    def library() -> object:
        with kind(model=model, target_layers=[module]) as cam:
            return cam(input_tensor=images, targets=classes)

    contenders = {"convlens": lambda: ours(model, images, targets, layer), "library": library}
    if method == "gradcam":
        contenders["captum"] = lambda: captum_grad_cam(model, module, images, targets)
    seconds, outputs = timed(contenders, repeats)
    low = ours(model, images, targets, layer, upsample=False)
    scaled = grad_cam_library_scaling(low, tuple(images.shape[-2:]))
    agreement = "after pytorch-grad-cam's per-image min-max scaling"
    if method == "gradcam++":
        agreement += (
            "; pytorch-grad-cam adds 1e-6 to the denominator of alpha (convlens, as the paper, "
            "nothing), which shows where gradients are small, as in a random-init model"
        )
    peers = {
        f"pytorch-grad-cam {kind.__name__}": peer(
            seconds["library"],
            seconds["convlens"],
            agrees(scaled, outputs["library"]),
            agreement=agreement,
        )
    }
    if method == "gradcam":
        agree = agrees(outputs["convlens"], outputs["captum"])
        peers["captum LayerGradCam"] = peer(seconds["captum"], seconds["convlens"], agree)
    else:
        peers["captum"] = {"ratio": None, "note": "Captum has no Grad-CAM++"}
    entry = row(name, method, len(images), images.shape[-1], seconds["convlens"], peers)
    entry["layer"] = layer
    return entry


def scorecam_row(name: str, setup_: Setup, repeats: int, count: int) -> dict:
    """Score-CAM on the first `count` images against pytorch-grad-cam's at two batch sizes;
    seconds per image."""
    model, images, targets = setup_
    images, targets = images[:count], targets[:count]
    layer = cam_layer(model, None)
    module = model.get_submodule(layer)
    classes = [ClassifierOutputTarget(int(t)) for t in targets]

    def library(batch_size: int) -> object:
        with ScoreCAM(model=model, target_layers=[module]) as cam:
            cam.batch_size = batch_size  # unset, pytorch-grad-cam uses 16
            return cam(input_tensor=images, targets=classes)

    seconds, _ = timed(
        {
            "convlens": lambda: convlens.score_cam(model, images, targets, layer),
            "fast": lambda: convlens.score_cam(model, images, targets, layer, fast=True),
            **{b: (lambda b=b: library(b)) for b in PEER_SCORECAM_BATCHES},
        },
        repeats,
    )
    per_image = {key: value / count for key, value in seconds.items()}
    fastest = min(PEER_SCORECAM_BATCHES, key=per_image.__getitem__)
    peers = {
        "pytorch-grad-cam ScoreCAM": peer(
            per_image[fastest],
            per_image["convlens"],
            None,
            batch_size=fastest,
            seconds_by_batch_size={b: round(per_image[b], 4) for b in PEER_SCORECAM_BATCHES},
            agreement="skipped: channel weights are a softmax over channels of the raw class "
            "score (convlens: the class's softmax probability), masks upsampled with "
            "align_corners=True",
        )
    }
    entry = row(name, "scorecam", count, images.shape[-1], per_image["convlens"], peers)
    fast_ratio = round(per_image[fastest] / per_image["fast"], 3)
    entry.update(
        layer=layer,
        seconds_are="per image",
        convlens_batch_size=SCORECAM_BATCH,
        fast_seconds=round(per_image["fast"], 4),
        fast_ratio=fast_ratio,
        fast_meets_target=fast_ratio >= TARGETS["scorecam"],
    )
    return entry


def run_ig(tool: str, setup_: Setup, ig_batch: int) -> torch.Tensor:
    """Integrated gradients by `tool` ("convlens" or "captum"), the same path and quadrature."""
    model, images, targets = setup_
    if tool == "captum":
        return IntegratedGradients(model).attribute(
            images, target=targets, n_steps=STEPS, method=QUADRATURE, internal_batch_size=ig_batch
        )
    return convlens.integrated_gradients(
        model, images, targets, steps=STEPS, method=QUADRATURE, batch_size=ig_batch
    )


def _status_kb(field: str) -> int:
    """A field of /proc/self/status (VmRSS, VmHWM), in kB."""
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith(f"{field}:")))


def _peak_child(job: tuple[str, int, int, int, str], queue) -> None:
    """In a fresh process: the RSS high-water mark's growth (MB) during one IG call."""
    name, batch, size, ig_batch, tool = job
    setup_ = setup(name, batch, size)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # high-water mark := current RSS, forgetting the setup's peaks
    before = _status_kb("VmHWM")
    run_ig(tool, setup_, ig_batch)
    queue.put(round((_status_kb("VmHWM") - before) / 1024, 1))


def peak_mb(job: tuple[str, int, int, int, str]) -> float:
    """`_peak_child`'s measurement of `job`, in a fresh 'spawn' process."""
    return in_fresh_process(_peak_child, job)


def ig_row(name: str, setup_: Setup, repeats: int, ig_batch: int) -> dict:
    """Integrated gradients against Captum's: seconds, agreement, peak memory of each."""
    seconds, outputs = timed(
        {tool: lambda tool=tool: run_ig(tool, setup_, ig_batch) for tool in ("convlens", "captum")},
        repeats,
    )
    images = setup_[1]
    job = (name, len(images), images.shape[-1], ig_batch)
    peers = {
        "captum IntegratedGradients": peer(
            seconds["captum"],
            seconds["convlens"],
            agrees(outputs["convlens"], outputs["captum"]),
            peak_mb=peak_mb((*job, "captum")),
        )
    }
    entry = row(name, "ig", len(images), images.shape[-1], seconds["convlens"], peers)
    entry.update(steps=STEPS, quadrature=QUADRATURE, batch_size=ig_batch)
    entry["convlens_peak_mb"] = peak_mb((*job, "convlens"))
    return entry


def relus_not_in_place(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose ReLU modules are not in place, for Captum's ReLU hooks."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return twin


def pixel_row(name: str, method: str, setup_: Setup, twin: nn.Module, repeats: int) -> dict:
    """deconvnet, guided backprop or saliency against Captum's, which runs on `twin`."""
    model, images, targets = setup_
    ours, kind = PIXEL[method]
    attribute = kind(twin).attribute

    def theirs() -> torch.Tensor:
        if method == "saliency":  # Simonyan's map: the max over channels of |gradient|
            return attribute(images, target=targets, abs=True).amax(1)
        return attribute(images, target=targets)

    seconds, outputs = timed(
        {"convlens": lambda: ours(model, images, targets), "captum": theirs}, repeats
    )
    agree = agrees(outputs["convlens"], outputs["captum"])
    peers = {f"captum {kind.__name__}": peer(seconds["captum"], seconds["convlens"], agree)}
    entry = row(name, method, len(images), images.shape[-1], seconds["convlens"], peers)
    entry["peer_model"] = "deep copy, ReLU modules not in place"
    return entry


def model_rows(name: str, args: argparse.Namespace) -> Iterator[dict]:
    """Every method's line for one model, as it is measured."""
    setup_ = setup(name, args.batch, args.size)
    for method in CAMS:
        yield cam_row(name, method, setup_, args.repeats)
    yield scorecam_row(name, setup_, args.repeats, args.scorecam_images)
    yield ig_row(name, setup_, args.repeats, args.ig_batch)
    twin = relus_not_in_place(setup_[0])
    for method in PIXEL:
        yield pixel_row(name, method, setup_, twin, args.repeats)


def summary(rows: list[dict]) -> dict:
    """The worst ratio of each method over models and peers, the misses and disagreements."""
    worst: dict[str, float] = {}
    below, disagree = [], []
    for entry in rows:
        for label, found in entry["peers"].items():
            if found.get("ratio") is None:
                continue
            key = entry["method"]
            worst[key] = min(worst.get(key, float("inf")), found["ratio"])
            where = f"{entry['model']} {key} vs {label}"
            if found["ratio"] < entry["target"]:
                below.append(f"{where}: {found['ratio']}")
            if found["agrees"] is False:
                disagree.append(where)
    return {
        "summary": True,
        "threads": torch.get_num_threads(),
        "worst_ratio": worst,
        "targets": TARGETS,
        "below_target": below,
        "disagreements": disagree,
        "all_targets_met": not below,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="alexnet,resnet18")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--scorecam-images", type=int, default=2)
    parser.add_argument("--ig-batch", type=int, default=64)
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        for found in model_rows(name, args):
            print(json.dumps(found), flush=True)
            rows.append(found)
    print(json.dumps(summary(rows)), flush=True)


if __name__ == "__main__":
    main()
