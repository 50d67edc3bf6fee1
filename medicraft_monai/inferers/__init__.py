"""Class-conditioned diffusion inferers (training forward pass and guided sampling)."""

from __future__ import annotations

from .conditional import SAMPLERS, ClassConditionedDiffusionInferer, make_scheduler, seeded_noise

__all__ = ["SAMPLERS", "ClassConditionedDiffusionInferer", "make_scheduler", "seeded_noise"]
