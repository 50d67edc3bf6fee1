"""Tolerances derived from the precision of an operation, not from what one CPU happened to print.

The CPU kernels that PyTorch and oneDNN pick differ between machines (AMX, AVX512-BF16, AVX2) and between batch
compositions of the same images, so the same float32 computation rounds differently in the last bits. A sampler
feeds every step's rounding into the next one.
"""

from __future__ import annotations

import torch

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)  # 1.19e-7, one rounding of a value of order 1

# how many float32 roundings one UNet pass + solver update may add up to on an output of order 1 (sums over channels
# and pixels in convolutions, normalisation and attention, then the solver's division by alpha): generous, since the
# tests only need to tell "the same image up to rounding" from "another image" (differences of order 0.1 to 1)
ROUNDINGS_PER_STEP = 100


def sampling_atol(steps: int, guidance_scale: float = 1.0) -> float:
    """Absolute tolerance for two float32 sampling runs of one seed that differ only in batch composition.

    Args:
        steps: sampling steps (each adds its rounding, and later steps carry it on).
        guidance_scale: classifier-free guidance weight ``w``; the guided output ``u + w (c - u)`` scales the
            difference of two passes, so their rounding, by up to ``2 w``.
    """
    return FLOAT32_EPS * ROUNDINGS_PER_STEP * steps * max(1.0, 2.0 * abs(guidance_scale))
