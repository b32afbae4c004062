"""Analyses over whole models and datasets: filters, feature maps and dead units."""

from convlens.analysis.filters import (
    DeadUnits,
    FeatureMaps,
    Filters,
    dead_units,
    feature_maps,
    filter_rms,
    filters,
)
from convlens.models.layers import conv_layers

__all__ = [
    "DeadUnits",
    "FeatureMaps",
    "Filters",
    "conv_layers",
    "dead_units",
    "feature_maps",
    "filter_rms",
    "filters",
]
