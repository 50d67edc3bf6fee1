"""Network helpers beside MONAI's networks: the one checkpoint loader and the one loader of a bundle's network."""

from __future__ import annotations

from medicraft_monai.networks.bundle import (
    BundleNetwork,
    bundle_parser,
    bundle_preprocessing,
    configured_class_names,
    load_bundle_network,
)
from medicraft_monai.networks.checkpoint import CheckpointError, load_state_dict, load_weights, read_checkpoint

__all__ = [
    "BundleNetwork",
    "CheckpointError",
    "bundle_parser",
    "bundle_preprocessing",
    "configured_class_names",
    "load_bundle_network",
    "load_state_dict",
    "load_weights",
    "read_checkpoint",
]
