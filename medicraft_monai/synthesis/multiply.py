"""Dataset multiplication: sample the synthetic images a target asks for and write them, a manifest and datalists.

``multiply(datalist, output_dir, bundle_root, target="balance")`` plans how many images each class needs
(:func:`~medicraft_monai.synthesis.plan.plan_counts`) and runs the one synthesis job
(:class:`~medicraft_monai.synthesis.job.SynthesisJob`) on a generator bundle
(:class:`~medicraft_monai.synthesis.generator.DiffusionGenerator`). Under ``output_dir``::

    images/<class>/synthetic_<class>_<index>_s<seed>.png   one file per image (or .nii.gz / .dcm)
    manifest.jsonl, manifest.csv                           one record per file: how it was made
    datalist_synthetic.json                                the synthetic images alone (training split)
    datalist_real_synthetic.json                           the real datalist plus the synthetic training images
    counts.txt                                             count tables before and after
    job.json                                               what identifies the job (for safe resuming)
    .manifest_parts/part-w<world>-r<rank>.jsonl            the per-process journals the manifest is merged from

Image ``index`` of class ``c`` always gets the seed ``image_seed(seed, c, index)``, so the same job always yields
the same images, a larger target only adds images, and a rerun after a crash skips what exists (see
:mod:`~medicraft_monai.synthesis.job`). Sampling streams batch by batch, so memory does not grow with the number of
images.

Launched with ``torchrun --nproc_per_node=N -m medicraft_monai.synthesis.multiply ...`` the same job shards
across processes (``ignite.distributed``): rank ``r`` of ``N`` takes the planned images ``r, r + N, r + 2N, ...``,
writes its own files and journal, and after a barrier rank 0 merges the journals into one manifest and writes the
datalists.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch

from medicraft_monai.data.datalist import check_splits, count_table, datalist_class_names, load_datalist, write_datalist
from medicraft_monai.utils import file_sha256, write_text_atomic

from .generator import DiffusionGenerator
from .job import MANIFEST_CSV, MANIFEST_JSONL, SynthesisJob, check_output_dir, distributed, synthetic_datalist
from .plan import ImageTask, parse_target, plan_counts, plan_tasks, real_counts
from .writers import check_format

__all__ = ["main", "multiply"]

logger = logging.getLogger(__name__)

DATALIST_SYNTHETIC = "datalist_synthetic.json"
DATALIST_COMBINED = "datalist_real_synthetic.json"
COUNTS_TXT = "counts.txt"
_SHAREABLE_KEYS = ("labels", "num_classes", "source_kind", "modality", "tensorImageSize")
"""The real datalist's keys kept next to the synthetic images when source names are stripped (no name, no
description, nothing a user added)."""


# --------------------------------------------------------------------------------------------------------------------
# finalising: manifest, datalists, count tables (rank 0)
# --------------------------------------------------------------------------------------------------------------------
def _finalize(
    job: SynthesisJob,
    tasks: Sequence[ImageTask],
    real: Mapping[str, Any],
    datalist_path: Path,
    *,
    plan: Mapping[str, int],
    target: str,
    split: str,
    strip_source_names: bool = False,
) -> None:
    records = job.finalize(tasks)
    items = [job.datalist_item(t, rec) for t, rec in zip(tasks, records)]
    out = job.output_dir
    info = {
        **job.summary(len(items)),
        "planned": dict(plan),
        "target": target,
        "counted_split": split,
        # a path relative to the synthetic datalist (an absolute one names the clinic's folders) and a checksum
        "real_datalist": Path(os.path.relpath(datalist_path.resolve(), out.resolve())).as_posix(),
        "real_datalist_sha256": file_sha256(datalist_path),
    }
    base = {k: v for k, v in real.items() if k not in ("training", "validation", "test", "excluded", "duplicates")}
    name = str(real.get("name") or datalist_path.stem)
    description = f"{real.get('description', name)}; plus {len(items)} synthetic training images ({target})"
    if strip_source_names:  # nothing taken from the source's names goes next to the synthetic images
        del info["real_datalist"]
        base = {k: v for k, v in base.items() if k in _SHAREABLE_KEYS}
        real = {k: v for k, v in real.items() if k in _SHAREABLE_KEYS or k in ("training", "validation", "test")}
        name = ""
        description = f"the real datalist (sha256 {info['real_datalist_sha256']}) plus {len(items)} synthetic images"
    synthetic = synthetic_datalist(
        items,
        f"{name}-synthetic" if name else "synthetic",
        f"synthetic images only ({target}), made by medicraft_monai multiply",
        info,
        base,
    )
    combined = {
        **dict(real),
        "name": f"{name or 'real'}+synthetic",
        "description": description,
        "training": [*(real.get("training") or []), *items],
        "numTraining": len(real.get("training") or []) + len(items),
        "synthetic": info,
    }
    check_splits(combined, hash_files=False)
    write_datalist(out / DATALIST_SYNTHETIC, synthetic)
    write_datalist(out / DATALIST_COMBINED, combined)

    before, after = count_table(real), count_table(combined)
    plan_lines = "\n".join(f"  {c}: +{n}" for c, n in plan.items())
    text = (
        f"medicraft multiply: target {target}, counted on the {split!r} split\n"
        f"synthetic images added to training:\n{plan_lines}\n\n"
        f"before (real datalist {'sha256 ' + info['real_datalist_sha256'] if strip_source_names else datalist_path}):"
        f"\n{before}\n\n"
        f"after (real + synthetic, {DATALIST_COMBINED if strip_source_names else out / DATALIST_COMBINED}):\n{after}\n"
    )
    write_text_atomic(out / COUNTS_TXT, text)
    if job.progress:
        print(text, flush=True)
    logger.info("multiply: wrote %d synthetic images to %s", len(items), out)


# --------------------------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------------------------
def multiply(
    datalist: str | PathLike,
    output_dir: str | PathLike,
    bundle_root: str | PathLike | None = None,
    target: str | float | int | Mapping[str, int] = "balance",
    split: str = "training",
    fmt: str = "png",
    bit_depth: int = 8,
    batch_size: int = 16,
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    ckpt_path: str | PathLike | None = None,
    config_file: str | Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    generator: DiffusionGenerator | None = None,
    strip_source_names: bool = False,
) -> dict[str, Any]:
    """Multiply a real data set with a class-conditioned generator: sample, write files, manifest and datalists.

    Everything is checked before any image is sampled: the datalist, the target against its classes and the
    generator's, the output folder, the bundle and its checkpoint, and (on a rerun) that the output folder holds
    the same job. A rerun of an interrupted job skips the images on disk and finishes it; under ``torchrun`` the
    job shards across the processes.

    Args:
        datalist: the real datalist JSON (``medicraft datalist`` / :func:`~medicraft_monai.data.build_datalist`).
        output_dir: folder for the images, manifest, datalists and count tables (created).
        bundle_root: the generator bundle (with ``configs/inference.json`` and trained weights); not needed when
            ``generator`` is given.
        target: ``"balance"`` (every class up to the largest class), ``"multiply:N"`` or the number ``N`` (every
            class to N times its count, N >= 1, may be a float), or images to add per class as a mapping or JSON
            text (``{"melanoma": 200}``).
        split: the split whose real images are counted (synthetic images always go to the training split).
        fmt: "png" (default), "nifti" (``.nii.gz``) or "dicom" (single-frame Ophthalmic Tomography, marked
            synthetic: ImageType DERIVED\\SECONDARY, series description "SYNTHETIC ...", no patient identity).
        bit_depth: 8 (default) or 16 bits per pixel.
        batch_size: images sampled together (at most the number planned). Every batch has this shape (a short
            last batch is padded), so a resumed job computes each image exactly as an uninterrupted one would.
        seed: the job's seed; image ``i`` of class ``c`` is sampled with ``image_seed(seed, c, i)``.
        num_inference_steps: sampling steps (default: the bundle's ``num_inference_steps``).
        guidance_scale: classifier-free guidance weight (default: the bundle's ``guidance_scale``).
        ckpt_path: weights to load (default: the bundle's ``ckpt_path``).
        config_file: the bundle's inference config(s), relative to ``bundle_root`` (default
            ``configs/inference.json``).
        overrides: bundle config overrides, e.g. ``{"sampler": "ddpm"}`` for a bundle whose sampling scheduler
            follows its ``sampler`` key, or ``{"image_size": [256, 512]}``.
        device: where to sample (default: CUDA when available, else CPU; under torchrun ``cuda:LOCAL_RANK``).
        progress: show a progress bar and print the count tables.
        generator: an already loaded :class:`DiffusionGenerator` (instead of ``bundle_root``).
        strip_source_names: write nothing taken from the source's names next to the synthetic images: the
            datalists get generic names and descriptions and no path of the real datalist (its sha256 only), and
            ``job.json`` and ``counts.txt`` name no folder. ``datalist_real_synthetic.json`` still lists the real
            images (it must, to be used), so it stays with the real data.

    Returns:
        ``{"output_dir", "planned": {class: n}, "counts_before": {class: n}, "total", "generated", "skipped",
        "recovered", "world_size", "manifest", "manifest_csv", "datalist_synthetic", "datalist_combined",
        "counts"}`` (paths as text; ``generated``/``skipped``/``recovered`` summed over all processes).

    Raises:
        ValueError: unknown format, bad bit depth or batch size, or a bad target (factor < 1, negative count).
        OCTDataError: a missing or invalid datalist, an output folder that cannot be written or that holds
            another job's images; :class:`~medicraft_monai.data.UnknownLabelError` for an unknown class name.
        GeneratorError: a missing bundle or checkpoint, or a checkpoint that does not fit the network.
    """
    fmt, bit_depth = check_format(fmt, bit_depth)
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    tgt = parse_target(target)
    datalist_path = Path(datalist)
    real = load_datalist(datalist_path)
    class_names = datalist_class_names(real)
    plan_counts(real, tgt, split=split)  # unknown class names and empty splits fail before the model loads
    out = Path(output_dir)
    check_output_dir(out, create=False)  # made only once the bundle, its checkpoint and its classes are checked

    with distributed(device):
        if generator is None:
            if bundle_root is None:
                raise ValueError("give bundle_root (a generator bundle) or generator")
            if device is None and idist.get_world_size() > 1 and torch.cuda.is_available():
                device = f"cuda:{idist.get_local_rank()}"
            generator = DiffusionGenerator.from_bundle(
                Path(bundle_root).resolve(),
                ckpt_path=ckpt_path,
                config_file=config_file,
                device=device,
                overrides=overrides,
            )
        plan = plan_counts(real, tgt, split=split, class_names=generator.class_names)
        tasks = plan_tasks(plan, class_names, seed, fmt)
        check_output_dir(out)
        job = SynthesisJob(
            generator,
            out,
            steps=num_inference_steps,
            guidance_scale=guidance_scale,
            fmt=fmt,
            bit_depth=bit_depth,
            job_seed=seed,
            batch_size=min(int(batch_size), max(1, len(tasks))),
            progress=progress,
        )
        job_extra: dict[str, Any] = {"class_names": generator.class_names}
        if strip_source_names:  # the bundle's folder name, not its absolute path
            job_extra["bundle_root"] = Path(generator.bundle_root).resolve().name
        job.check_job(job_extra)
        stats = job.run(tasks)
        if idist.get_rank() == 0:
            _finalize(
                job,
                tasks,
                real,
                datalist_path,
                plan=plan,
                target=tgt.describe(),
                split=split,
                strip_source_names=bool(strip_source_names),
            )
        idist.barrier()
    return {
        "output_dir": str(out),
        "planned": dict(plan),
        "counts_before": real_counts(real, split),
        "total": len(tasks),
        **stats,
        "manifest": str(out / MANIFEST_JSONL),
        "manifest_csv": str(out / MANIFEST_CSV),
        "datalist_synthetic": str(out / DATALIST_SYNTHETIC),
        "datalist_combined": str(out / DATALIST_COMBINED),
        "counts": str(out / COUNTS_TXT),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry (``python -m medicraft_monai.synthesis.multiply --datalist ... --output_dir ...``).

    Takes :func:`multiply`'s arguments as ``--name value``; works under ``torchrun``. Prints the summary as JSON
    (rank 0 only).
    """
    import fire

    with distributed():  # one process group for the whole command: rank 0 alone prints the summary
        fire.Fire(
            multiply,
            command=None if argv is None else list(argv),
            name="multiply",
            serialize=lambda result: json.dumps(result, indent=2) if idist.get_rank() == 0 else None,
        )


if __name__ == "__main__":
    main()
