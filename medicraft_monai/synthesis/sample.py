"""Sample a few images per class into a folder: what a generator bundle's ``inference.json`` runs.

Files are ``<output_dir>/<class>/synthetic_<class>_seed<seed>.png`` (8- or 16-bit grayscale), each with its
provenance (model checksum, class, seed, sampler, steps, guidance) in a PNG text chunk, so a file is clearly
synthetic by its name and by its content. Image ``i`` of every class uses seed ``seed + i``: the same seed and class
always give the same image, whatever the batch size, and the same seed across classes shows what the class changes
in an image drawn from the same noise. (Dataset multiplication, :mod:`medicraft_monai.synthesis.multiply`, uses
its own per-class seeds and writes a manifest and datalists.)
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medicraft_monai.data.io import write_bscan_png

__all__ = ["sample_to_folder", "synthetic_png_path"]

logger = logging.getLogger(__name__)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(name)).strip("-") or "class"


def synthetic_png_path(output_dir: str | PathLike, class_name: str, seed: int) -> Path:
    """Where :func:`sample_to_folder` writes the image of ``class_name`` drawn with ``seed``."""
    safe = _safe(class_name)
    return Path(output_dir) / safe / f"synthetic_{safe}_seed{int(seed)}.png"


def _to_uint(image01: np.ndarray, bit_depth: int) -> np.ndarray:
    top = (1 << bit_depth) - 1
    return np.round(np.clip(image01, 0.0, 1.0) * top).astype(np.uint8 if bit_depth == 8 else np.uint16)


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
    jobs = [(name, int(seed) + i) for name in names for i in range(int(per_class))]
    out = Path(output_dir)
    steps = num_inference_steps or generator.num_inference_steps
    guidance = generator.guidance_scale if guidance_scale is None else float(guidance_scale)
    written: list[Path] = []
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    for batch in tqdm(batches, desc="sampling batches", disable=not verbose):
        images = generator.generate(
            [c for c, _ in batch],
            [s for _, s in batch],
            num_inference_steps=steps,
            guidance_scale=guidance,
            verbose=verbose,
        )
        for (name, s), image in zip(batch, images):
            path = synthetic_png_path(out, name, s)
            provenance = {**generator.provenance(name, s, steps, guidance), "synthetic": True}
            tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
            write_bscan_png(tmp, _to_uint(image[0], bit_depth), provenance=provenance)
            os.replace(tmp, path)
            written.append(path)
    logger.info("wrote %d synthetic image(s) of %d class(es) under %s", len(written), len(names), out)
    return written
