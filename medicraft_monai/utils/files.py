"""Atomic file writes and file checksums.

A file is written under a hidden temporary name in its final folder, flushed to disk and renamed into place with
:func:`os.replace`, so a reader (or a crash) never sees a half-written file under its final name, and a file that
existed before is replaced only once the new one is complete.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write",
    "file_sha256",
    "fsync_dir",
    "save_torch_atomic",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def fsync_dir(folder: str | PathLike) -> None:
    """Flush a folder's entries (renames) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def default_tmp_path(path: Path) -> Path:
    """``.<name>.tmp<pid><suffix>`` beside ``path``: hidden, unique per process, and with the final suffix kept
    (writers such as PIL and nibabel choose the format by it)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")


def atomic_write(path: str | PathLike, write: Callable[[Path], Any], *, tmp_path: str | PathLike | None = None) -> Path:
    """Call ``write(tmp)``, flush the temporary file to disk and rename it to ``path``.

    Args:
        path: the final file; its folder is created when missing.
        write: writes the whole file to the path it is given.
        tmp_path: where to write first (same folder as ``path``, so the rename is atomic); default
            :func:`default_tmp_path`.

    The temporary file is removed if ``write`` fails or the run is interrupted, and ``path`` is left as it was.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tmp_path) if tmp_path is not None else default_tmp_path(out)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def write_text_atomic(path: str | PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return atomic_write(path, write)


def write_json_atomic(path: str | PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON atomically; numpy/torch values and paths are converted by
    :func:`~medicraft_monai.utils.jsonable.to_jsonable` (non-finite floats become ``null``)."""
    from medicraft_monai.utils.jsonable import to_jsonable

    return write_text_atomic(path, json.dumps(to_jsonable(obj), indent=indent, sort_keys=sort_keys) + "\n")


def write_csv_atomic(path: str | PathLike, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]) -> Path:
    """Write ``rows`` as CSV (one column per field, missing keys and ``None`` empty) atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fieldnames})
    return write_text_atomic(path, buf.getvalue())


def save_torch_atomic(obj: Any, path: str | PathLike) -> Path:
    """``torch.save(obj, path)`` atomically: readers never see a partial checkpoint."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def file_digest(path: str | PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file with a :mod:`hashlib` algorithm (``"md5"``: the model zoo's archive checksum)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def file_sha256(path: str | PathLike) -> str:
    """The SHA-256 hex digest of a file (model checksums in provenance records, data set checksums)."""
    return file_digest(path, "sha256")
