"""Class-conditioned diffusion: training forward pass and sampling with classifier-free guidance.

MONAI's :class:`~monai.inferers.DiffusionInferer` passes only ``condition``/``context`` to the UNet. OCT
synthesis steers one model by diagnosis through the UNet's class embedding (``num_class_embeds``), so this
inferer passes ``class_labels`` instead, and implements classifier-free guidance with an extra "null" class
that training drops labels to (see :class:`medicraft_monai.engines.ClassConditionedPrepareBatch`).

Sampling is reproducible per image: image ``i`` is drawn from its own ``torch.Generator`` seeded with
``seeds[i]`` (initial noise and every stochastic step), so an image depends on its seed alone, not on the batch
it was drawn in.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler
from monai.utils import optional_import

from medicraft_monai.inferers.autocast import autocast_context, autocast_dtype

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["ClassConditionedDiffusionInferer", "seeded_noise"]


def seeded_noise(
    seeds: Sequence[int], shape: Sequence[int], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Initial noise of shape ``(len(seeds), *shape)``, each image from its own generator.

    Noise is always drawn on the CPU (identical on every device and for every batch size) and then moved.

    Returns:
        the noise and the per-image generators (to be used for the sampler's stochastic steps).
    """
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    noise = torch.stack([torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in gens])
    return noise.to(device=device, dtype=dtype), gens


class ClassConditionedDiffusionInferer(DiffusionInferer):
    """Diffusion inferer for a UNet with class embeddings, with classifier-free guidance.

    Args:
        scheduler: the training noise scheduler (a MONAI ``DDPMScheduler``, or any ``Scheduler``).
        null_class: the class index that means "no class" (the last embedding, ``num_classes``); needed for
            guidance. ``None`` disables guidance.
        guidance_scale: default guidance weight ``w`` for sampling: ``out = out_null + w (out_class - out_null)``, on
            the model's outputs (noise, clean image or velocity, whatever the scheduler's ``prediction_type``).
            1 samples the conditional model alone (one UNet pass per step); > 1 strengthens the class.
        amp_dtype: autocast dtype used while sampling ("bfloat16", "float16") or ``None`` for full precision.
            bf16 on CPUs with AMX (and on recent GPUs) is several times faster.
        channels_last: run the UNet in channels-last memory format (faster with bf16 on CPU and GPU).
        compile_model: sample with ``torch.compile(network)`` (compiled once per network and kept; the first batch
            pays the compile time, so it helps long runs; see docs/benchmarks.md for when it pays off).
        compile_mode: ``torch.compile`` mode (``None``, "reduce-overhead" for CUDA graphs on a GPU, "max-autotune").
    """

    def __init__(
        self,
        scheduler: Scheduler,
        null_class: int | None = None,
        guidance_scale: float = 1.0,
        amp_dtype: str | torch.dtype | None = None,
        channels_last: bool = False,
        compile_model: bool = False,
        compile_mode: str | None = None,
    ) -> None:
        super().__init__(scheduler)
        self.null_class = null_class
        self.guidance_scale = float(guidance_scale)
        self.amp_dtype = autocast_dtype(amp_dtype)
        self.channels_last = channels_last
        self.compile_model = bool(compile_model)
        self.compile_mode = compile_mode
        self._compiled: tuple[weakref.ref, torch.nn.Module] | None = None

    def compiled(self, diffusion_model: torch.nn.Module) -> torch.nn.Module:
        """The network to run: ``diffusion_model`` itself, or its ``torch.compile`` version with ``compile_model``."""
        if not self.compile_model:
            return diffusion_model
        if self._compiled is None or self._compiled[0]() is not diffusion_model:
            self._compiled = (weakref.ref(diffusion_model), torch.compile(diffusion_model, mode=self.compile_mode))
        return self._compiled[1]

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        diffusion_model: torch.nn.Module,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
        mode: str = "crossattn",
        seg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Training forward pass: noise ``inputs`` to ``timesteps`` and predict the model's target.

        Args:
            inputs: clean images (B, C, H, W).
            diffusion_model: the class-conditioned UNet.
            noise: Gaussian noise of the inputs' shape.
            timesteps: (B,) integer timesteps.
            class_labels: (B,) class indices (the null class where labels were dropped).
            condition, mode, seg: unused; kept for the parent's interface.
        """
        noisy = self.scheduler.add_noise(original_samples=inputs, noise=noise, timesteps=timesteps)
        return diffusion_model(x=noisy, timesteps=timesteps, class_labels=class_labels)

    def predict(
        self,
        diffusion_model: torch.nn.Module,
        x: torch.Tensor,
        t: int,
        class_labels: torch.Tensor,
        guidance_scale: float,
    ) -> torch.Tensor:
        """One guided model output at timestep ``t`` for the batch ``x``, in ``x``'s dtype (float32 under autocast).

        The output is what the model was trained to predict (the scheduler's ``prediction_type``: noise ``epsilon``,
        the clean image ``sample`` or the velocity ``v_prediction``); guidance mixes the conditional and the null
        class outputs linearly, which holds for each of the three.
        """
        guided = self.null_class is not None and guidance_scale != 1.0
        if guided:
            x_in = torch.cat([x, x])
            labels = torch.cat([class_labels, torch.full_like(class_labels, int(self.null_class))])
        else:
            x_in, labels = x, class_labels
        if self.channels_last:
            x_in = x_in.contiguous(memory_format=torch.channels_last)
        timesteps = torch.full((x_in.shape[0],), int(t), device=x.device, dtype=torch.long)
        with autocast_context(x.device, self.amp_dtype):
            out = self.compiled(diffusion_model)(x=x_in, timesteps=timesteps, class_labels=labels).to(x.dtype)
        if guided:
            cond, uncond = out.chunk(2)
            out = uncond + guidance_scale * (cond - uncond)
        return out

    @torch.inference_mode()
    def sample(  # type: ignore[override]
        self,
        input_noise: torch.Tensor,
        diffusion_model: torch.nn.Module,
        class_labels: torch.Tensor | Sequence[int] | None = None,
        scheduler: Scheduler | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generators: Sequence[torch.Generator] | None = None,
        eta: float = 0.0,
        verbose: bool = True,
        **kwargs,
    ) -> torch.Tensor:
        """Sample images of the given classes, starting from ``input_noise``.

        Args:
            input_noise: (B, C, H, W) initial noise (see :func:`seeded_noise`).
            diffusion_model: the class-conditioned UNet (put it in eval mode first).
            class_labels: (B,) class indices.
            scheduler: the sampling scheduler (default: the training one). Its timesteps are set here.
            num_inference_steps: sampling steps (default: the scheduler's ``default_inference_steps`` (20 for
                DPM-Solver++), 50 for DDIM, the training steps for DDPM).
            guidance_scale: classifier-free guidance weight (default: this inferer's).
            generators: one generator per image for the stochastic steps (DDPM, DDIM with ``eta > 0``), so that
                an image depends only on its seed; ``None`` uses the global generator.
            eta: DDIM stochasticity (0 = deterministic DDIM).
            verbose: show a progress bar over the steps.

        Returns:
            the sampled images (B, C, H, W), float32 (float64 for float64 noise), clipped to the scheduler's sample range when it clips.
        """
        if class_labels is None:
            raise ValueError("class_labels are required: one class index per image in the batch")
        sched = scheduler or self.scheduler
        labels = torch.as_tensor(class_labels, device=input_noise.device, dtype=torch.long).reshape(-1)
        if labels.numel() != input_noise.shape[0]:
            raise ValueError(f"{labels.numel()} class labels for a batch of {input_noise.shape[0]} images")
        if generators is not None and len(generators) != input_noise.shape[0]:
            raise ValueError(f"{len(generators)} generators for a batch of {input_noise.shape[0]} images")
        w = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        if num_inference_steps is None:
            default = getattr(sched, "default_inference_steps", 50 if isinstance(sched, DDIMScheduler) else None)
            num_inference_steps = int(default) if default is not None else sched.num_train_timesteps
        sched.set_timesteps(num_inference_steps=num_inference_steps, device=input_noise.device)
        steps = sched.timesteps
        if verbose and has_tqdm:
            steps = tqdm(steps, desc="sampling", leave=False)
        # float64 noise (with a float64 network) samples in float64, which tests use to check the algorithm exactly
        x = input_noise if input_noise.dtype == torch.float64 else input_noise.float()
        for t in steps:
            model_output = self.predict(diffusion_model, x, int(t), labels, w)
            x = self._step(sched, model_output, int(t), x, generators, eta)
        return x

    @staticmethod
    def _step(
        sched: Scheduler,
        model_output: torch.Tensor,
        t: int,
        x: torch.Tensor,
        generators: Sequence[torch.Generator] | None,
        eta: float,
    ) -> torch.Tensor:
        """One scheduler step; with per-image generators each image steps with its own random stream."""
        extra = {"eta": eta} if isinstance(sched, DDIMScheduler) else {}
        stochastic = isinstance(sched, DDPMScheduler) or (isinstance(sched, DDIMScheduler) and eta > 0)
        if generators is None or not stochastic:
            return sched.step(model_output, t, x, **extra)[0]
        # the step is elementwise and cheap next to the UNet pass, so per-image steps cost little
        if x.device.type != "cpu":
            # MONAI draws step noise on the sample's device; draw it on the CPU per image and move it instead
            return torch.cat(
                [
                    _step_on_cpu(sched, model_output[i : i + 1], t, x[i : i + 1], g, extra)
                    for i, g in enumerate(generators)
                ]
            )
        return torch.cat(
            [
                sched.step(model_output[i : i + 1], t, x[i : i + 1], generator=g, **extra)[0]
                for i, g in enumerate(generators)
            ]
        )


def _step_on_cpu(
    sched: Scheduler, model_output: torch.Tensor, t: int, x: torch.Tensor, generator: torch.Generator, extra: dict
) -> torch.Tensor:
    """Run one stochastic step on the CPU (so a CPU generator can be used) and return it on the input's device."""
    out = sched.step(model_output.cpu(), t, x.cpu(), generator=generator, **extra)[0]
    return out.to(x.device)
