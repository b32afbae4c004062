"""convlens: see what a convolutional network has learned.

Zeiler & Fergus (2014) and the methods beside it for any PyTorch CNN: filters, feature maps,
receptive fields, and (as they land) deconvnet projections, top-k dataset examples, occlusion,
saliency, synthesis, embeddings and a browsable HTML atlas.

Example:
    >>> import convlens as cl
    >>> loaded = cl.load_model("zfnet-fashion")  # doctest: +SKIP
    >>> cl.receptive_field(loaded.model, "features.4", loaded.input_size)  # doctest: +SKIP
    ReceptiveField(size=(11, 11), stride=(2, 2), offset=(-5, -5))
"""

from convlens import data, synthesis
from convlens._errors import ConvlensError
from convlens.analysis import DeadUnits, conv_layers, dead_units, feature_maps, filter_rms
from convlens.attribution import deconvnet, gradient, guided_backprop, saliency
from convlens.hooks import capture
from convlens.models.layers import LayerInfo, ReceptiveField, receptive_field, trace_layers
from convlens.models.loading import LoadedModel, load_model
from convlens.occlusion import Occlusion, occlusion
from convlens.scan import ScanResult, TopK, scan
from convlens.synthesis import fgsm, fooling_image, invert, synthesize
from convlens.units import Unit

__version__ = "0.1.0"

__all__ = [
    "ConvlensError",
    "DeadUnits",
    "LayerInfo",
    "LoadedModel",
    "Occlusion",
    "ReceptiveField",
    "ScanResult",
    "TopK",
    "Unit",
    "__version__",
    "capture",
    "conv_layers",
    "data",
    "dead_units",
    "deconvnet",
    "feature_maps",
    "fgsm",
    "filter_rms",
    "fooling_image",
    "gradient",
    "guided_backprop",
    "invert",
    "load_model",
    "occlusion",
    "receptive_field",
    "saliency",
    "scan",
    "synthesis",
    "synthesize",
    "trace_layers",
]
