"""Input discovery and reading that never stops a batch, for the Deploy apps.

An application's input is a file or a folder (searched recursively; hidden files and folders are skipped). Every
file becomes one :class:`InputFrame` per B-scan it holds (a multi-frame DICOM Ophthalmic Tomography exam gives one
per frame); a file that cannot be read becomes a single :class:`InputFrame` with ``error`` set to the reader's
message (``"path: reason"``, see :mod:`medicraft_monai.data.errors`), so the application reports it in its outputs
and goes on with the other files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medicraft_monai.data.errors import OCTDataError
from medicraft_monai.data.io import read_frames

__all__ = ["InputFrame", "list_input_files", "read_input_frames"]


@dataclass
class InputFrame:
    """One B-scan of the input, or one input file that could not be read.

    Attributes:
        source: the file, relative to the input folder (posix), or its name when the input is a single file.
        path: the file's full path.
        frame: the frame index in the file (0 for single images).
        num_frames: frames in the file (0 when it could not be read).
        format: "png", "jpeg", "tiff", "nifti" or "dicom" ("" when unknown).
        image: the (H, W) B-scan as stored (uint8, uint16 or float32), ``None`` on error.
        meta: the reader's metadata (:func:`medicraft_monai.data.read_bscan` keys).
        error: why the file could not be read ("" when it was read).
    """

    source: str
    path: str
    frame: int = 0
    num_frames: int = 0
    format: str = ""
    image: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        """Whether the B-scan was read."""
        return not self.error and self.image is not None


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def list_input_files(input_path: str | PathLike, exclude_suffixes: Sequence[str] = ()) -> list[Path]:
    """The files to process: ``input_path`` itself, or every non-hidden file under it in sorted order, except those
    whose name ends with one of ``exclude_suffixes`` (case-insensitive, e.g. ``(".json", ".csv")``).

    Raises:
        FileNotFoundError: the input does not exist.
    """
    root = Path(input_path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input file or folder not found")
    skip = tuple(s.lower() for s in exclude_suffixes)
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not _hidden(p, root) and not (skip and p.name.lower().endswith(skip))
    )


def read_input_frames(input_path: str | PathLike, exclude_suffixes: Sequence[str] = ()) -> list[InputFrame]:
    """Read every input file (:func:`list_input_files`) into :class:`InputFrame` records; unreadable files become
    records with an error.

    Raises:
        FileNotFoundError: the input does not exist (a missing input is the caller's mistake, not a bad file).
    """
    root = Path(input_path)
    records: list[InputFrame] = []
    for path in list_input_files(root, exclude_suffixes):
        source = path.name if root.is_file() else path.relative_to(root).as_posix()
        try:
            frames, metas = read_frames(path)
        except OCTDataError as err:
            records.append(InputFrame(source, str(path), error=str(err)))
            continue
        except Exception as err:  # noqa: BLE001 - any failure of one file is reported, the batch goes on
            records.append(InputFrame(source, str(path), error=f"{path}: {type(err).__name__}: {err}"))
            continue
        for index, (image, meta) in enumerate(zip(frames, metas)):
            records.append(
                InputFrame(
                    source,
                    str(path),
                    frame=index,
                    num_frames=int(frames.shape[0]),
                    format=str(meta.get("format", "")),
                    image=np.asarray(image),
                    meta=dict(meta),
                )
            )
    return records
