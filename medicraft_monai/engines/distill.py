"""Distillation of a trained class-conditioned diffusion model into a few-step student (``sampler: distilled``).

The method is trajectory distillation in the spirit of progressive distillation (Salimans and Ho 2022,
arXiv:2202.00512) and TRACT (Berthelot et al. 2023, arXiv:2303.04248), done in a single phase:

1. The teacher (the trained bundle weights) solves the probability-flow ODE from seeded noise with DPM-Solver++ (2M)
   on a ``lambda``-uniform grid of ``n * k + 1`` steps (:meth:`DistilledScheduler.teacher_timesteps`), with
   classifier-free guidance at ``guidance_scale`` when it is not 1 (guidance is folded into the student: the student
   samples without it, one pass per step). The states at the student's ``n`` timesteps and the final image are kept:
   :func:`make_teacher_trajectories` writes them in chunk files, and a rerun continues after the last complete chunk.
2. For each state ``x_i`` at the student's timestep ``t_i`` the target is the output that makes one first-order
   (DDIM) step land exactly on the teacher's next state ``x_{i+1}`` (Salimans and Ho's closed form)::

       x0* = (x_{i+1} - (sigma_{i+1} / sigma_i) x_i) / (alpha_{i+1} - alpha_i sigma_{i+1} / sigma_i)

   converted to the model's prediction type (:class:`TrajectoryDataset`). With v-prediction, a mean squared error on
   ``v`` weighs the error of ``x0*`` by ``SNR + 1``, the weighting Salimans and Ho use.
3. The student starts from the teacher's weights and is trained with MONAI's ``SupervisedTrainer``
   (:class:`DistillationPrepareBatch`; ``configs/distill.json`` of ``oct_ddpm``).

No patient image is read: the student learns from the teacher's samples only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from monai.utils import optional_import

from medicraft_monai.inferers.conditional import seeded_noise
from medicraft_monai.networks.checkpoint import CheckpointError, read_checkpoint
from medicraft_monai.schedulers.distilled import DistilledScheduler
from medicraft_monai.schedulers.dpm_solver import DPMSolverMultistepScheduler
from medicraft_monai.utils import atomic_write

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = [
    "DistillationPrepareBatch",
    "TrajectoryDataset",
    "make_teacher_trajectories",
    "save_weights",
    "target_from_clean",
]

logger = logging.getLogger(__name__)

#: name of the chunk files of :func:`make_teacher_trajectories`
CHUNK_NAME = "chunk_{:05d}.pt"


def _chunk_meta(teacher: Any, num_steps: int, substeps: int, guidance_scale: float, seed: int, total: int) -> dict:
    return {
        "teacher_sha256": str(teacher.checksum),
        "num_steps": int(num_steps),
        "substeps": int(substeps),
        "guidance_scale": float(guidance_scale),
        "seed": int(seed),
        "trajectories": int(total),
        "classes": list(teacher.class_names),
        "noise_shape": [int(s) for s in teacher.noise_shape()],
    }


@torch.inference_mode()
def make_teacher_trajectories(
    teacher: Any,
    student: DistilledScheduler,
    output_dir: str | PathLike,
    per_class: int,
    num_steps: int = 4,
    substeps: int = 4,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> list[Path]:
    """Solve the teacher's ODE from seeded noise and keep its states at the student's timesteps.

    Trajectory ``j`` (``0 <= j < per_class * n_classes``) is of class ``j % n_classes`` and starts from the noise of
    seed ``seed * 1_000_000 + j`` (:func:`~medicraft_monai.inferers.seeded_noise`). Each chunk file holds
    ``batch_size`` trajectories: ``states`` (B, n, C, H, W) at the student's timesteps, ``final`` (B, C, H, W) (the
    teacher's image, in model space), ``labels``, ``seeds``, ``timesteps`` and ``meta``. Complete chunks already in
    ``output_dir`` are kept (an interrupted run resumes), after checking they were made with the same settings.

    Args:
        teacher: a :class:`~medicraft_monai.synthesis.generator.DiffusionGenerator` whose scheduler is DPM-Solver++
            (``dpmpp_2m``, logsnr spacing): the trained weights to distil.
        student: the student's sampler (its grid is where the states are kept).
        output_dir: the folder of the chunk files.
        per_class: trajectories per class.
        num_steps: the student's steps ``n``.
        substeps: teacher steps per student step ``k`` (the teacher runs ``n * k + 1`` steps).
        guidance_scale: the teacher's guidance (default: the generator's); folded into the student.
        seed: seed set of the noise (use another one for validation trajectories).
        batch_size: trajectories per chunk (and per teacher pass).
        progress: show a progress bar.

    Returns:
        the chunk files, in order.

    Raises:
        ValueError: a teacher scheduler that is not logsnr-spaced DPM-Solver++, or chunks in ``output_dir`` made
            with other settings (the message names the file).
    """
    sched = teacher.scheduler
    if type(sched) is not DPMSolverMultistepScheduler or sched.use_karras_sigmas or sched.timestep_spacing != "logsnr":
        raise ValueError("the teacher must sample with DPM-Solver++ ('dpmpp_2m') in its default logsnr spacing")
    if per_class < 1 or batch_size < 1:
        raise ValueError(f"per_class and batch_size must be at least 1, got {per_class} and {batch_size}")
    w = float(teacher.guidance_scale if guidance_scale is None else guidance_scale)
    if (
        not torch.allclose(student.alphas_cumprod, sched.alphas_cumprod)
        or student.prediction_type != sched.prediction_type
    ):
        raise ValueError("the student's scheduler must have the teacher's noise schedule and prediction type")
    grid = student.teacher_timesteps(num_steps, substeps)
    n, k = int(num_steps), int(substeps)
    names = list(teacher.class_names)
    total = per_class * len(names)
    meta = _chunk_meta(teacher, n, k, w, seed, total)
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / CHUNK_NAME.format(b) for b in range(math.ceil(total / batch_size))]
    todo = [b for b, f in enumerate(files) if not _complete_chunk(f, meta)]
    if len(todo) < len(files):
        logger.info("%s: %d of %d chunks already made, resuming", folder, len(files) - len(todo), len(files))
    # one run's grid for every chunk (the solver resets its multistep state at the first timestep of each run)
    sched.set_timesteps(len(grid), device=teacher.device)
    if not torch.equal(sched.timesteps.cpu(), torch.as_tensor(grid)):
        raise ValueError(f"the teacher's {len(grid)}-step grid is not the one the student is distilled on")
    bar = tqdm(total=len(todo) * len(grid), desc="teacher trajectories", disable=not progress) if has_tqdm else None
    for b in todo:
        idx = list(range(b * batch_size, min(total, (b + 1) * batch_size)))
        labels = torch.tensor([j % len(names) for j in idx], device=teacher.device)
        seeds = [seed * 1_000_000 + j for j in idx]
        x, _ = seeded_noise(seeds, teacher.noise_shape(), device=teacher.device)
        states = []
        for j, t in enumerate(sched.timesteps):
            if j % k == 0 and j // k < n:
                states.append(x.float().cpu())
            out = teacher.inferer.predict(teacher.network, x, int(t), labels, w)
            x = sched.step(out, int(t), x)[0]
            if bar is not None:
                bar.update(1)
        record = {
            "states": torch.stack(states, 1),
            "final": x.float().cpu(),
            "labels": labels.cpu(),
            "seeds": torch.tensor(seeds),
            "timesteps": torch.as_tensor(grid[::k][:n]),
            "meta": meta,
        }
        atomic_write(files[b], lambda tmp, r=record: torch.save(r, tmp))
    if bar is not None:
        bar.close()
    return files


def _complete_chunk(path: Path, meta: Mapping[str, Any]) -> bool:
    """Whether ``path`` is a chunk made with ``meta``; a chunk made with other settings is an error."""
    if not path.is_file():
        return False
    try:
        record = read_checkpoint(path, "trajectory chunk")
    except CheckpointError as err:  # atomic_write leaves no half-written chunk, but a damaged one is made again
        logger.warning("%s; making it again", err)
        return False
    if record.get("meta") != dict(meta):
        differing = sorted(k for k in meta if record.get("meta", {}).get(k) != meta[k])
        raise ValueError(
            f"{path}: made with other distillation settings ({', '.join(differing)}); remove {path.parent} or give "
            "another trajectory folder"
        )
    return True


def target_from_clean(
    clean: torch.Tensor, sample: torch.Tensor, alpha: float, sigma: float, prediction_type: str
) -> torch.Tensor:
    """The model output that predicts the clean image ``clean`` from ``sample`` at noise level (alpha, sigma)."""
    if prediction_type == "v_prediction":  # x0 = alpha x - sigma v
        return (alpha * sample - clean) / sigma
    if prediction_type == "epsilon":  # x = alpha x0 + sigma eps
        return (sample - alpha * clean) / sigma
    if prediction_type == "sample":
        return clean
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


class TrajectoryDataset(torch.utils.data.Dataset):
    """The student's training pairs from teacher trajectories: one item per (trajectory, student step).

    Item ``{"image": x_i, "timestep": t_i, "label": class, "target": output}``: the state at the student's ``i``-th
    timestep and the output (in ``scheduler.prediction_type``) whose first-order step lands on the teacher's next
    state, or on the teacher's image after the last step.

    Args:
        files: chunk files of :func:`make_teacher_trajectories`.
        scheduler: the student's :class:`~medicraft_monai.schedulers.DistilledScheduler`.

    Raises:
        ValueError: no files, chunks of different settings, or timesteps that are not the scheduler's grid.
        CheckpointError: an unreadable chunk (the message names it).
    """

    def __init__(self, files: Sequence[str | PathLike], scheduler: DistilledScheduler) -> None:
        if not files:
            raise ValueError("no trajectory chunks given")
        records = [read_checkpoint(f, "trajectory chunk") for f in files]
        metas = {str(r["meta"]) for r in records}
        if len(metas) != 1:
            raise ValueError(f"trajectory chunks of different settings: {sorted(metas)}")
        states = torch.cat([r["states"] for r in records])  # (N, n, C, H, W)
        final = torch.cat([r["final"] for r in records])
        labels = torch.cat([r["labels"] for r in records])
        n = states.shape[1]
        scheduler.set_timesteps(n)
        if not torch.equal(scheduler.timesteps.cpu(), records[0]["timesteps"]):
            raise ValueError(
                f"trajectories at timesteps {records[0]['timesteps'].tolist()}, but the student's {n}-step grid is "
                f"{scheduler.timesteps.tolist()}"
            )
        alpha, sigma = scheduler.noise_levels
        targets = []
        for i in range(n):
            nxt = states[:, i + 1] if i + 1 < n else final
            ratio = sigma[i + 1] / sigma[i]
            clean = (nxt.double() - ratio * states[:, i].double()) / (alpha[i + 1] - alpha[i] * ratio)
            targets.append(
                target_from_clean(clean, states[:, i].double(), alpha[i], sigma[i], scheduler.prediction_type)
            )
        self.images = states.reshape(-1, *states.shape[2:])
        self.targets = torch.stack(targets, 1).float().reshape(-1, *states.shape[2:])
        self.timesteps = scheduler.timesteps.cpu().repeat(len(states))
        self.labels = labels.repeat_interleave(n)
        self.meta = dict(records[0]["meta"])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.images[index],
            "timestep": self.timesteps[index],
            "label": self.labels[index],
            "target": self.targets[index],
        }


class DistillationPrepareBatch:
    """``prepare_batch`` of the student's ``SupervisedTrainer``: the state is the input, the distillation target the
    label, and the timesteps and class labels go to the UNet as keyword arguments (``SimpleInferer`` passes them)."""

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict[str, torch.Tensor]]:
        def to(key: str) -> torch.Tensor:
            return batchdata[key].to(device=device, non_blocking=non_blocking)

        return to("image"), to("target"), (), {"timesteps": to("timestep").long(), "class_labels": to("label").long()}


def save_weights(network: torch.nn.Module, path: str | PathLike, dtype: str | torch.dtype = "float16") -> Path:
    """Write ``network``'s state dict with its floating-point tensors in ``dtype`` (atomically)."""
    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    state = {
        k: (v.detach().to("cpu", dt) if v.is_floating_point() else v.cpu()) for k, v in network.state_dict().items()
    }
    return atomic_write(Path(path), lambda tmp: torch.save(state, tmp))
