"""convlens: see what a convolutional network has learned.

Zeiler & Fergus (2014) and the methods beside it for any PyTorch CNN: filters, feature maps,
receptive fields, deconvnet projections, top-k dataset examples, occlusion, saliency, synthesis,
class activation maps (Grad-CAM family), integrated gradients, noise tunnels, embeddings,
training dynamics and a browsable HTML atlas.

Example:
    >>> import convlens as cl
    >>> loaded = cl.load_model("zfnet-fashion")  # doctest: +SKIP
    >>> cl.receptive_field(loaded.model, "features.4", loaded.input_size)  # doctest: +SKIP
    ReceptiveField(size=(11, 11), stride=(2, 2), offset=(-5, -5))
"""

from convlens import data, synthesis
from convlens._errors import ConvlensError
from convlens.analysis import (
    DeadUnits,
    FeatureMaps,
    Filters,
    conv_layers,
    dead_units,
    feature_maps,
    filter_rms,
    filters,
)
from convlens.analysis.activation_atlas import (
    ActivationAtlas,
    activation_atlas,
    activation_atlases,
    class_atlas,
)
from convlens.analysis.correspondence import Correspondence, correspondence
from convlens.analysis.evolution import Evolution, evolution
from convlens.analysis.groups import NeuronGroups, neuron_groups
from convlens.analysis.invariance import Invariance, invariance
from convlens.atlas import AtlasConfig, write_atlas
from convlens.attribution import (
    AttributionMap,
    ChannelScores,
    channel_attribution,
    deconvnet,
    grad_cam,
    grad_cam_plus_plus,
    gradient,
    guided_backprop,
    guided_grad_cam,
    integrated_gradients,
    layer_cam,
    noise_tunnel,
    saliency,
    score_cam,
)
from convlens.embedding import (
    Embedding,
    Neighbours,
    codes,
    embed,
    grid_layout,
    nearest_neighbours,
    tsne,
)
from convlens.hooks import capture
from convlens.models.layers import LayerInfo, ReceptiveField, receptive_field, trace_layers
from convlens.models.loading import LoadedModel
from convlens.occlusion import Occlusion, occlusion
from convlens.report.display import show
from convlens.scan import TopExamples, scan, top_examples
from convlens.synthesis import (
    fgsm,
    fooling_image,
    invert,
    synthesize,
    synthesize_directions,
    synthesize_units,
)
from convlens.targets import Unit
from convlens.topk import ScanResult, TopK
from convlens.training import load_model
from convlens.trust import (
    data_randomisation_test,
    deletion,
    faithfulness,
    insertion,
    randomisation_test,
    soft_mask,
)

__version__ = "0.1.0"

__all__ = [
    "ActivationAtlas",
    "AtlasConfig",
    "AttributionMap",
    "ChannelScores",
    "ConvlensError",
    "Correspondence",
    "DeadUnits",
    "Embedding",
    "Evolution",
    "FeatureMaps",
    "Filters",
    "Invariance",
    "LayerInfo",
    "LoadedModel",
    "Neighbours",
    "NeuronGroups",
    "Occlusion",
    "ReceptiveField",
    "ScanResult",
    "TopExamples",
    "TopK",
    "Unit",
    "__version__",
    "activation_atlas",
    "activation_atlases",
    "capture",
    "channel_attribution",
    "class_atlas",
    "codes",
    "conv_layers",
    "correspondence",
    "data",
    "data_randomisation_test",
    "dead_units",
    "deconvnet",
    "deletion",
    "embed",
    "evolution",
    "faithfulness",
    "feature_maps",
    "fgsm",
    "filter_rms",
    "filters",
    "fooling_image",
    "grad_cam",
    "grad_cam_plus_plus",
    "gradient",
    "grid_layout",
    "guided_backprop",
    "guided_grad_cam",
    "insertion",
    "integrated_gradients",
    "invariance",
    "invert",
    "layer_cam",
    "load_model",
    "nearest_neighbours",
    "neuron_groups",
    "noise_tunnel",
    "occlusion",
    "randomisation_test",
    "receptive_field",
    "saliency",
    "scan",
    "score_cam",
    "show",
    "soft_mask",
    "synthesis",
    "synthesize",
    "synthesize_directions",
    "synthesize_units",
    "top_examples",
    "trace_layers",
    "tsne",
    "write_atlas",
]
