"""Synthesis: load a generator bundle, plan images, run the one synthesis job, write files, datalists and manifests;
generate in one call (:func:`generate`) and synthetic training data on the fly (:class:`SyntheticDataset`)."""

from __future__ import annotations

from .dataset import SyntheticDataset, synthetic_training_dataset
from .generation import generate, load_generator
from .generator import DiffusionGenerator
from .job import MANIFEST_FIELDS, SynthesisJob, synthetic_datalist_item
from .multiply import multiply
from .plan import ImageTask, Target, image_seed, parse_target, plan_counts, plan_tasks
from .writers import FORMATS, write_synthetic_image

__all__ = [
    "FORMATS",
    "MANIFEST_FIELDS",
    "DiffusionGenerator",
    "ImageTask",
    "SynthesisJob",
    "SyntheticDataset",
    "Target",
    "generate",
    "image_seed",
    "load_generator",
    "multiply",
    "parse_target",
    "plan_counts",
    "plan_tasks",
    "synthetic_datalist_item",
    "synthetic_training_dataset",
    "write_synthetic_image",
]
