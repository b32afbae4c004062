"""Analyses over whole models and datasets: filters, feature maps and dead units."""

from convlens.analysis.filters import DeadUnits, conv_layers, dead_units, feature_maps, filter_rms

__all__ = ["DeadUnits", "conv_layers", "dead_units", "feature_maps", "filter_rms"]
