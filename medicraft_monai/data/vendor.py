"""Vendor OCT files (Heidelberg, Topcon, Zeiss, Bioptigen, Optovue) through the optional ``oct-converter``.

``pip install 'medicraft-monai[vendor]'`` (or ``pip install oct-converter``) adds the readers. What each
vendor reader can and cannot do is oct-converter's; ``docs/data_formats.md`` lists what was checked here.
Volumes are returned as oct-converter returns its B-scans, stacked to (frames, H, W); this module does not
flip or transpose them.
"""

from __future__ import annotations

import importlib
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .dicom import write_oct_dicom
from .errors import CorruptImageError, DimensionalityError, OCTDataError, UnsupportedFormatError
from .keys import OCTMetaKeys, normalise_laterality

__all__ = ["VENDOR_SUFFIXES", "convert_vendor_to_dicom", "read_vendor_volume", "vendor_format"]

#: Lower-case suffix -> (format name, oct-converter reader class).
VENDOR_SUFFIXES: dict[str, tuple[str, str]] = {
    ".e2e": ("heidelberg_e2e", "E2E"),
    ".fds": ("topcon_fds", "FDS"),
    ".fda": ("topcon_fda", "FDA"),
    ".img": ("zeiss_img", "IMG"),
    ".oct": ("bioptigen_or_optovue_oct", "BOCT"),  # Optovue (POCT) when the file is not Bioptigen
}

_EXTRA_HINT = (
    "reading vendor OCT files ({suffixes}) needs the optional package oct-converter: "
    "pip install 'medicraft-monai[vendor]' (or: pip install oct-converter)"
)


def vendor_format(path: str | PathLike) -> str:
    """The vendor format name of ``path`` from its suffix.

    Raises:
        UnsupportedFormatError: for any other suffix (the message lists the supported ones).
    """
    p = Path(path)
    entry = VENDOR_SUFFIXES.get(p.suffix.lower())
    if entry is None:
        raise UnsupportedFormatError(
            p, f"not a vendor OCT file (suffix {p.suffix.lower()!r}); supported: {', '.join(VENDOR_SUFFIXES)}"
        )
    return entry[0]


def _readers() -> Any:
    """``oct_converter.readers``, or an ImportError that names the ``vendor`` extra."""
    try:
        return importlib.import_module("oct_converter.readers")
    except ImportError as e:
        raise ImportError(_EXTRA_HINT.format(suffixes=", ".join(VENDOR_SUFFIXES))) from e


def _pixel_spacing(fmt: str, spacing: Any) -> tuple[float, float] | None:
    """oct-converter's pixel_spacing list -> (row_mm, col_mm), where its order is documented."""
    if spacing is None:
        return None
    values = [float(v) for v in spacing]
    if fmt in ("topcon_fds", "topcon_fda") and len(values) >= 3:
        return values[2], values[0]  # [width (x), slice thickness, height (z)]
    if fmt == "heidelberg_e2e" and len(values) >= 2:
        return values[1], values[0]  # [scale x (a caller's value, default 0.01), scale y, slice thickness]
    return None


def _read_volumes(reader_cls: Any, fmt: str, path: Path, kwargs: dict[str, Any]) -> list[Any]:
    if fmt == "bioptigen_or_optovue_oct":
        readers = _readers()
        try:
            return list(readers.BOCT(str(path)).read_oct_volume(**kwargs))
        except Exception:  # noqa: BLE001 - oct-converter itself falls back to Optovue on any BOCT failure
            return list(readers.POCT(str(path)).read_oct_volume())
    result = reader_cls(str(path)).read_oct_volume(**kwargs)
    return list(result) if isinstance(result, (list, tuple)) else [result]


def read_vendor_volume(path: str | PathLike, *, volume: int = 0, **reader_kwargs: Any) -> tuple[np.ndarray, dict]:
    """Read one OCT volume of a vendor file as (frames, H, W) plus metadata.

    Args:
        path: a ``.e2e``, ``.fds``, ``.fda``, ``.img`` or ``.oct`` file.
        volume: which volume, for files that hold several (E2E, Bioptigen, Optovue).
        reader_kwargs: passed to oct-converter's ``read_oct_volume`` (e.g. ``rows``/``cols``/``interlaced``
            for Zeiss ``.img``, ``scalex`` for E2E).

    Returns:
        the frames (uint8/uint16 kept, other types as float32) and ``{"format", "laterality" ("R"/"L"/""
        when the file says), "pixel_spacing" ((row_mm, col_mm) where oct-converter reports it, else None),
        "patient_id", "num_volumes", "volume", "filename_or_obj"}``.

    Raises:
        ImportError: oct-converter is not installed (the message names the ``vendor`` extra).
        UnsupportedFormatError: an unknown suffix.
        CorruptImageError: oct-converter cannot read the file (its error is quoted).
        OCTDataError: ``volume`` out of range.
    """
    p = Path(path)
    fmt = vendor_format(p)
    readers = _readers()
    if not p.is_file():
        raise CorruptImageError(p, "file does not exist (or is not a regular file)")
    if p.stat().st_size == 0:
        raise CorruptImageError(p, "file is empty (0 bytes)")
    reader_cls = getattr(readers, VENDOR_SUFFIXES[p.suffix.lower()][1])
    try:
        volumes = _read_volumes(reader_cls, fmt, p, reader_kwargs)
    except ValueError as e:
        if "fromstring" in str(e):
            raise CorruptImageError(
                p,
                f"oct-converter's {fmt} reader uses numpy.fromstring, which NumPy >= 2.3 removed ({e}); "
                f"use NumPy < 2.3 for this format until oct-converter is fixed",
            ) from e
        raise CorruptImageError(p, f"oct-converter cannot read it ({type(e).__name__}: {e})") from e
    except Exception as e:  # noqa: BLE001 - every vendor reader failure is reported with the file
        raise CorruptImageError(p, f"oct-converter cannot read it ({type(e).__name__}: {e})") from e
    if not volumes:
        raise CorruptImageError(p, "oct-converter found no OCT volume in the file")
    if not 0 <= volume < len(volumes):
        raise OCTDataError(p, f"volume {volume} is out of range: the file has {len(volumes)} volume(s)")
    oct_volume = volumes[volume]
    slices = [np.asarray(s) for s in oct_volume.volume]
    if not slices or len({s.shape for s in slices}) != 1 or slices[0].ndim != 2:
        shapes = sorted({s.shape for s in slices})
        raise DimensionalityError(p, f"B-scans are not 2-D frames of one size (shapes {shapes})")
    frames = np.stack(slices)
    if frames.dtype not in (np.uint8, np.uint16):
        frames = frames.astype(np.float32)
    try:
        laterality = normalise_laterality(getattr(oct_volume, "laterality", None) or "")
    except ValueError:
        laterality = ""
    meta = {
        "filename_or_obj": str(p),
        "format": fmt,
        OCTMetaKeys.LATERALITY: laterality,
        OCTMetaKeys.PIXEL_SPACING: _pixel_spacing(fmt, getattr(oct_volume, "pixel_spacing", None)),
        OCTMetaKeys.PATIENT_ID: str(getattr(oct_volume, "patient_id", None) or ""),
        "num_volumes": len(volumes),
        "volume": volume,
    }
    return frames, meta


def convert_vendor_to_dicom(path: str | PathLike, out_path: str | PathLike, *, volume: int = 0, **kwargs: Any) -> Path:
    """Convert one volume of a vendor file into an OPT DICOM file with :func:`write_oct_dicom`.

    Laterality, pixel spacing and patient id come from the vendor file unless given in ``kwargs`` (which
    are passed to :func:`write_oct_dicom`; patient names are never copied; without a spacing in the file
    none is written). Float volumes (E2E) are
    min-max scaled to [0, 1] and stored as uint16.

    Raises:
        the errors of :func:`read_vendor_volume`.
    """
    frames, meta = read_vendor_volume(path, volume=volume)
    if frames.dtype == np.float32:
        lo, hi = float(frames.min()), float(frames.max())
        frames = (frames - lo) / (hi - lo) if hi > lo else np.zeros_like(frames)
    kwargs.setdefault("laterality", meta[OCTMetaKeys.LATERALITY])
    kwargs.setdefault("pixel_spacing", meta[OCTMetaKeys.PIXEL_SPACING])  # None: not claimed
    if meta[OCTMetaKeys.PATIENT_ID]:
        kwargs.setdefault("patient_id", meta[OCTMetaKeys.PATIENT_ID])
    kwargs.setdefault("series_description", f"converted from {meta['format']} by medicraft_monai")
    return write_oct_dicom(out_path, frames, **kwargs)
