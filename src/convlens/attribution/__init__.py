"""Where in an image a network looks, every method on one mechanism (`backward`: a forward under
a ReLU backward rule, the target seeded, one backward pass):

- pixel space: gradient, saliency (Simonyan 2014), deconvnet (Zeiler & Fergus 2014), guided
  backprop (Springenberg 2015), integrated gradients (Sundararajan 2017);
- class activation maps at a layer: Grad-CAM, Grad-CAM++, LayerCAM, guided Grad-CAM, Score-CAM;
- noise tunnels (SmoothGrad, SmoothGrad-squared, VarGrad) around any of them;
- channel attribution: each feature map's contribution to the decision at a layer.
"""

from convlens.attribution.backward import Backward, backward
from convlens.attribution.cam import grad_cam, grad_cam_plus_plus, guided_grad_cam, layer_cam
from convlens.attribution.channels import ChannelScores, channel_attribution
from convlens.attribution.integrated import integrated_gradients
from convlens.attribution.methods import CAMS, METHODS, method_function
from convlens.attribution.noise import noise_tunnel
from convlens.attribution.pixel import deconvnet, gradient, guided_backprop, project, saliency
from convlens.attribution.result import AttributionMap
from convlens.attribution.score import score_cam

__all__ = [
    "CAMS",
    "METHODS",
    "AttributionMap",
    "Backward",
    "ChannelScores",
    "backward",
    "channel_attribution",
    "deconvnet",
    "grad_cam",
    "grad_cam_plus_plus",
    "gradient",
    "guided_backprop",
    "guided_grad_cam",
    "integrated_gradients",
    "layer_cam",
    "method_function",
    "noise_tunnel",
    "project",
    "saliency",
    "score_cam",
]
