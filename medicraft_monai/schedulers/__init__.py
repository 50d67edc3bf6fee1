"""Samplers beside MONAI's schedulers (as ``monai.networks.schedulers`` stands apart from ``monai.inferers``).

- :mod:`.dpm_solver`: :class:`DPMSolverMultistepScheduler` (DPM-Solver++ 2M, a MONAI ``Scheduler``);
- :mod:`.distilled`: :class:`DistilledScheduler` (the first-order sampler of a distilled few-step student and the
  teacher grid it is distilled on);
- :mod:`.timesteps`: :func:`spaced_timesteps` and :data:`TIMESTEP_SPACINGS` (which training timesteps a few-step
  sampler evaluates);
- :mod:`.registry`: :data:`SAMPLERS` (sampler name -> scheduler class) and :func:`make_scheduler`.

The inferers (:mod:`medicraft_monai.inferers`) drive these schedulers; nothing here imports an inferer.
"""

from __future__ import annotations

from .distilled import DistilledScheduler
from .dpm_solver import DPMSolverMultistepScheduler
from .registry import SAMPLERS, make_scheduler
from .timesteps import TIMESTEP_SPACINGS, spaced_timesteps

__all__ = [
    "SAMPLERS",
    "TIMESTEP_SPACINGS",
    "DistilledScheduler",
    "DPMSolverMultistepScheduler",
    "make_scheduler",
    "spaced_timesteps",
]
