"""The one checkpoint loader: every ``model.pt`` that medicraft_monai reads goes through here; and the discovery of
the newest training-state checkpoint that a resumed training run restores (:func:`latest_checkpoint`).

Files are read with ``torch.load(..., weights_only=True)``, so a checkpoint can never run code, and every problem (a
missing file, a folder, a truncated or foreign file, a file holding no state dict, a state dict that does not fit
the network) is one :class:`CheckpointError` that names the file and says what is wrong.
"""

from __future__ import annotations

import logging
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from medicraft_monai.data.errors import OCTDataError

__all__ = [
    "STATE_DICT_KEYS",
    "CheckpointError",
    "check_checkpoint_file",
    "latest_checkpoint",
    "load_state_dict",
    "load_weights",
    "read_checkpoint",
]

logger = logging.getLogger(__name__)

#: interval and final training-state checkpoints written by MONAI's CheckpointSaver (ignite naming)
_CKPT_PATTERN = re.compile(r"^(?P<prefix>.*?)_?(?:final_)?iteration=(?P<iteration>\d+)\.pt$")

STATE_DICT_KEYS: tuple[str, ...] = ("network", "model", "state_dict", "net")
"""Keys under which a training checkpoint may hold the network's state dict (MONAI's ``CheckpointSaver`` writes a
plain state dict for one object and a dict of them for several)."""


class CheckpointError(OCTDataError):
    """A checkpoint file that cannot be used: missing, a folder, unreadable, not a state dict, or not fitting."""


def read_checkpoint(path: str | PathLike, what: str = "checkpoint", hint: str = "") -> Any:
    """The object stored in a checkpoint file, read safely (``weights_only=True``, on the CPU).

    Args:
        path: the file.
        what: what the file is, for the message (for example ``"autoencoder checkpoint"``).
        hint: how to get a usable file, appended to the "not found" message.

    Raises:
        CheckpointError: a missing path, a folder, or a file torch cannot read (truncated, random bytes, a pickle
            holding code or objects other than tensors and plain containers).
    """
    p = check_checkpoint_file(path, what, hint)
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notice is not the user's problem
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reading problem is reported with the file name
        raise CheckpointError(p, f"cannot read the {what}: {_unreadable_reason(p, err)}") from None


def check_checkpoint_file(path: str | PathLike, what: str = "checkpoint", hint: str = "") -> Path:
    """``path`` as a :class:`~pathlib.Path` when it is a non-empty file (what :func:`read_checkpoint` checks first).

    Raises:
        CheckpointError: a folder, a missing path or an empty file, each with its own message.
    """
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(p, f"is a folder, not a {what} file (give the model.pt inside it)")
    if not p.is_file():
        raise CheckpointError(p, f"{what} not found" + (f"; {hint}" if hint else ""))
    if p.stat().st_size == 0:
        raise CheckpointError(p, f"{what} is empty (0 bytes): an interrupted copy or download?")
    return p


def _unreadable_reason(path: Path, err: Exception) -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` refused, in words (never torch's advice to load
    it with ``weights_only=False``)."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(path.stat().st_size - 1, 0))
        tail = f.read(1)
    text = str(err)
    # a pickle opens with PROTO and its protocol (2-5) and ends with STOP ("."); one matching byte is chance
    pickled = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and tail == b"."
    if head.startswith(b"PK\x03\x04") and not _is_complete_checkpoint(path):
        return "the file is truncated (its zip archive has no end): an interrupted copy or download?"
    if head.startswith(b"PK\x03\x04") and "weights_only" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        return (
            "it holds objects other than tensors and plain containers"
            + (f" ({found[1]})" if found else "")
            + ", which are not loaded for safety: save only the state dict (torch.save(network.state_dict(), path))"
        )
    if not (head.startswith(b"PK\x03\x04") or pickled):
        return "not a PyTorch checkpoint (neither a zip archive nor a pickle): random bytes or another format?"
    if pickled:
        return (
            "a plain Python pickle, not a PyTorch checkpoint (torch.save writes a zip archive); it is not loaded "
            "for safety"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return f"the file is corrupt or not a PyTorch checkpoint ({type(err).__name__}: {first[:200]})"


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_state_dict(
    path: str | PathLike, what: str = "checkpoint", hint: str = "", keys: Sequence[str] = STATE_DICT_KEYS
) -> dict[str, torch.Tensor]:
    """The network state dict in a checkpoint file.

    Accepts a plain state dict, or a training checkpoint holding it under one of ``keys``. ``module.`` prefixes
    (DistributedDataParallel) are removed.

    Raises:
        CheckpointError: see :func:`read_checkpoint`, or a file holding no state dict.
    """
    state = read_checkpoint(path, what, hint)
    if isinstance(state, Mapping) and not _is_state_dict(state):
        for key in keys:
            if _is_state_dict(state.get(key)):
                state = state[key]
                break
    if not _is_state_dict(state):
        raise CheckpointError(
            path, f"holds no network state dict (looked at the top level and under {list(keys)}): not a {what}?"
        )
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def load_weights(
    network: torch.nn.Module,
    path: str | PathLike,
    what: str = "checkpoint",
    hint: str = "",
    mismatch_hint: str = "the bundle's network_def",
    strict: bool = True,
) -> torch.nn.Module:
    """Load the state dict in ``path`` into ``network`` and return the network.

    Raises:
        CheckpointError: see :func:`load_state_dict`, or a state dict that does not fit the network (the message
            says which settings to check, ``mismatch_hint``).
    """
    state = load_state_dict(path, what, hint)
    try:
        network.load_state_dict(state, strict=strict)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        detail = str(err).strip().splitlines()
        raise CheckpointError(
            path, f"{what} does not fit {mismatch_hint}: {' '.join(d.strip() for d in detail[:3])}"
        ) from None
    return network


def _is_complete_checkpoint(path: Path) -> bool:
    """A torch checkpoint (a zip archive) whose write finished: a killed write leaves no central directory."""
    try:
        with zipfile.ZipFile(path) as zf:
            return len(zf.namelist()) > 0
    except (zipfile.BadZipFile, OSError):
        return False


def latest_checkpoint(
    folder: str | PathLike, required: bool = True, prefix: str = "checkpoint", started: str | PathLike | None = None
) -> str | None:
    """The training-state checkpoint with the highest iteration in ``folder`` (for ``resume``).

    Recognises the names MONAI's ``CheckpointSaver`` writes, ``<prefix>_iteration=N.pt`` (every N iterations) and
    ``<prefix>_final_iteration=N.pt`` (end of a run). A file whose write was cut off (the run was killed while
    saving) is skipped with a warning, so the previous checkpoint is used.

    Args:
        folder: where the training checkpoints are.
        required: raise when there is none (else return ``None``).
        prefix: the checkpoint name prefix.
        started: a folder the run fills before its first checkpoint (distillation's teacher trajectories). When it
            has files but there is no checkpoint yet, the run was stopped before training began: return ``None``
            (training starts from its initial weights and reuses what is in ``started``) instead of raising.

    Raises:
        FileNotFoundError: ``required`` and no usable checkpoint (and nothing in ``started``).
    """
    root = Path(folder)
    found: list[tuple[int, int, Path]] = []
    for p in root.glob(f"{prefix}*iteration=*.pt") if root.is_dir() else []:
        m = _CKPT_PATTERN.match(p.name)
        if m is None or m["prefix"] != prefix:
            continue
        found.append((int(m["iteration"]), int("final_" in p.name), p))
    for _, _, path in sorted(found, reverse=True):
        if _is_complete_checkpoint(path):
            logger.info("resuming from %s", path)
            return str(path)
        logger.warning("%s: incomplete checkpoint (the run was stopped while saving it); trying an older one", path)
    if started is not None and any(p.is_file() for p in Path(started).rglob("*")):  # none when it does not exist
        logger.info("%s: no training checkpoint yet, but %s has the run's first stage: training starts", root, started)
        return None
    if required:
        raise FileNotFoundError(
            f"{root}: resume=true but there is no training checkpoint ({prefix}_iteration=N.pt) to resume from; "
            "run without --resume to start a new training"
        )
    return None
