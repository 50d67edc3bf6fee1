"""Sample a few images per class into a folder: what a generator bundle's ``inference.json`` runs.

Files are ``<output_dir>/<class>/synthetic_<class>_seed<seed>.png`` (8- or 16-bit grayscale), each with its
provenance (model checksum, class, seed, sampler, steps, guidance) in a PNG text chunk, so a file is clearly
synthetic by its name and by its content. Image ``i`` of every class uses seed ``seed + i``: the same seed and class
always give the same image, whatever the batch size, and the same seed across classes shows what the class changes
in an image drawn from the same noise. Each batch is sampled and written by the one synthesis job
(:meth:`~medicraft_monai.synthesis.job.SynthesisJob.write_batch`); dataset multiplication
(:mod:`medicraft_monai.synthesis.multiply`) runs the whole job, with its own per-class seeds, a manifest and
datalists.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .job import SynthesisJob
from .plan import ImageTask, safe_class_name

__all__ = ["sample_to_folder", "synthetic_png_path"]

logger = logging.getLogger(__name__)


def synthetic_png_path(output_dir: str | PathLike, class_name: str, seed: int) -> Path:
    """Where :func:`sample_to_folder` writes the image of ``class_name`` drawn with ``seed``."""
    safe = safe_class_name(class_name)
    return Path(output_dir) / safe / f"synthetic_{safe}_seed{int(seed)}.png"


def sample_to_folder(
    generator: Any,
    output_dir: str | PathLike,
    classes: Sequence[str | int] | None = None,
    per_class: int = 4,
    seed: int = 0,
    batch_size: int = 8,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    bit_depth: int = 8,
    verbose: bool = True,
) -> list[Path]:
    """Sample ``per_class`` images of each class and write them as PNG files with provenance.

    Args:
        generator: a :class:`~medicraft_monai.synthesis.generator.DiffusionGenerator`.
        output_dir: the output folder (a sub-folder per class is made).
        classes: class names (or indices); default: all the generator's classes.
        per_class: images per class.
        seed: seed of each class's first image; image ``i`` uses ``seed + i``.
        batch_size: images sampled together (memory); it does not change the images.
        num_inference_steps: sampling steps (default: the generator's).
        guidance_scale: classifier-free guidance weight (default: the generator's).
        bit_depth: 8 or 16-bit PNG.
        verbose: show progress.

    Returns:
        the written files, class by class.

    Raises:
        GeneratorError: an unknown class.
        ValueError: a negative ``per_class``, a non-positive ``batch_size`` or a bit depth other than 8 or 16.
    """
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    names = [generator.class_names[generator.class_index(c)] for c in (classes or generator.class_names)]
    tasks = [
        ImageTask(
            name, generator.class_index(name), i, int(seed) + i, synthetic_png_path(".", name, int(seed) + i).as_posix()
        )
        for name in names
        for i in range(int(per_class))
    ]
    out = Path(output_dir)
    job = SynthesisJob(
        generator,
        out,
        steps=num_inference_steps,
        guidance_scale=guidance_scale,
        bit_depth=bit_depth,
        job_seed=seed,
        batch_size=batch_size,
        name="medicraft-sample",
        progress=verbose,
    )
    batches = [tasks[i : i + batch_size] for i in range(0, len(tasks), batch_size)]
    for batch in tqdm(batches, desc="sampling batches", disable=not verbose):
        job.write_batch(batch)
    written = [out / t.relpath for t in tasks]
    logger.info("wrote %d synthetic image(s) of %d class(es) under %s", len(written), len(names), out)
    return written
