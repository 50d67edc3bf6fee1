"""Fine-tuning the generator on real plus expert-accepted images (used by the app's ``finetune`` train task).

The generator bundle's own ``configs/train.json`` runs unchanged (``python -m monai.bundle run``); two overrides
make it a fine-tuning run: ``--datalist`` (real training images plus the accepted synthetic ones) and ``--network``
(the network with the current weights loaded by the one checkpoint loader,
:func:`medicraft_monai.networks.checkpoint.load_weights`, so the EMA copy starts from them too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medicraft_monai.data.datalist import SPLITS, check_splits, load_datalist, write_datalist
from medicraft_monai.data.errors import OCTDataError, UnknownLabelError
from medicraft_monai.data.keys import OCTKeys

__all__ = ["build_finetune_datalist", "imports_override", "network_override"]


_WHAT = "generator checkpoint to fine-tune from"


def network_override(ckpt_path: str | os.PathLike) -> str:
    """The ``--network`` override for a bundle's train.json that starts from ``ckpt_path``."""
    path = str(Path(ckpt_path).resolve())
    return f"$medicraft_monai.networks.checkpoint.load_weights(@network_def, {path!r}, {_WHAT!r}).to(@device)"


def imports_override(*train_configs: str | os.PathLike) -> list[str]:
    """The ``imports`` of the bundle's training configs (``common.json`` and ``train.json``) plus this module (for
    the checkpoint loader (for the ``--imports`` override that :func:`network_override` needs)."""
    imports: list[str] = []
    for config in train_configs:
        with open(config) as f:
            imports += [i for i in json.load(f).get("imports") or [] if i not in imports]
    line = "$import medicraft_monai.networks.checkpoint"
    return imports if line in imports else [*imports, line]


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
