"""Engine pieces for ignite/MONAI workflows: prepare-batch callables and handlers (pixel and latent diffusion)."""

from __future__ import annotations

from .handlers import ClassSampleGridHandler, DiffusionSettingsWriter
from .latent import (
    AutoencoderKLUpdate,
    LatentCache,
    LatentInfoWriter,
    ReconstructionGridHandler,
    ReconstructionPrepareBatch,
    SampleLatentd,
    build_latent_cache,
    load_frozen_autoencoder,
)
from .prepare_batch import ClassConditionedPrepareBatch

__all__ = [
    "AutoencoderKLUpdate",
    "ClassConditionedPrepareBatch",
    "ClassSampleGridHandler",
    "DiffusionSettingsWriter",
    "LatentCache",
    "LatentInfoWriter",
    "ReconstructionGridHandler",
    "ReconstructionPrepareBatch",
    "SampleLatentd",
    "build_latent_cache",
    "load_frozen_autoencoder",
]
