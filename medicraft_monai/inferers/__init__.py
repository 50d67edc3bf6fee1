"""Class-conditioned diffusion inferers (training forward pass and guided sampling), pixel and latent.

They sample with any MONAI scheduler; the sampler registry and DPM-Solver++ live in :mod:`medicraft_monai.schedulers`.
"""

from __future__ import annotations

from .conditional import ClassConditionedDiffusionInferer, seeded_noise
from .latent import AutoencoderReconstructionInferer, LatentClassConditionedInferer, autoencoder_downsampling

__all__ = [
    "AutoencoderReconstructionInferer",
    "ClassConditionedDiffusionInferer",
    "LatentClassConditionedInferer",
    "autoencoder_downsampling",
    "seeded_noise",
]
