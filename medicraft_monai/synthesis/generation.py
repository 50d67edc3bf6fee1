"""Generate from Python in one call: :func:`generate` samples synthetic B-scans from a generator bundle.

::

    import medicraft_monai

    images = medicraft_monai.generate("oct_ldm", class_name="DME", num_samples=4, seed=0)
    images[0].shape, images[0].meta["seed"], images[0].meta["model_sha256"]   # (1, 64, 128), ..., ...
    medicraft_monai.generate("oct_ldm", class_name="DME", num_samples=4, seed=0, output_dir="synthetic")

The bundle is a shipped bundle's name, a bundle folder or a release archive (``medicraft bundle pack``), resolved
by :func:`~medicraft_monai.bundles.resolve_bundle`. Image ``i`` of class ``c`` is sampled with the seed
``image_seed(seed, c, i)`` and batched exactly as ``medicraft multiply`` batches it (the same
:func:`~medicraft_monai.synthesis.plan.plan_tasks` and :meth:`SynthesisJob.sample_batch`), so ``generate(bundle,
class_name=c, num_samples=n, seed=s)`` gives the images that ``medicraft multiply --target '{"c": n}' --seed s``
writes (with the same ``batch_size``, steps and guidance). Without ``output_dir`` they come back as MONAI
``MetaTensor`` objects whose ``meta`` is the provenance a file would record; with it they are written by the
synthesis job (the multiplication writers: PNG, NIfTI or DICOM marked synthetic, ``manifest.jsonl``, ``job.json``,
resumable) plus ``datalist_synthetic.json``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from monai.data import MetaTensor

from medicraft_monai.data.datalist import write_datalist

from .generator import DiffusionGenerator
from .job import SynthesisJob, check_output_dir, distributed, synthetic_datalist
from .multiply import DATALIST_SYNTHETIC
from .plan import ImageTask, plan_tasks
from .writers import check_format

__all__ = ["generate", "generation_tasks", "load_generator"]

logger = logging.getLogger(__name__)


def load_generator(
    bundle: str | PathLike | DiffusionGenerator,
    device: str | torch.device | None = None,
    ckpt_path: str | PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> DiffusionGenerator:
    """A loaded generator: ``bundle`` itself when it is one, else :meth:`DiffusionGenerator.from_bundle` of the
    bundle's name, folder or release archive."""
    if isinstance(bundle, DiffusionGenerator):
        return bundle
    return DiffusionGenerator.from_bundle(bundle, ckpt_path=ckpt_path, device=device, overrides=overrides)


def generation_tasks(
    generator: DiffusionGenerator,
    class_name: str | int | Sequence[str | int] | None,
    num_samples: int,
    seed: int = 0,
    fmt: str = "png",
) -> list[ImageTask]:
    """The images :func:`generate` makes: ``num_samples`` of each class asked for (all the generator's classes when
    ``class_name`` is None), in the generator's class order, with multiplication's seeds and file names.

    Raises:
        GeneratorError: an unknown class.
        ValueError: a negative ``num_samples``.
    """
    if isinstance(num_samples, bool) or int(num_samples) < 0:
        raise ValueError(f"num_samples must be a whole number >= 0, got {num_samples!r}")
    if class_name is None:
        asked: Sequence[str | int] = generator.class_names
    elif isinstance(class_name, (str, int)):
        asked = [class_name]
    else:
        asked = list(class_name)
    names = {generator.class_names[generator.class_index(c)] for c in asked}
    plan = {c: int(num_samples) for c in generator.class_names if c in names}
    return plan_tasks(plan, generator.class_names, int(seed), fmt)


def _metatensor(image: Any, meta: Mapping[str, Any]) -> MetaTensor:
    """One (C, H, W) image in [0, 1] with its provenance as meta (and a 2-D affine, as the OCT reader gives)."""
    return MetaTensor(torch.from_numpy(image.copy()), affine=torch.eye(3, dtype=torch.float64), meta=dict(meta))


def generate(
    bundle: str | PathLike | DiffusionGenerator,
    class_name: str | int | Sequence[str | int] | None = None,
    num_samples: int = 1,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    output_dir: str | PathLike | None = None,
    *,
    batch_size: int = 16,
    fmt: str = "png",
    bit_depth: int = 8,
    device: str | torch.device | None = None,
    ckpt_path: str | PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> list[MetaTensor] | list[Path]:
    """Sample synthetic B-scans from a generator bundle: as MetaTensors, or as files when ``output_dir`` is given.

    Args:
        bundle: a shipped bundle's name (``"oct_ldm"``), a bundle folder, a release archive (``.zip``), or an
            already loaded :class:`DiffusionGenerator`.
        class_name: the class (name or index), a list of classes, or None for every class of the generator.
        num_samples: images per class.
        seed: the job's seed; image ``i`` of class ``c`` is sampled with ``image_seed(seed, c, i)`` (as in
            ``medicraft multiply``).
        steps: sampling steps (default: the bundle's ``num_inference_steps``).
        guidance_scale: classifier-free guidance weight (default: the bundle's).
        output_dir: write the images there (``images/<class>/synthetic_<class>_<index>_s<seed>.png``, a manifest,
            ``job.json`` and ``datalist_synthetic.json``; a rerun skips what exists) instead of returning them.
        batch_size: images sampled together (at most the number asked for); the same value as ``medicraft
            multiply``'s gives bit-identical images.
        fmt: ``"png"``, ``"nifti"`` or ``"dicom"`` (with ``output_dir``); ``bit_depth``: 8 or 16.
        device: where to sample (default: CUDA when available, else CPU).
        ckpt_path: other weights than the bundle's.
        overrides: bundle config overrides (``{"sampler": "ddim"}``).
        progress: show a progress bar.

    Returns:
        Without ``output_dir``: one ``MetaTensor`` (C, H, W), float32 in [0, 1], per image, classes in the
        generator's order and images in index order; its ``meta`` holds the provenance (bundle, model checksum,
        class, seed, sampler, steps, guidance, ``synthetic``) plus ``label`` (the generator's class index) and
        ``filename_or_obj`` (the file name multiplication gives the image). With ``output_dir``: the written files,
        in the same order.

    Raises:
        GeneratorError: a missing bundle or weights, an unknown class.
        ValueError: a bad ``num_samples``, ``batch_size``, format or bit depth.
        OCTDataError: an ``output_dir`` that cannot be written or holds another job's images.
    """
    fmt, bit_depth = check_format(fmt, bit_depth)
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if output_dir is not None:
        check_output_dir(output_dir, create=False)  # made only once the bundle and the classes are checked
    # torchrun shards the files of a job across processes; images in memory are made by the calling process alone
    with distributed(device) if output_dir is not None else contextlib.nullcontext():
        generator = load_generator(bundle, device=device, ckpt_path=ckpt_path, overrides=overrides)
        tasks = generation_tasks(generator, class_name, num_samples, seed, fmt)
        job = SynthesisJob(
            generator,
            Path(output_dir if output_dir is not None else "."),  # in memory the job only samples: nothing is written
            steps=steps,
            guidance_scale=guidance_scale,
            fmt=fmt,
            bit_depth=bit_depth,
            job_seed=seed,
            batch_size=min(int(batch_size), max(1, len(tasks))),
            progress=progress,
        )
        if output_dir is None:
            return _in_memory(job, tasks)
        out = Path(output_dir)
        check_output_dir(out)
        job.check_job({"class_names": generator.class_names})
        job.run(tasks)
        if idist.get_rank() == 0:
            _write_datalist(job, tasks)
        idist.barrier()
    return [out / t.relpath for t in tasks]


def _in_memory(job: SynthesisJob, tasks: Sequence[ImageTask]) -> list[MetaTensor]:
    from tqdm import tqdm

    images: list[MetaTensor] = []
    with tqdm(total=len(tasks), desc="medicraft-generate", unit="img", disable=not job.progress) as bar:
        for start in range(0, len(tasks), job.batch_size):
            batch = tasks[start : start + job.batch_size]
            for task, image in zip(batch, job.sample_batch(batch)):
                meta = {**job.provenance(task), "label": task.label, "filename_or_obj": Path(task.relpath).name}
                images.append(_metatensor(image, meta))
            bar.update(len(batch))
    return images


def _write_datalist(job: SynthesisJob, tasks: Sequence[ImageTask]) -> None:
    """The manifest (:meth:`SynthesisJob.finalize`) and ``datalist_synthetic.json`` of a finished job."""
    records = job.finalize(tasks)
    items = [job.datalist_item(t, rec) for t, rec in zip(tasks, records)]
    info = job.summary(len(items))
    labels = {"labels": {str(i): name for i, name in enumerate(job.generator.class_names)}}
    description = f"{len(items)} synthetic images made by medicraft_monai generate from {info['bundle']}"
    write_datalist(
        job.output_dir / DATALIST_SYNTHETIC, synthetic_datalist(items, "synthetic", description, info, labels)
    )
    logger.info("generate: wrote %d synthetic images to %s", len(items), job.output_dir)
