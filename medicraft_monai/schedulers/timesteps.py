"""Timestep spacings of few-step samplers: which training timesteps a sampler evaluates the model at."""

from __future__ import annotations

import numpy as np

__all__ = ["TIMESTEP_SPACINGS", "spaced_timesteps"]

#: the timestep spacings :func:`spaced_timesteps` knows
TIMESTEP_SPACINGS = ("logsnr", "linspace", "leading", "trailing")


def spaced_timesteps(
    num_inference_steps: int, num_train_timesteps: int, spacing: str = "linspace", steps_offset: int = 0
) -> np.ndarray:
    """The training timesteps a sampler evaluates the model at, in decreasing order (int64), by their spacing.

    The solver steps from each to the next and from the last to the clean image (see
    :class:`~medicraft_monai.schedulers.DPMSolverMultistepScheduler`'s ``set_alpha_to_one``). "logsnr" spacing depends on the noise schedule and
    is made by the scheduler itself.

    Args:
        num_inference_steps: model evaluations ``N`` (1 to ``num_train_timesteps``).
        num_train_timesteps: the training steps ``T``.
        spacing: "linspace" (``round(linspace(T - 1, 0, N))``: the grid of MONAI's ``DDIMScheduler``, from ``T - 1``
            to 0), "leading" (``k * (T // N) + steps_offset`` for ``k = N - 1 .. 0``: as DDIM in Stable Diffusion;
            starts below ``T - 1``) or "trailing" (``round(T - k T / N) - 1`` for ``k = 0 .. N - 1``: starts at
            ``T - 1`` and stops at ``T / N - 1``); see Lin et al. 2023, "Common Diffusion Noise Schedules and Sample
            Steps are Flawed", table 2.
        steps_offset: added to "leading" timesteps.

    Raises:
        ValueError: an unknown spacing or a step count out of range.
    """
    n, big_t = int(num_inference_steps), int(num_train_timesteps)
    if not 1 <= n <= big_t:
        raise ValueError(f"num_inference_steps must be in [1, {big_t}] (the training steps), got {n}")
    if spacing == "linspace":
        steps = np.linspace(big_t - 1, 0, n).round()
    elif spacing == "leading":
        if not 0 <= steps_offset < big_t:
            raise ValueError(f"steps_offset must be in [0, {big_t}), got {steps_offset}")
        steps = np.minimum((np.arange(n) * (big_t // n))[::-1] + steps_offset, big_t - 1)
    elif spacing == "trailing":
        steps = np.round(np.arange(big_t, 0, -big_t / n))[:n] - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {list(TIMESTEP_SPACINGS)}")
    return np.ascontiguousarray(steps).astype(np.int64)
