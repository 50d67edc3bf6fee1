"""DPM-Solver++ (2M), a few-step diffusion solver written as a MONAI scheduler.

:class:`DPMSolverMultistepScheduler` is DPM-Solver++ (2M) (Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling
of Diffusion Probabilistic Models", 2022, arXiv:2211.01095, Algorithm 2): a second-order multistep solver of the
diffusion ODE in its data-prediction form. It reuses the previous step's prediction of the clean image instead of a
second model call, so it costs one UNet pass per step like DDIM but is second-order accurate in the step size; with
classifier-free guidance the data-prediction form stays stable where noise-prediction solvers overshoot.

It subclasses :class:`monai.networks.schedulers.Scheduler` and keeps MONAI's interface, so the sampling loop of
:class:`~medicraft_monai.inferers.ClassConditionedDiffusionInferer` (and of any MONAI inferer that calls
``set_timesteps`` and then ``step(model_output, timestep, sample)`` for each of ``scheduler.timesteps``) drives it
unchanged. It works with any model trained with a MONAI ``DDPMScheduler`` of the same noise schedule
(``prediction_type`` "epsilon", "sample" or "v_prediction").

Notation: ``x_t = alpha_t x_0 + sigma_t eps`` with ``alpha_t = sqrt(alphas_cumprod[t])``,
``sigma_t = sqrt(1 - alphas_cumprod[t])`` and the half log-SNR ``lambda_t = log(alpha_t / sigma_t)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.networks.schedulers import Scheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType

from medicraft_monai.schedulers.timesteps import TIMESTEP_SPACINGS, spaced_timesteps

__all__ = ["DPMSolverMultistepScheduler"]


class DPMSolverMultistepScheduler(Scheduler):
    """DPM-Solver++ (2M): second-order multistep sampling of the diffusion ODE in data-prediction form.

    Each :meth:`step` turns the model output at timestep ``t_i`` into a prediction of the clean image ``m_i`` and
    moves the sample to the next timestep ``t_{i+1}`` (``h = lambda_{i+1} - lambda_i``)::

        first order (= DDIM):  x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (exp(-h) - 1) m_i
        second order (2M):     same with m_i replaced by  D = m_i + (m_i - m_{i-1}) / (2 r),  r = h_{i-1} / h

    The first step has no previous prediction and is first order; so is the last one when it lands on the clean
    image (sigma 0), where the update is exactly ``m_i``. The previous prediction is kept between calls: drive one
    sampling run at a time (``set_timesteps`` resets the state, as does a step at the first timestep).

    The step is deterministic and elementwise, so a batch steps at once and an image's result does not depend on the
    other images in its batch.

    Args:
        num_train_timesteps: the number of diffusion steps the model was trained with.
        schedule: member of MONAI's ``NoiseSchedules`` (the training scheduler's).
        solver_order: 2 (DPM-Solver++ 2M) or 1 (first order; equal to deterministic DDIM).
        timestep_spacing: "logsnr" (default: evenly spaced in ``lambda`` from ``T - 1`` to 0, as Lu et al.
            recommend; the most accurate on Gaussian data, see docs/samplers.md), or "linspace", "leading",
            "trailing" (evenly spaced timesteps, see :func:`spaced_timesteps`).
        use_karras_sigmas: space the noise levels ``sigma / alpha`` as Karras et al. 2022 (rho = 7) instead
            (overrides ``timestep_spacing``). Noise-level spacings are rounded to training timesteps and kept
            strictly decreasing (the last ones may be pushed up by one or two timesteps).
        clip_sample: clip each predicted clean image to ``[clip_sample_min, clip_sample_max]`` (as MONAI's DDIM).
        set_alpha_to_one: the last step lands on the clean image (``alpha = 1``, ``sigma = 0``) and returns the final
            prediction; ``False`` stops at the noise level of training timestep 0 instead.
        lower_order_final: take the last step first order when sampling with fewer than 15 steps (more stable).
        prediction_type: what the model predicts: "epsilon", "sample" or "v_prediction" (as in training).
        steps_offset: offset of "leading" timesteps.
        clip_sample_min: lower clipping bound.
        clip_sample_max: upper clipping bound.
        schedule_args: arguments of the schedule function (for example ``beta_start``, ``beta_end``).
    """

    #: model evaluations when the caller gives none (5-10x more accurate than DDIM there on Gaussian data; see
    #: docs/samplers.md for the quality curve on a trained model)
    default_inference_steps: int = 20

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        solver_order: int = 2,
        timestep_spacing: str = "logsnr",
        use_karras_sigmas: bool = False,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        lower_order_final: bool = True,
        prediction_type: str = DDPMPredictionType.EPSILON,
        steps_offset: int = 0,
        clip_sample_min: float = -1.0,
        clip_sample_max: float = 1.0,
        **schedule_args,
    ) -> None:
        super().__init__(num_train_timesteps, schedule, **schedule_args)
        if solver_order not in (1, 2):
            raise ValueError(f"solver_order must be 1 or 2, got {solver_order}")
        if prediction_type not in DDPMPredictionType.__members__.values():
            raise ValueError(
                f"prediction_type must be one of {list(DDPMPredictionType.__members__.values())}, got "
                f"{prediction_type!r}"
            )
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unknown timestep spacing {timestep_spacing!r}; choose one of {list(TIMESTEP_SPACINGS)}")
        self.solver_order = int(solver_order)
        self.timestep_spacing = timestep_spacing
        self.use_karras_sigmas = bool(use_karras_sigmas)
        self.clip_sample = bool(clip_sample)
        self.clip_sample_values = (float(clip_sample_min), float(clip_sample_max))
        self.set_alpha_to_one = bool(set_alpha_to_one)
        self.lower_order_final = bool(lower_order_final)
        self.prediction_type = prediction_type
        self.steps_offset = int(steps_offset)
        self.init_noise_sigma = 1.0
        acp = self.alphas_cumprod.double().numpy()
        self._train_alpha = np.sqrt(acp)
        self._train_sigma = np.sqrt(1.0 - acp)
        self.set_timesteps(self.default_inference_steps)

    # ----------------------------------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Set the timesteps of a sampling run (and reset the multistep state).

        Args:
            num_inference_steps: model evaluations (1 to ``num_train_timesteps``).
            device: device of ``self.timesteps``.
        """
        big_t = self.num_train_timesteps
        steps = self.sampling_timesteps(int(num_inference_steps))
        if len(np.unique(steps)) != len(steps) or steps.max() >= big_t:
            raise ValueError(f"{num_inference_steps} steps with {self.timestep_spacing!r} spacing repeat a timestep")
        self.num_inference_steps = len(steps)
        self.timesteps = torch.from_numpy(steps).to(device)
        # (alpha, sigma) at every evaluated timestep plus the end point
        alpha = list(self._train_alpha[steps])
        sigma = list(self._train_sigma[steps])
        if self.set_alpha_to_one:
            alpha.append(1.0)
            sigma.append(0.0)
        else:
            alpha.append(float(self._train_alpha[0]))
            sigma.append(float(self._train_sigma[0]))
        self._alpha = [float(a) for a in alpha]
        self._sigma = [float(s) for s in sigma]
        self._index = {int(t): i for i, t in enumerate(steps)}
        self._reset()

    @property
    def noise_levels(self) -> tuple[list[float], list[float]]:
        """``(alpha, sigma)`` at every timestep of the run set by :meth:`set_timesteps`, plus the end point (the clean
        image: ``(1, 0)`` with ``set_alpha_to_one``)."""
        return list(self._alpha), list(self._sigma)

    def sampling_timesteps(self, num_inference_steps: int) -> np.ndarray:
        """The training timesteps a run of ``num_inference_steps`` evaluates the model at, decreasing (int64)."""
        if self.use_karras_sigmas:
            return self._karras_timesteps(num_inference_steps)
        if self.timestep_spacing == "logsnr":
            return self._logsnr_timesteps(num_inference_steps)
        return spaced_timesteps(num_inference_steps, self.num_train_timesteps, self.timestep_spacing, self.steps_offset)

    def _karras_timesteps(self, n: int, rho: float = 7.0) -> np.ndarray:
        """Timesteps whose noise levels ``sigma / alpha`` follow Karras et al.'s rho-spacing."""
        log_sigma = np.log(self._train_sigma / self._train_alpha)  # increasing in t
        s_min, s_max = math.exp(log_sigma[0]), math.exp(log_sigma[-1])
        ramp = np.linspace(0.0, 1.0, n)
        sigmas = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        return self._to_timesteps(np.interp(np.log(sigmas), log_sigma, np.arange(self.num_train_timesteps)))

    def _logsnr_timesteps(self, n: int) -> np.ndarray:
        """Timesteps evenly spaced in the half log-SNR ``lambda`` between timestep ``T - 1`` and 0."""
        lam = np.log(self._train_alpha / self._train_sigma)  # decreasing in t
        target = np.linspace(lam[-1], lam[0], n)
        return self._to_timesteps(np.interp(target, lam[::-1], np.arange(self.num_train_timesteps)[::-1]))

    def _to_timesteps(self, continuous: np.ndarray) -> np.ndarray:
        """Round decreasing continuous timesteps to training timesteps, strictly decreasing, within [0, T - 1]."""
        n, big_t = len(continuous), self.num_train_timesteps
        if not 1 <= n <= big_t:
            raise ValueError(f"num_inference_steps must be in [1, {big_t}] (the training steps), got {n}")
        steps = np.clip(np.round(continuous), 0, big_t - 1).astype(np.int64)
        for i in range(n - 2, -1, -1):  # the low-noise end is dense: push repeated timesteps up
            steps[i] = max(steps[i], steps[i + 1] + 1)
        steps[0] = min(steps[0], big_t - 1)
        for i in range(1, n):  # and back below T - 1 where that pushed the top out of range
            steps[i] = min(steps[i], steps[i - 1] - 1)
        return steps

    def _reset(self) -> None:
        self._prev_x0: torch.Tensor | None = None
        self._prev_step: int | None = None

    def _lambda(self, i: int) -> float:
        return math.log(self._alpha[i]) - math.log(self._sigma[i]) if self._sigma[i] > 0 else math.inf

    def _predict_x0(self, model_output: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        alpha, sigma = self._alpha[i], self._sigma[i]
        if self.prediction_type == DDPMPredictionType.EPSILON:
            x0 = (sample - sigma * model_output) / alpha
        elif self.prediction_type == DDPMPredictionType.SAMPLE:
            x0 = model_output
        else:  # v_prediction: v = alpha eps - sigma x0
            x0 = alpha * sample - sigma * model_output
        if self.clip_sample:
            x0 = x0.clamp(*self.clip_sample_values)
        return x0

    # ----------------------------------------------------------------------------------------------------------------
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Move ``sample`` from ``timestep`` to the next timestep of the run.

        Args:
            model_output: the model's output at ``timestep`` (noise, sample or velocity: ``prediction_type``).
            timestep: one of ``self.timesteps``.
            sample: the current sample ``x_t``.
            generator: unused (the solver is deterministic); accepted for MONAI's interface.

        Returns:
            the sample at the next timestep (the clean image after the last one) and the predicted clean image.

        Raises:
            ValueError: a timestep that is not one of this run's (call ``set_timesteps`` first).
        """
        t = int(timestep)
        if t not in self._index:
            raise ValueError(f"timestep {t} is not one of this run's timesteps; call set_timesteps first")
        i = self._index[t]
        if i == 0:
            self._reset()
        x0 = self._predict_x0(model_output, sample, i)
        alpha_s, sigma_s, sigma_t = self._alpha[i + 1], self._sigma[i + 1], self._sigma[i]
        n = self.num_inference_steps or 1
        last = i == n - 1
        second = (
            self.solver_order == 2
            and self._prev_x0 is not None
            and self._prev_step == i - 1
            and self._prev_x0.shape == x0.shape
            and sigma_s > 0
            and not (last and self.lower_order_final and n < 15)
        )
        if sigma_s == sigma_t:
            prev = sample
        elif sigma_s == 0.0:
            prev = x0  # the data-prediction update's limit at sigma 0, whatever the order
        else:
            h = self._lambda(i + 1) - self._lambda(i)
            d = x0
            if second:
                assert self._prev_x0 is not None
                r = (self._lambda(i) - self._lambda(i - 1)) / h
                d = x0 + (x0 - self._prev_x0) / (2.0 * r)
            prev = (sigma_s / sigma_t) * sample - (alpha_s * math.expm1(-h)) * d
        self._prev_x0, self._prev_step = x0, i
        return prev, x0
