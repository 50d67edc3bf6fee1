"""Fine-tuning the generator on real plus expert-accepted images (used by the app's ``finetune`` train task).

The generator bundle's own fine-tuning route runs unchanged (``python -m monai.bundle run`` with
``configs/common.json`` + ``configs/train.json`` + ``configs/finetune.json``, as a user runs it): the weights in
use are the parent (``parent_ckpt_path``, loaded by :class:`medicraft_monai.engines.ParentGenerator`, so the new
``diffusion.json`` records their checksum), the run's folder receives the new weights (``ckpt_dir``), and
:func:`build_finetune_datalist` gives the training images (``datalist``): the real ones plus the accepted synthetic
ones, labelled with the generator's own classes (every class-embedding row is kept).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medicraft_monai.bundles import config_files
from medicraft_monai.data.datalist import SPLITS, check_splits, load_datalist, write_datalist
from medicraft_monai.data.errors import OCTDataError, UnknownLabelError
from medicraft_monai.data.keys import OCTKeys

__all__ = ["FINETUNE_CONFIGS", "build_finetune_datalist", "finetune_command"]

#: the generator bundle's configs a fine-tuning run merges (``configs/common.json`` comes first)
FINETUNE_CONFIGS: tuple[str, ...] = ("train.json", "finetune.json")


def finetune_command(
    bundle_root: str | os.PathLike,
    parent_ckpt_path: str | os.PathLike,
    ckpt_dir: str | os.PathLike,
    overrides: Mapping[str, Any],
) -> list[str]:
    """The ``python -m monai.bundle run`` command that fine-tunes ``parent_ckpt_path`` into ``ckpt_dir``.

    Args:
        bundle_root: the generator bundle.
        parent_ckpt_path: the weights to start from (a ``diffusion.json`` must be beside them).
        ckpt_dir: where the new weights go (not the parent's folder).
        overrides: further config keys (``datalist``, ``log_dir``, ``max_epochs``...); a string is passed as it is,
            any other value as its ``repr`` (read back as a Python literal by the bundle runner).
    """
    root = Path(bundle_root).resolve()
    keys = {
        **overrides,
        "parent_ckpt_path": str(Path(parent_ckpt_path).resolve()),
        "ckpt_dir": str(Path(ckpt_dir).resolve()),
    }
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", repr([str(p) for p in config_files(root, *FINETUNE_CONFIGS)]),
        "--bundle_root", str(root),
    ]  # fmt: skip
    for key, value in keys.items():
        cmd += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return cmd


def _relabel(items: Sequence[Mapping[str, Any]], names: Sequence[str], labels: Mapping[str, str]) -> list[dict]:
    out = []
    for it in items:
        cls = it.get(OCTKeys.CLASS_NAME) or labels.get(str(it.get(OCTKeys.LABEL)))
        if cls not in names:
            raise UnknownLabelError(it.get(OCTKeys.IMAGE), f"class {cls!r} is not one of the generator's {list(names)}")
        out.append({**it, OCTKeys.LABEL: list(names).index(cls), OCTKeys.CLASS_NAME: cls})
    return out


def build_finetune_datalist(
    real: str | os.PathLike | Mapping[str, Any] | None,
    accepted: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    output: str | os.PathLike,
) -> tuple[Path, dict[str, int]]:
    """Write the fine-tuning datalist: the real datalist's splits plus the accepted images in ``training``.

    Labels follow the generator's ``class_names`` (items are matched by class name). Returns the file and counts.

    Raises:
        OCTDataError: no training images at all; UnknownLabelError: a class the generator does not know.
    """
    names = [str(c) for c in class_names]
    base: Mapping[str, Any] = {}
    if real is not None:
        base = real if isinstance(real, Mapping) else load_datalist(real, check=False)
    labels = {str(k): str(v) for k, v in (base.get("labels") or {}).items()}
    splits = {s: _relabel(base.get(s) or [], names, labels) for s in SPLITS}
    synthetic = _relabel(accepted, names, {str(i): c for i, c in enumerate(names)})
    splits["training"] = [*splits["training"], *synthetic]
    if not splits["training"]:
        raise OCTDataError(output, "nothing to fine-tune on: no real training images and no accepted images")
    datalist = {
        "name": "finetune",
        "description": "real images plus expert-accepted synthetic images (medicraft_monai MONAI Label)",
        "labels": {str(i): c for i, c in enumerate(names)},
        "num_classes": len(names),
        **splits,
        "numTraining": len(splits["training"]),
        "numValidation": len(splits["validation"]),
        "numTest": len(splits["test"]),
    }
    check_splits(datalist, hash_files=False)
    path = write_datalist(output, datalist)
    counts = {
        "real_training": len(splits["training"]) - len(synthetic),
        "accepted_synthetic": len(synthetic),
        "validation": len(splits["validation"]),
    }
    return path, counts
