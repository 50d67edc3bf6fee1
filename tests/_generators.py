"""A small trained generator bundle for the tests of generate, the synthetic dataset and the registry.

oct_ddpm is trained one tiny epoch on real OCT2017 B-scans (the tiny network and training settings of
``test_oct_ddpm.py``, run through ``monai.bundle.ConfigWorkflow`` as ``test_zoo_smoke.py`` runs it, about three
seconds) and exported with ``medicraft bundle export``'s :func:`export_bundle` into a self-contained bundle folder
(configs holding the tiny settings, weights, ``diffusion.json``, metadata): what a user hands to ``generate``.
"""

from __future__ import annotations

from pathlib import Path

import test_oct_ddpm as ddpm
from test_zoo_smoke import workflow

from medicraft_monai.networks.release import export_bundle

REPO = Path(__file__).resolve().parents[1]
CLASSES = ddpm.CLASSES
IMAGE_SIZE = ddpm.TINY_NET["image_size"]


def train_tiny_ddpm(root: Path, datalist: Path) -> Path:
    """oct_ddpm trained one tiny epoch on ``datalist`` with the tiny network overrides (as the demo trains it) under
    ``root``; its weights (``root/model/model.pt``, ``diffusion.json`` beside them)."""
    workflow(
        "oct_ddpm",
        "train.json",
        "train",
        root,
        datalist=str(datalist),
        **ddpm.TINY_NET,
        **ddpm.TINY_TRAIN,
        max_epochs=1,
        ckpt_dir=str(root / "model"),
    )
    return root / "model" / "model.pt"


def tiny_generator_bundle(out: Path, datalist: Path, version: str = "1.0.0") -> Path:
    """oct_ddpm trained one tiny epoch on ``datalist`` and exported to the bundle folder ``out``."""
    weights = train_tiny_ddpm(out.parent / f"{out.name}_training", datalist)
    export_bundle(REPO / "bundles" / "oct_ddpm", weights, out, ddpm.TINY_NET, version=version)
    return out
