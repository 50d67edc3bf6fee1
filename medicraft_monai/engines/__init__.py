"""Engine pieces for ignite/MONAI workflows: prepare-batch callables, iteration updates, losses and handlers (pixel and
latent diffusion)."""

from __future__ import annotations

from .handlers import ClassSampleGridHandler, DiffusionSettingsWriter
from .latent import (
    AutoencoderKLUpdate,
    LatentInfoWriter,
    ReconstructionGridHandler,
    ReconstructionPrepareBatch,
    load_frozen_autoencoder,
)
from .losses import kl_loss
from .prepare_batch import ClassConditionedPrepareBatch
from .training_handlers import EMAWarmupSync, FixedSeedHandler, ProgressBarHandler

__all__ = [
    "AutoencoderKLUpdate",
    "ClassConditionedPrepareBatch",
    "ClassSampleGridHandler",
    "DiffusionSettingsWriter",
    "EMAWarmupSync",
    "FixedSeedHandler",
    "LatentInfoWriter",
    "ProgressBarHandler",
    "ReconstructionGridHandler",
    "ReconstructionPrepareBatch",
    "kl_loss",
    "load_frozen_autoencoder",
]
