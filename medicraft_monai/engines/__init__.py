"""Engine pieces for ignite/MONAI workflows: prepare-batch callables, iteration updates, losses, handlers (pixel and
latent diffusion) and the training records written next to the weights (with their checks)."""

from __future__ import annotations

from .distill import DistillationPrepareBatch, TrajectoryDataset, make_teacher_trajectories, save_weights
from .finetune import ENCODER_MODULES, FreezeModulesHandler, ParentGenerator, TimeBudgetHandler
from .handlers import ClassSampleGridHandler
from .latent import (
    AutoencoderKLUpdate,
    ReconstructionGridHandler,
    ReconstructionPrepareBatch,
    load_frozen_autoencoder,
)
from .losses import kl_loss
from .prepare_batch import ClassConditionedPrepareBatch
from .records import (
    DIFFUSION_SETTINGS_FILE,
    LATENT_INFO_FILE,
    DiffusionSettingsWriter,
    GeneratorError,
    LatentInfoWriter,
    TrainingRecordWriter,
    check_diffusion_settings,
    read_latent_info,
)
from .training_handlers import EMAWarmupSync, FixedSeedHandler, ProgressBarHandler

__all__ = [
    "DIFFUSION_SETTINGS_FILE",
    "ENCODER_MODULES",
    "LATENT_INFO_FILE",
    "AutoencoderKLUpdate",
    "ClassConditionedPrepareBatch",
    "ClassSampleGridHandler",
    "DistillationPrepareBatch",
    "DiffusionSettingsWriter",
    "EMAWarmupSync",
    "FixedSeedHandler",
    "FreezeModulesHandler",
    "GeneratorError",
    "LatentInfoWriter",
    "ParentGenerator",
    "ProgressBarHandler",
    "ReconstructionGridHandler",
    "ReconstructionPrepareBatch",
    "TimeBudgetHandler",
    "TrainingRecordWriter",
    "TrajectoryDataset",
    "check_diffusion_settings",
    "kl_loss",
    "load_frozen_autoencoder",
    "make_teacher_trajectories",
    "read_latent_info",
    "save_weights",
]
