"""The sampler of a distilled few-step student: first-order steps on a fixed grid that a teacher's solver also visits.

A student is distilled (:mod:`medicraft_monai.engines.distill`) so that one first-order (DDIM) step of the student from
``t_i`` lands where the teacher's DPM-Solver++ (2M) run, ``substeps`` steps later, arrives: the student's timesteps
must be points of the teacher's run. Both grids are evenly spaced in the half log-SNR ``lambda`` (as DPM-Solver++'s
default): the teacher's run of ``n * k + 1`` steps (from ``T - 1`` to timestep 0, then to the clean image) passes
through every ``k``-th point, and those first ``n`` points are the student's ``n`` steps. The student's last step goes
from its ``n``-th point straight to the clean image, so no step is spent at timestep 0, where the teacher's last step
barely changes the image.
"""

from __future__ import annotations

import numpy as np

from medicraft_monai.schedulers.dpm_solver import DPMSolverMultistepScheduler

__all__ = ["DistilledScheduler"]


class DistilledScheduler(DPMSolverMultistepScheduler):
    """First-order steps on the student grid of a distilled few-step model (``sampler: distilled``).

    The update is DDIM's (DPM-Solver++ of order 1) without clipping the predicted clean image: a distilled model
    predicts the "clean image" that makes one step land on the teacher's next state, which may lie outside the data
    range in the middle of the run. The grid of ``n`` steps is the first ``n`` points of a ``lambda``-uniform grid of
    ``n + 1`` points from ``T - 1`` to 0; :meth:`teacher_timesteps` gives the teacher run that visits them.

    Args:
        num_train_timesteps: the number of diffusion steps the teacher was trained with.
        schedule: member of MONAI's ``NoiseSchedules`` (the teacher's).
        prediction_type: what the student predicts ("epsilon", "sample" or "v_prediction"; the teacher's).
        schedule_args: arguments of the schedule function.
    """

    #: the step count of the shipped student
    default_inference_steps: int = 2

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        prediction_type: str = "epsilon",
        **schedule_args,
    ) -> None:
        super().__init__(
            num_train_timesteps,
            schedule,
            solver_order=1,
            timestep_spacing="logsnr",
            clip_sample=False,
            set_alpha_to_one=True,
            lower_order_final=True,
            prediction_type=prediction_type,
            **schedule_args,
        )

    def sampling_timesteps(self, num_inference_steps: int) -> np.ndarray:
        """The student's ``n`` timesteps: the first ``n`` of ``n + 1`` points evenly spaced in ``lambda``."""
        n = int(num_inference_steps)
        if not 1 <= n < self.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in [1, {self.num_train_timesteps - 1}], got {n}")
        return self._logsnr_timesteps(n + 1)[:n]

    def teacher_timesteps(self, num_inference_steps: int, substeps: int) -> np.ndarray:
        """The teacher's DPM-Solver++ timesteps (``n * substeps + 1``, logsnr spacing) whose every ``substeps``-th
        point is a step of the student's ``n``-step grid.

        Raises:
            ValueError: ``substeps`` < 1, or a grid so dense that rounding to training timesteps moved a shared point.
        """
        n, k = int(num_inference_steps), int(substeps)
        if k < 1:
            raise ValueError(f"substeps must be at least 1, got {k}")
        teacher = self._logsnr_timesteps(n * k + 1)
        student = self.sampling_timesteps(n)
        if not np.array_equal(teacher[::k][:n], student):
            raise ValueError(
                f"a teacher run of {n * k + 1} steps does not pass through the {n}-step student grid {student.tolist()} "
                f"(it visits {teacher[::k][:n].tolist()}); use fewer substeps"
            )
        return teacher
