"""Class-conditioned diffusion inferers (training forward pass and guided sampling), pixel and latent, and the
few-step solvers they sample with (DDIM, DDPM and DPM-Solver++ 2M through :func:`make_scheduler`)."""

from __future__ import annotations

from .conditional import SAMPLERS, ClassConditionedDiffusionInferer, make_scheduler, seeded_noise
from .latent import AutoencoderReconstructionInferer, LatentClassConditionedInferer, autoencoder_downsampling
from .solvers import TIMESTEP_SPACINGS, DPMSolverMultistepScheduler, spaced_timesteps

__all__ = [
    "SAMPLERS",
    "TIMESTEP_SPACINGS",
    "AutoencoderReconstructionInferer",
    "ClassConditionedDiffusionInferer",
    "DPMSolverMultistepScheduler",
    "LatentClassConditionedInferer",
    "autoencoder_downsampling",
    "make_scheduler",
    "seeded_noise",
    "spaced_timesteps",
]
