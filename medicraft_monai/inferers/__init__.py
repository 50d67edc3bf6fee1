"""Class-conditioned diffusion inferers (training forward pass and guided sampling), pixel and latent, and mixed
precision (:mod:`.autocast`: the one autocast context, :func:`bf16_is_fast`, :class:`AutocastInferer`).

They sample with any MONAI scheduler; the sampler registry and DPM-Solver++ live in :mod:`medicraft_monai.schedulers`.
"""

from __future__ import annotations

from .autocast import AutocastInferer, autocast_context, autocast_dtype, bf16_is_fast
from .conditional import ClassConditionedDiffusionInferer, seeded_noise
from .latent import AutoencoderReconstructionInferer, LatentClassConditionedInferer, autoencoder_downsampling

__all__ = [
    "AutocastInferer",
    "AutoencoderReconstructionInferer",
    "ClassConditionedDiffusionInferer",
    "LatentClassConditionedInferer",
    "autocast_context",
    "autocast_dtype",
    "autoencoder_downsampling",
    "bf16_is_fast",
    "seeded_noise",
]
