"""Synthesis: images made by optimisation. Class models and unit maximisation (`synthesize`),
inversion of a code (`invert`), fooling images and adversarial examples."""

from convlens.synthesis.adversarial import (
    AdversarialAccuracy,
    Fooling,
    adversarial_accuracy,
    fgsm,
    fooling_image,
    iterative_fgsm,
)
from convlens.synthesis.invert import Inversion, feature_distance, invert
from convlens.synthesis.objectives import (
    Objective,
    as_objective,
    channel,
    class_score,
    direction,
    direction_neuron,
    diversity,
    neuron,
)
from convlens.synthesis.optimize import Synthesis, synthesize, total_variation
from convlens.synthesis.presets import PRESETS, Preset
from convlens.synthesis.units import (
    Canvas,
    synthesize_directions,
    synthesize_units,
    unit_canvas,
)

__all__ = [
    "PRESETS",
    "AdversarialAccuracy",
    "Canvas",
    "Fooling",
    "Inversion",
    "Objective",
    "Preset",
    "Synthesis",
    "adversarial_accuracy",
    "as_objective",
    "channel",
    "class_score",
    "direction",
    "direction_neuron",
    "diversity",
    "feature_distance",
    "fgsm",
    "fooling_image",
    "invert",
    "iterative_fgsm",
    "neuron",
    "synthesize",
    "synthesize_directions",
    "synthesize_units",
    "total_variation",
    "unit_canvas",
]
