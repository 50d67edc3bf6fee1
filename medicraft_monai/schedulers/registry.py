"""The sampler registry: sampler names (``"ddpm"``, ``"ddim"``, ``"dpmpp_2m"``, ``"distilled"``) and :func:`make_scheduler`, which
bundle configs and the synthesis job call to build a sampling scheduler by name."""

from __future__ import annotations

from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler

from medicraft_monai.schedulers.distilled import DistilledScheduler
from medicraft_monai.schedulers.dpm_solver import DPMSolverMultistepScheduler

__all__ = ["SAMPLERS", "make_scheduler"]

#: sampler name -> scheduler class
SAMPLERS: dict[str, type[Scheduler]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "distilled": DistilledScheduler,
}

_RFLOW_REASON = (
    "sampler 'rflow' is not offered: MONAI's RFlowScheduler integrates a velocity field of a model trained with "
    "rectified-flow targets on its own time axis, whereas medicraft_monai's diffusion bundles train "
    "v-prediction (or epsilon) models on a DDPMScheduler's noise schedule; their probability-flow ODE is what "
    "'ddim' (first order) and 'dpmpp_2m' (second order) solve. See docs/samplers.md"
)


def make_scheduler(
    sampler: str = "ddim", num_train_timesteps: int = 1000, schedule: str = "linear_beta", **kwargs
) -> Scheduler:
    """Create a MONAI noise scheduler by sampler name (``"ddpm"``, ``"ddim"``, ``"dpmpp_2m"`` or ``"distilled"``).

    Args:
        sampler: "ddpm" (ancestral, one step per training timestep), "ddim" (deterministic for ``eta=0``) or
            "dpmpp_2m" (DPM-Solver++ 2M, :class:`~medicraft_monai.schedulers.DPMSolverMultistepScheduler`:
            second order, one UNet pass per step; see docs/samplers.md) or "distilled" (the first-order sampler of a
            distilled few-step student, :class:`~medicraft_monai.schedulers.DistilledScheduler`; only for weights
            distilled for it, see docs/samplers.md).
        num_train_timesteps: the number of diffusion steps the model was trained with.
        schedule: MONAI noise schedule ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine").
        kwargs: passed to the scheduler (for example ``prediction_type``, which must be the one the model was
            trained with, ``clip_sample``, ``beta_start``, ``beta_end``; for "dpmpp_2m"
            also ``timestep_spacing`` and ``use_karras_sigmas``).

    Raises:
        ValueError: an unknown sampler, or "rflow" (which needs a velocity-trained model; the message says why).
    """
    key = str(sampler).lower()
    if key == "rflow":
        raise ValueError(_RFLOW_REASON)
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[key](num_train_timesteps=num_train_timesteps, schedule=schedule, **kwargs)
