"""Every attribution method by name, as the CLI, the noise tunnel and the atlas call them:
`(model, images, target, **options) -> maps`."""

from __future__ import annotations

from collections.abc import Callable

import torch

from convlens.attribution.cam import grad_cam, grad_cam_plus_plus, guided_grad_cam, layer_cam
from convlens.attribution.integrated import integrated_gradients
from convlens.attribution.pixel import deconvnet, gradient, guided_backprop, saliency
from convlens.attribution.score import score_cam

METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "deconvnet": deconvnet,
    "guided": guided_backprop,
    "saliency": saliency,
    "gradient": gradient,
    "gradcam": grad_cam,
    "gradcam++": grad_cam_plus_plus,
    "layercam": layer_cam,
    "scorecam": score_cam,
    "guided-gradcam": guided_grad_cam,
    "ig": integrated_gradients,
}
"""Name → method. The class activation maps take `layer`; "ig" takes `baseline`, `steps`,
`method` and `batch_size`."""

CAMS = ("gradcam", "gradcam++", "layercam", "scorecam", "guided-gradcam")


def method_function(name: str) -> Callable[..., torch.Tensor]:
    """The method called `name`, or a ValueError listing the names."""
    if name not in METHODS:
        raise ValueError(f"unknown attribution method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]
