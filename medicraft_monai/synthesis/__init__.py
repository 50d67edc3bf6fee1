"""Dataset multiplication: load a generator bundle, plan counts, sample, write files, datalists and manifests."""

from __future__ import annotations

from .generator import DiffusionGenerator, GeneratorError, file_sha256
from .multiply import ImageTask, image_seed, multiply, plan_tasks
from .plan import Target, parse_target, plan_counts
from .writers import FORMATS, write_synthetic_image

__all__ = [
    "FORMATS",
    "DiffusionGenerator",
    "GeneratorError",
    "ImageTask",
    "Target",
    "file_sha256",
    "image_seed",
    "multiply",
    "parse_target",
    "plan_counts",
    "plan_tasks",
    "write_synthetic_image",
]
