"""Atomic writers for synthetic B-scans: PNG (8/16-bit), NIfTI and single-frame DICOM Ophthalmic Tomography.

Each file is written by :func:`medicraft_monai.utils.atomic_write` under a hidden temporary name in its final folder
(``.<stem>.tmp<pid><suffix>``), flushed to disk and then renamed into place, so a crash never leaves a half-written file under a
final name. Leftover temporary files are recognised by :data:`TMP_PATTERN` and removed by the next run.

Every file records how it was made: the provenance (model checksum, class, seed, sampler, steps, guidance) goes
into a PNG text chunk, a NIfTI header extension (plus ``descrip = "SYNTHETIC ..."``), or the DICOM
ImageComments (with ImageType DERIVED\\SECONDARY and a SYNTHETIC series description).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medicraft_monai.utils import atomic_write

__all__ = [
    "FORMATS",
    "TMP_PATTERN",
    "check_format",
    "final_name_of_tmp",
    "to_uint",
    "write_atomic",
    "write_synthetic_image",
]

FORMATS: dict[str, str] = {"png": ".png", "nifti": ".nii.gz", "dicom": ".dcm"}
"""Output format -> file suffix."""

TMP_PATTERN = re.compile(r"^\.(?P<stem>[^.]+)\.tmp\d+(?P<suffix>\..+)$")
"""A temporary file's name: ``.<stem>.tmp<pid><suffix>``; the final name is ``<stem><suffix>``."""

NIFTI_PROVENANCE_CODE = "comment"
"""NIfTI-1 extension code holding the provenance JSON (``{"medicraft_provenance": {...}}``)."""

PROVENANCE_KEY = "medicraft_provenance"


def check_format(fmt: str, bit_depth: int) -> tuple[str, int]:
    """Normalise and check an output format and bit depth (``ValueError`` naming the choices)."""
    key = str(fmt).lower().strip().lstrip(".")
    key = {"nii": "nifti", "nii.gz": "nifti", "dcm": "dicom"}.get(key, key)
    if key not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {sorted(FORMATS)}")
    if int(bit_depth) not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    return key, int(bit_depth)


def to_uint(image01: np.ndarray, bit_depth: int) -> np.ndarray:
    """A float image in [0, 1] as uint8 (``round(x * 255)``) or uint16 (``round(x * 65535)``)."""
    top, dtype = (255.0, np.uint8) if int(bit_depth) == 8 else (65535.0, np.uint16)
    return np.round(np.clip(np.asarray(image01, dtype=np.float32), 0.0, 1.0) * top).astype(dtype)


_UTILS_TMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.tmp\d+(?:\.[^.]*)?$")
"""The temporary name of :func:`medicraft_monai.utils.atomic_write` (``.<name>.tmp<pid><suffix>``)."""


def final_name_of_tmp(name: str) -> str | None:
    """The final file name a temporary file stands for, or None when ``name`` is not a temporary file."""
    m = TMP_PATTERN.match(name)
    if m is not None:
        return m.group("stem") + m.group("suffix")
    m = _UTILS_TMP_PATTERN.match(name)
    return None if m is None else m.group("name")


def _tmp_path(path: Path) -> Path:
    for suffix in sorted(FORMATS.values(), key=len, reverse=True):
        if path.name.endswith(suffix):
            stem = path.name[: -len(suffix)]
            break
    else:
        stem, suffix = path.stem, path.suffix
    if "." in stem:
        raise ValueError(f"{path}: file stems of synthetic images may not contain dots")
    return path.with_name(f".{stem}.tmp{os.getpid()}{suffix}")


def write_atomic(path: str | PathLike, write: Callable[[Path], Any]) -> Path:
    """:func:`~medicraft_monai.utils.atomic_write` under a temporary name :data:`TMP_PATTERN` recognises."""
    return atomic_write(path, write, tmp_path=_tmp_path(Path(path)))


def _write_png(path: Path, pixels: np.ndarray, provenance: Mapping[str, Any], **_: Any) -> None:
    from medicraft_monai.data.io import write_bscan_png

    write_bscan_png(path, pixels, provenance=provenance)


def _write_nifti(path: Path, pixels: np.ndarray, provenance: Mapping[str, Any], **_: Any) -> None:
    import nibabel as nib

    from medicraft_monai.data.io import write_nifti_bscan

    write_nifti_bscan(path, pixels)
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)  # read fully before the file is rewritten
    header = img.header.copy()
    header["descrip"] = b"SYNTHETIC medicraft_monai"
    out = nib.Nifti1Image(data, img.affine, header)
    payload = json.dumps({PROVENANCE_KEY: dict(provenance)}, sort_keys=True).encode()
    out.header.extensions.append(nib.nifti1.Nifti1Extension(NIFTI_PROVENANCE_CODE, payload))
    nib.save(out, str(path))


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    provenance: Mapping[str, Any],
    *,
    class_name: str = "",
    uids: Mapping[str, str] | None = None,
    instance_number: int = 1,
    **_: Any,
) -> None:
    from medicraft_monai.data.dicom import write_oct_dicom

    uids = dict(uids or {})
    write_oct_dicom(
        path,
        pixels,
        synthetic=True,
        provenance=provenance,
        series_description=f"SYNTHETIC OCT {class_name} (medicraft_monai)".strip(),
        pixel_spacing=None,
        laterality="",
        study_instance_uid=uids.get("study"),
        series_instance_uid=uids.get("series"),
        sop_instance_uid=uids.get("sop"),
        instance_number=instance_number,
    )


_WRITERS: dict[str, Callable[..., None]] = {"png": _write_png, "nifti": _write_nifti, "dicom": _write_dicom}


def write_synthetic_image(
    path: str | PathLike,
    image01: np.ndarray,
    fmt: str = "png",
    bit_depth: int = 8,
    *,
    provenance: Mapping[str, Any],
    **options: Any,
) -> Path:
    """Write one synthetic (H, W) or (1, H, W) image in [0, 1] atomically, with its provenance.

    Args:
        path: the final file (its suffix should match ``fmt``, see :data:`FORMATS`).
        image01: float image in [0, 1].
        fmt: "png", "nifti" or "dicom" (a single-frame Ophthalmic Tomography image, marked synthetic).
        bit_depth: 8 or 16 bits per pixel.
        provenance: how the image was made (stored in the file).
        options: for DICOM: ``class_name``, ``uids`` (``{"study", "series", "sop"}``), ``instance_number``.
    """
    key, bits = check_format(fmt, bit_depth)
    arr = np.asarray(image01)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected an (H, W) or (1, H, W) image, got shape {arr.shape}")
    pixels = to_uint(arr, bits)
    return write_atomic(path, lambda tmp: _WRITERS[key](tmp, pixels, provenance, **options))
