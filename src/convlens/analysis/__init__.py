"""Analyses over whole models and datasets: filters, feature maps and dead units."""

from convlens.analysis.filters import DeadUnits, dead_units, feature_maps, filter_rms
from convlens.models.layers import conv_layers

__all__ = ["DeadUnits", "conv_layers", "dead_units", "feature_maps", "filter_rms"]
