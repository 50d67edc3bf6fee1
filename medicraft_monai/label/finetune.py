"""Fine-tuning the generator on real plus expert-accepted images (used by the app's ``finetune`` train task).

The generator bundle's own ``configs/train.json`` runs unchanged (``python -m monai.bundle run``); two overrides
make it a fine-tuning run: ``--datalist`` (real training images plus the accepted synthetic ones) and ``--network``
(the network with the current weights loaded by :func:`load_weights`, so the EMA copy starts from them too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medicraft_monai.data.datalist import SPLITS, check_splits, load_datalist, write_datalist
from medicraft_monai.data.errors import OCTDataError, UnknownLabelError
from medicraft_monai.data.keys import OCTKeys

__all__ = ["build_finetune_datalist", "imports_override", "load_weights", "network_override"]


def load_weights(network: torch.nn.Module, ckpt_path: str | os.PathLike) -> torch.nn.Module:
    """Load a state dict (plain, or under ``"model"``/``"state_dict"``) into ``network`` and return it.

    Raises:
        OCTDataError: a missing checkpoint or one that does not fit the network.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise OCTDataError(path, "generator checkpoint to fine-tune from not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise OCTDataError(path, f"checkpoint does not fit the bundle's network ({err})") from None
    return network


def network_override(ckpt_path: str | os.PathLike) -> str:
    """The ``--network`` override for a bundle's train.json that starts from ``ckpt_path``."""
    return f"$medicraft_monai.label.finetune.load_weights(@network_def, {str(Path(ckpt_path).resolve())!r}).to(@device)"


def imports_override(train_config: str | os.PathLike) -> list[str]:
    """The bundle's ``imports`` plus this module (for the ``--imports`` override that :func:`network_override`
    needs)."""
    with open(train_config) as f:
        imports = list(json.load(f).get("imports") or [])
    line = "$import medicraft_monai.label.finetune"
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
