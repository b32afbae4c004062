"""Can I trust this map? Sanity checks of attribution methods on the user's own model (the model
randomisation test of Adebayo et al. 2018) and faithfulness scores (deletion and insertion,
Average Drop and Increase in Confidence), with reference maps that know nothing of the model."""

from convlens.trust.faithfulness import (
    Curve,
    SoftMask,
    deletion,
    faithfulness,
    insertion,
    soft_mask,
)
from convlens.trust.randomisation import (
    ORDERS,
    DataRandomisation,
    Randomisation,
    data_randomisation_test,
    layer_blocks,
    randomisable_layers,
    randomisation_test,
)
from convlens.trust.reference import REFERENCES, reference_maps
from convlens.trust.similarity import METRICS, similarity

__all__ = [
    "METRICS",
    "ORDERS",
    "REFERENCES",
    "Curve",
    "DataRandomisation",
    "Randomisation",
    "SoftMask",
    "data_randomisation_test",
    "deletion",
    "faithfulness",
    "insertion",
    "layer_blocks",
    "randomisable_layers",
    "randomisation_test",
    "reference_maps",
    "similarity",
    "soft_mask",
]
