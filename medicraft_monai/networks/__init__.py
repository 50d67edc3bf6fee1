"""Network helpers beside MONAI's networks: the one checkpoint loader (and the newest training checkpoint), the one
loader of a bundle's network, the checks of a bundle's network against its metadata, and the DenseNet trunk of the
fixed OCT feature extractor (:class:`DenseNetFeatures`)."""

from __future__ import annotations

from medicraft_monai.networks.bundle import (
    BundleNetwork,
    bundle_parser,
    bundle_preprocessing,
    configured_class_names,
    load_bundle_network,
)
from medicraft_monai.networks.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_state_dict,
    load_weights,
    read_checkpoint,
)
from medicraft_monai.networks.nets import DenseNetFeatures
from medicraft_monai.networks.verification import (
    BundleCheck,
    example_network_inputs,
    format_checks,
    randomise_zero_weights,
    verify_bundle,
    verify_bundle_network,
)

__all__ = [
    "BundleCheck",
    "BundleNetwork",
    "CheckpointError",
    "DenseNetFeatures",
    "bundle_parser",
    "bundle_preprocessing",
    "configured_class_names",
    "example_network_inputs",
    "format_checks",
    "latest_checkpoint",
    "load_bundle_network",
    "load_state_dict",
    "load_weights",
    "randomise_zero_weights",
    "read_checkpoint",
    "verify_bundle",
    "verify_bundle_network",
]
