"""Network helpers beside MONAI's networks: the one checkpoint loader."""

from __future__ import annotations

from medicraft_monai.networks.checkpoint import CheckpointError, load_state_dict, load_weights, read_checkpoint

__all__ = ["CheckpointError", "load_state_dict", "load_weights", "read_checkpoint"]
