"""DICOM Ophthalmic Tomography (OPT) images: reader, writer and folder scan.

The SOP class read and written here is *Ophthalmic Tomography Image Storage*
(``1.2.840.10008.5.1.4.1.1.77.1.5.4``): one multi-frame object per exam series, one frame per B-scan.

Geometry conventions (see ``docs/data_formats.md``):

- a frame is an (H, W) B-scan in display order: rows are depth (row 0 at the vitreous side), columns
  are the A-scans from the first to the last of the scan line;
- pixel spacing is ``(row_mm, col_mm)``, DICOM's own order for Pixel Spacing (0028,0030), taken from the
  Pixel Measures functional group (per frame, or shared);
- the plane angle of a frame comes from its Ophthalmic Frame Location Sequence (0022,0031): Reference
  Coordinates (0022,0032) are (row, column) pairs on the referenced en-face image (PS3.3 C.8.17.10.1,
  origin at the top left corner, rows pointing down); the first pair is where the frame's first column
  lies, the last pair where its last column lies. The angle is the direction from first to last point,
  counter-clockwise from the viewer's right with y pointing up, in [0, 360).

The writer records each frame's scan line on a nominal (virtual, not stored) 768 x 768 scanning-laser
ophthalmoscope image centred on the fovea, so a radial exam of 12 planes round-trips its angles.

Metadata comes in two layers. :func:`read_oct_dicom` and :func:`dicom_folder_items` return plain Python
values (``None`` when unknown, provenance as a ``dict``). :class:`OphthalmicTomographyReader`, used by
``monai.transforms.LoadImage``, returns values that survive ``monai.data.list_data_collate`` (NaN for an
unknown number, ``""`` for unknown text, provenance as a JSON string), because ``None`` cannot be batched.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.data import ImageReader
from monai.data.image_writer import ImageWriter
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from medicraft_monai.utils import to_jsonable

from .errors import (
    CorruptImageError,
    DataProblems,
    DimensionalityError,
    EmptyDatasetError,
    OCTDataError,
    UnsupportedFormatError,
)
from .keys import OCTKeys, OCTMetaKeys, normalise_laterality

__all__ = [
    "OPT_SOP_CLASS_UID",
    "OphthalmicTomographyReader",
    "OphthalmicTomographyWriter",
    "REFERENCE_IMAGE_SIZE",
    "SYNTHETIC_SERIES_PREFIX",
    "collate_safe_meta",
    "dicom_folder_items",
    "has_dicm_preamble",
    "read_oct_dicom",
    "write_oct_dicom",
]

#: Ophthalmic Tomography Image Storage (pydicom.uid.OphthalmicTomographyImageStorage).
OPT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
#: SOP class of the nominal en-face reference image the frame locations point to.
_OP_8BIT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
#: Rows and columns of the nominal scanning-laser ophthalmoscope (SLO) reference image.
REFERENCE_IMAGE_SIZE = 768
#: Nominal pixel spacing of that reference image (a 30 degree SLO field of about 8.8 mm).
REFERENCE_PIXEL_SPACING_MM = 0.0114
#: SeriesDescription of every synthetic series starts with this.
SYNTHETIC_SERIES_PREFIX = "SYNTHETIC"
#: Key of the JSON object kept in ImageComments that holds a synthetic image's provenance.
PROVENANCE_KEY = "medicraft_provenance"
_MAX_LT_CHARS = 10240  # ImageComments is LT

_PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])
_DICOM_SUFFIXES = (".dcm", ".dicom")
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR

# Codes (SNOMED CT): the anatomy imaged and the acquisition device type.
_RETINA = ("5665001", "SCT", "Retina")
_OCT_SCANNER = ("392012008", "SCT", "Optical Coherence Tomography Scanner")
_LOCALIZER = ("121311", "DCM", "Localizer")


# ----------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------


def has_dicm_preamble(path: str | PathLike) -> bool:
    """``True`` when the file has the 128-byte preamble followed by ``b"DICM"`` (PS3.10 file format)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _is_dicom_candidate(path: Path) -> bool:
    return path.suffix.lower() in _DICOM_SUFFIXES or has_dicm_preamble(path)


def _load_dataset(path: str | PathLike, stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM file, check that it is an OPT image, raise the project's errors otherwise."""
    p = Path(path)
    if not p.is_file():
        raise CorruptImageError(p, "file does not exist (or is not a regular file)")
    if p.stat().st_size == 0:
        raise CorruptImageError(p, "file is empty (0 bytes)")
    try:
        ds = pydicom.dcmread(str(p), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        # an old file without the preamble: accept it only if it still parses to something with a SOP class
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=stop_before_pixels, force=True)
        except Exception as e:  # noqa: BLE001 - any parser failure means the file is not readable DICOM
            raise CorruptImageError(p, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
        if "SOPClassUID" not in ds:
            raise CorruptImageError(p, "not a DICOM file (no DICM preamble and no SOP Class UID)") from None
    except Exception as e:  # noqa: BLE001
        raise CorruptImageError(p, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
    try:
        sop_class = str(ds.SOPClassUID) if "SOPClassUID" in ds else ""
        file_meta = getattr(ds, "file_meta", None)
        if not sop_class and file_meta is not None and "MediaStorageSOPClassUID" in file_meta:
            sop_class = str(file_meta.MediaStorageSOPClassUID)
    except Exception as e:  # noqa: BLE001 - truncated headers surface lazily
        raise CorruptImageError(p, f"DICOM header cannot be parsed ({type(e).__name__}: {e})") from e
    if sop_class != OPT_SOP_CLASS_UID:
        name = UID(sop_class).name if sop_class else "none"
        raise UnsupportedFormatError(
            p,
            f"DICOM SOP class {sop_class or '(missing)'} ({name}) is not Ophthalmic Tomography Image Storage "
            f"({OPT_SOP_CLASS_UID}); only OPT B-scan objects are read",
        )
    return ds


def _frame_groups(ds: Dataset, index: int) -> list[Dataset]:
    """The per-frame functional group item of frame ``index`` (if any) followed by the shared one (if any)."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared is not None and len(shared) > 0:
        groups.append(shared[0])
    return groups


def _group_item(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    for group in _frame_groups(ds, index):
        seq = group.get(sequence)
        if seq is not None and len(seq) > 0:
            return seq[0]
    return None


def _frame_pixel_spacing(ds: Dataset, index: int) -> tuple[float, float] | None:
    item = _group_item(ds, index, "PixelMeasuresSequence")
    values = item.get("PixelSpacing") if item is not None else None
    if values is None:
        values = ds.get("PixelSpacing")
    if values is None or len(values) != 2:
        return None
    return float(values[0]), float(values[1])


def angle_from_reference_coordinates(coordinates: Sequence[float]) -> float:
    """Plane angle (degrees, [0, 360)) of a scan line given as (row, column) pairs on an en-face image.

    The direction runs from the first pair (the frame's first column) to the last pair (its last column);
    image rows point down, so the angle is ``atan2(-(row_last - row_first), col_last - col_first)``.
    """
    values = [float(v) for v in coordinates]
    if len(values) < 4 or len(values) % 2:
        raise ValueError(f"need at least two (row, column) pairs, got {values}")
    d_row = values[-2] - values[0]
    d_col = values[-1] - values[1]
    if d_row == 0 and d_col == 0:
        raise ValueError("first and last reference points coincide")
    # ReferenceCoordinates are FL (float32): keep 4 decimals (well below 0.001 degree), drop float32 noise
    angle = round(math.degrees(math.atan2(-d_row, d_col)), 4) % 360.0
    return 0.0 if angle >= 360.0 else angle


def _frame_plane_angle(ds: Dataset, index: int) -> float | None:
    item = _group_item(ds, index, "OphthalmicFrameLocationSequence")
    if item is None:
        return None
    if str(item.get("OphthalmicImageOrientation", "")).upper() == "TRANSVERSE":
        return None  # an en-face (C-scan) frame has no scan line
    coordinates = item.get("ReferenceCoordinates")
    if coordinates is None:
        return None
    try:
        return angle_from_reference_coordinates(list(coordinates))
    except ValueError:
        return None


def _laterality(ds: Dataset) -> str:
    candidates = [ds.get("ImageLaterality"), ds.get("Laterality")]
    anatomy = _group_item(ds, 0, "FrameAnatomySequence")
    if anatomy is not None:
        candidates.append(anatomy.get("FrameLaterality"))
    for value in candidates:
        if value is None or str(value).strip() == "":
            continue
        try:
            return normalise_laterality(str(value))
        except ValueError:
            return ""  # "B" (both eyes) or a non-standard value: not one eye
    return ""


def _provenance(ds: Dataset) -> dict | None:
    text = str(ds.get("ImageComments", "") or "").strip()
    if not text.startswith("{"):
        return None
    try:
        blob = json.loads(text)
    except ValueError:
        return None
    if isinstance(blob, dict) and isinstance(blob.get(PROVENANCE_KEY), dict):
        return blob[PROVENANCE_KEY]
    return None


def _is_synthetic(ds: Dataset, provenance: dict | None) -> bool:
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    description = str(ds.get("SeriesDescription", "") or "").upper()
    return "DERIVED" in image_type and (description.startswith(SYNTHETIC_SERIES_PREFIX) or provenance is not None)


def _opt_metadata(ds: Dataset, path: str | PathLike) -> dict[str, Any]:
    """Python-level metadata of an OPT dataset (``None`` where unknown)."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    provenance = _provenance(ds)
    spacings = [_frame_pixel_spacing(ds, i) for i in range(n_frames)]
    return {
        "filename_or_obj": str(path),
        "format": "dicom",
        "num_frames": n_frames,
        OCTMetaKeys.LATERALITY: _laterality(ds),
        OCTMetaKeys.PIXEL_SPACING: spacings[0] if spacings else None,
        "pixel_spacings": spacings,
        "plane_angles": [_frame_plane_angle(ds, i) for i in range(n_frames)],
        OCTMetaKeys.PATIENT_ID: str(ds.get("PatientID", "") or ""),
        "study_uid": str(ds.get("StudyInstanceUID", "") or ""),
        "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "") or ""),
        "series_description": str(ds.get("SeriesDescription", "") or ""),
        OCTMetaKeys.SYNTHETIC: _is_synthetic(ds, provenance),
        "provenance": provenance,
        OCTMetaKeys.BIT_DEPTH: bits if bits in (8, 16) else 0,
    }


def _expected_pixel_bytes(ds: Dataset) -> int:
    n = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    return n * int(ds.Rows) * int(ds.Columns) * spp * (int(ds.BitsAllocated) // 8)


def _transfer_syntax(ds: Dataset) -> str | None:
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    return None if syntax is None else str(syntax)


def _check_pixel_length(ds: Dataset, path: Path) -> None:
    """Catch truncated uncompressed pixel data without decoding it."""
    if "PixelData" not in ds:
        raise CorruptImageError(path, "DICOM file has no Pixel Data (0x7FE0,0010)")
    syntax = _transfer_syntax(ds)
    if syntax is not None and UID(str(syntax)).is_compressed:
        return
    try:
        expected = _expected_pixel_bytes(ds)
        actual = len(ds.PixelData)
    except Exception as e:  # noqa: BLE001
        raise CorruptImageError(path, f"DICOM image attributes cannot be read ({type(e).__name__}: {e})") from e
    if actual < expected:
        raise CorruptImageError(
            path, f"pixel data is truncated: {actual} bytes where Rows x Columns x frames needs {expected}"
        )


def _pixel_frames(ds: Dataset, path: Path) -> np.ndarray:
    """Decode all frames as an (N, H, W) array in the stored dtype (uint8/uint16)."""
    _check_pixel_length(ds, path)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if spp != 1 or not photometric.startswith("MONOCHROME"):
        raise DimensionalityError(
            path, f"colour DICOM image ({photometric}, {spp} samples per pixel); OCT B-scans are grayscale"
        )
    if int(ds.get("PixelRepresentation", 0) or 0) != 0:
        raise UnsupportedFormatError(path, "signed pixel data; OPT images store unsigned integers")
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as e:  # noqa: BLE001
        syntax = _transfer_syntax(ds)
        if syntax is not None and UID(str(syntax)).is_compressed:
            raise UnsupportedFormatError(
                path,
                f"cannot decode compressed transfer syntax {syntax} ({UID(str(syntax)).name}): "
                f"{type(e).__name__}: {e}; install a pydicom pixel data plugin (e.g. pylibjpeg) or decompress",
            ) from e
        raise CorruptImageError(path, f"pixel data cannot be decoded ({type(e).__name__}: {e})") from e
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != n_frames:
        raise DimensionalityError(path, f"pixel array of shape {arr.shape} does not hold {n_frames} 2-D frames")
    bits = int(ds.BitsAllocated)
    arr = arr.astype(np.uint8 if bits == 8 else np.uint16, copy=False)
    if photometric == "MONOCHROME1":  # minimum is white: invert into MONOCHROME2 display order
        arr = (np.iinfo(arr.dtype).max >> (bits - int(ds.get("BitsStored", bits)))) - arr
    return np.ascontiguousarray(arr)


def read_oct_dicom(path: str | PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an OPT DICOM file: all frames as (N, H, W) uint8/uint16 plus Python-level metadata.

    The metadata holds ``laterality``, ``pixel_spacing`` (of frame 0) and ``pixel_spacings`` (per frame),
    ``plane_angles`` (per frame, ``None`` where the file has no scan line location), ``patient_id``,
    ``study_uid``, ``series_uid``, ``sop_instance_uid``, ``series_description``, ``synthetic``,
    ``provenance`` (``dict`` or ``None``), ``bit_depth``, ``num_frames``, ``format`` and ``filename_or_obj``.

    Raises:
        CorruptImageError: empty, truncated or non-DICOM file.
        UnsupportedFormatError: a DICOM object of another SOP class (named in the message), or a
            compressed transfer syntax no installed decoder handles.
        DimensionalityError: colour pixel data.
    """
    p = Path(path)
    ds = _load_dataset(p)
    return _pixel_frames(ds, p), _safe_metadata(ds, p)


def _safe_metadata(ds: Dataset, path: Path) -> dict[str, Any]:
    try:
        return _opt_metadata(ds, path)
    except OCTDataError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed or truncated element surfaces on access
        raise CorruptImageError(path, f"DICOM attributes cannot be read ({type(e).__name__}: {e})") from e


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def collate_safe_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Turn Python-level metadata into values that ``monai.data.list_data_collate`` can batch.

    ``None`` cannot be collated, so: an unknown ``pixel_spacing`` becomes ``(nan, nan)``, an unknown
    ``plane_angle`` (and entries of ``plane_angles``) NaN, ``provenance`` a JSON string (``""`` when none),
    any other ``None`` ``""``; the per-frame ``pixel_spacings`` list is dropped.
    """
    out = dict(meta)
    spacing = meta.get(OCTMetaKeys.PIXEL_SPACING)
    out[OCTMetaKeys.PIXEL_SPACING] = (float("nan"), float("nan")) if spacing is None else tuple(spacing)
    out.pop("pixel_spacings", None)
    if "plane_angles" in meta:
        out["plane_angles"] = [_nan_if_none(a) for a in meta["plane_angles"]]
    if OCTMetaKeys.PLANE_ANGLE in meta:
        out[OCTMetaKeys.PLANE_ANGLE] = _nan_if_none(meta[OCTMetaKeys.PLANE_ANGLE])
    provenance = meta.get("provenance")
    out["provenance"] = "" if provenance is None else json.dumps(provenance, sort_keys=True)
    for key, value in list(out.items()):
        if value is None:
            out[key] = ""
    return out


class OphthalmicTomographyReader(ImageReader):
    """MONAI ``ImageReader`` for DICOM Ophthalmic Tomography (OPT) multi-frame B-scan files.

    ``monai.transforms.LoadImage(reader=OphthalmicTomographyReader())`` returns the frames as a
    (frames, H, W) image: the frames are the channel dimension (``original_channel_dim = 0``) and the
    spatial axes are (H, W) in display order, not MONAI's usual reversed (x, y) order; a one-frame file
    therefore loads as (1, H, W), the project's channel-first B-scan. Frames are separate scan planes, not
    slices of a volume, so they are not a third spatial axis.

    The metadata is collate-safe (see the module docstring): ``laterality``, ``pixel_spacing`` (row_mm,
    col_mm; NaN when absent), ``plane_angles`` (per frame, NaN when absent), ``patient_id``, ``study_uid``,
    ``series_uid``, ``synthetic``, ``provenance`` (JSON string, ``""`` when none), ``bit_depth``,
    ``num_frames``, plus MONAI's ``spatial_shape``, ``original_channel_dim`` and a 3 x 3 ``affine`` that
    scales array axis 0 by the row spacing and axis 1 by the column spacing (identity without spacing).

    Args:
        kwargs: reserved for ``pydicom.dcmread`` options in a later version; accepted and ignored.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """``True`` when every file ends in ``.dcm``/``.dicom`` or starts with the DICM preamble."""
        names = [filename] if isinstance(filename, (str, PathLike)) else list(filename)
        return bool(names) and all(_is_dicom_candidate(Path(n)) for n in names)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Sequence[Any] | Any:
        """Read one file (returns a ``pydicom`` dataset) or several (returns a list), checking the SOP class."""
        names = [data] if isinstance(data, (str, PathLike)) else list(data)
        datasets = [_load_dataset(n) for n in names]
        return datasets[0] if len(datasets) == 1 else datasets

    def get_data(self, img: Dataset | Sequence[Dataset]) -> tuple[np.ndarray, dict]:
        """Return ``(frames, H, W)`` pixels and collate-safe metadata; several files are concatenated."""
        datasets = [img] if isinstance(img, Dataset) else list(img)
        arrays, meta_all = [], None
        for ds in datasets:
            path = Path(str(getattr(ds, "filename", "") or "<dataset>"))
            arr = _pixel_frames(ds, path)
            meta = collate_safe_meta(_safe_metadata(ds, path))
            if meta_all is None:
                meta_all = meta
            elif arr.shape[1:] != arrays[0].shape[1:]:
                raise DimensionalityError(path, f"frame size {arr.shape[1:]} differs from {arrays[0].shape[1:]}")
            else:
                meta_all["plane_angles"] = list(meta_all["plane_angles"]) + list(meta["plane_angles"])
                meta_all["num_frames"] += meta["num_frames"]
            arrays.append(arr)
        assert meta_all is not None
        data = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        row_mm, col_mm = meta_all[OCTMetaKeys.PIXEL_SPACING]
        affine = np.eye(3)
        if not (math.isnan(row_mm) or math.isnan(col_mm)):
            affine[0, 0], affine[1, 1] = row_mm, col_mm
        meta_all["affine"] = affine
        meta_all["original_affine"] = affine.copy()
        meta_all["spatial_shape"] = np.asarray(data.shape[1:])
        meta_all["original_channel_dim"] = 0
        return data, meta_all


# ----------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------


def _code_item(code: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def _frames_to_uint(frames: Any) -> np.ndarray:
    """(N, H, W) or (H, W) uint8/uint16, or float in [0, 1] -> uint16 = round(x * 65535)."""
    if hasattr(frames, "detach"):  # torch tensor / MetaTensor
        frames = frames.detach().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or min(arr.shape) == 0:
        raise ValueError(f"frames must be (N, H, W) or (H, W), got shape {arr.shape}")
    if arr.dtype in (np.uint8, np.uint16):
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError("float frames contain NaN or infinity")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(
                f"float frames must lie in [0, 1] (they are stored as uint16 = round(x * 65535)); got [{lo}, {hi}]"
            )
        return np.round(np.clip(arr, 0.0, 1.0) * 65535.0).astype(np.uint16)
    if np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.bool_):
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 65535:
            return arr.astype(np.uint16)
        raise ValueError(f"integer frames must lie in [0, 65535], got [{lo}, {hi}]")
    raise TypeError(f"frames must be uint8, uint16 or float in [0, 1], got dtype {arr.dtype}")


def _scan_geometry(
    angle: float, n_cols: int, col_mm: float | None
) -> tuple[list[float], list[float], list[float], float]:
    """Reference coordinates (r0, c0, r1, c1), ImageOrientationPatient, ImagePositionPatient, length (mm)."""
    length_mm = (n_cols - 1) * col_mm if col_mm else 0.0
    ref_spacing = max(REFERENCE_PIXEL_SPACING_MM, length_mm / (0.9 * REFERENCE_IMAGE_SIZE)) if length_mm else None
    half = 0.5 * length_mm / ref_spacing if ref_spacing else 0.4 * REFERENCE_IMAGE_SIZE
    centre = REFERENCE_IMAGE_SIZE / 2.0
    theta = math.radians(angle)
    d_col, d_row = math.cos(theta), -math.sin(theta)  # reference image rows point down
    coords = [centre - half * d_row, centre - half * d_col, centre + half * d_row, centre + half * d_col]
    # Patient coordinates (LPS) seen from the front: viewer's right = patient's left (+x), up = head (+z),
    # depth into the eye = posterior (+y).
    row_dir = [math.cos(theta), 0.0, math.sin(theta)]
    col_dir = [0.0, 1.0, 0.0]
    start = [-0.5 * length_mm * row_dir[0], 0.0, -0.5 * length_mm * row_dir[2]]
    return coords, row_dir + col_dir, start, length_mm


def _save(ds: FileDataset, path: Path) -> None:
    if _PYDICOM_MAJOR >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:  # pydicom 2.4 (MONAI Label's pin): encoding comes from these flags
        ds.is_little_endian = True
        ds.is_implicit_VR = False
        ds.save_as(str(path), write_like_original=False)


def write_oct_dicom(
    path: str | PathLike,
    frames: Any,
    *,
    plane_angles: Sequence[float] | None = None,
    laterality: str = "",
    pixel_spacing: tuple[float, float] | None = (0.0039, 0.0117),
    patient_id: str = "ANONYMOUS",
    patient_name: str = "",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    series_description: str = "",
    synthetic: bool = False,
    provenance: Mapping[str, Any] | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    image_type: Sequence[str] | None = None,
    acquisition_datetime: datetime | None = None,
) -> Path:
    """Write B-scans as one multi-frame DICOM Ophthalmic Tomography (OPT) image.

    Args:
        path: output file (parent folders are created).
        frames: (N, H, W) or (H, W) array (numpy or torch) of uint8 or uint16, or float in [0, 1], which is
            stored as uint16 ``round(x * 65535)``; other non-negative integers up to 65535 become uint16.
        plane_angles: one radial plane angle per frame in degrees (project convention), or ``None`` when
            unknown; written as each frame's scan line on the nominal reference image and as its
            ImageOrientationPatient. Without angles the frames get no Ophthalmic Frame Location and a
            nominal horizontal orientation.
        laterality: "R"/"L" (or OD/OS ...); "" is written as ImageLaterality "U" (read back as "").
        pixel_spacing: (row_mm, col_mm) of every frame, or ``None`` when unknown.
        patient_id, patient_name: identifiers of a real patient's (pseudonymised) data. For a synthetic
            image the name is always "SYNTHETIC" (a different name is an error) and the default id is
            derived from the study UID ("SYN-" + 12 hex digits); no birth date is ever written.
        study_instance_uid, series_instance_uid, sop_instance_uid: generated when ``None``.
        series_description: for a synthetic image it is prefixed with "SYNTHETIC" unless it starts so.
        synthetic: marks a generated image: ImageType DERIVED\\SECONDARY, SeriesDescription "SYNTHETIC...",
            BurnedInAnnotation NO, PatientIdentityRemoved YES and the provenance in ImageComments.
        provenance: how a synthetic image was made (model checksum, class, seed, steps, guidance ...),
            stored as JSON ``{"medicraft_provenance": {...}}`` in ImageComments (0020,4000).
        series_number, instance_number: as in the General Series / Multi-frame modules.
        image_type: ImageType values; default DERIVED\\SECONDARY (this writer never acquires an image).
        acquisition_datetime: AcquisitionDateTime; default now.

    Returns:
        the path written.
    """
    out = Path(path)
    pixels = _frames_to_uint(frames)
    n_frames, rows, cols = pixels.shape
    bits = 8 if pixels.dtype == np.uint8 else 16
    lat = normalise_laterality(laterality)
    if plane_angles is not None:
        plane_angles = [float(a) % 360.0 for a in plane_angles]
        if len(plane_angles) != n_frames or not all(math.isfinite(a) for a in plane_angles):
            raise ValueError(f"need {n_frames} finite plane angles, got {plane_angles}")
    if pixel_spacing is not None:
        row_mm, col_mm = (float(v) for v in pixel_spacing)
        if not (row_mm > 0 and col_mm > 0):
            raise ValueError(f"pixel_spacing must be positive (row_mm, col_mm), got {pixel_spacing}")
    else:
        row_mm = col_mm = None
    description = series_description or ""
    if synthetic:
        if patient_name not in ("", "SYNTHETIC"):
            raise ValueError("a synthetic image carries no patient name (it is always 'SYNTHETIC')")
        if not description.upper().startswith(SYNTHETIC_SERIES_PREFIX):
            description = f"{SYNTHETIC_SERIES_PREFIX} {description}".strip()
    else:
        if description.upper().startswith(SYNTHETIC_SERIES_PREFIX):
            raise ValueError("series_description starts with 'SYNTHETIC' but synthetic=False")
        if provenance is not None:
            raise ValueError("provenance marks a synthetic image; pass synthetic=True")
    comments = None
    if provenance is not None:
        comments = json.dumps(to_jsonable({PROVENANCE_KEY: dict(provenance)}, where="provenance"), sort_keys=True)
        if len(comments) > _MAX_LT_CHARS:
            raise ValueError(f"provenance JSON has {len(comments)} characters; ImageComments holds {_MAX_LT_CHARS}")

    study_uid = study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    sop_uid = sop_instance_uid or generate_uid()
    if synthetic and patient_id == "ANONYMOUS":
        patient_id = "SYN-" + hashlib.sha256(study_uid.encode()).hexdigest()[:12]
    now = datetime.now()
    acquired = acquisition_datetime or now

    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = OPT_SOP_CLASS_UID
    file_meta.MediaStorageSOPInstanceUID = sop_uid
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(out), {}, file_meta=file_meta, preamble=b"\0" * 128)

    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = OPT_SOP_CLASS_UID
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    # Patient
    ds.PatientName = "SYNTHETIC" if synthetic else patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    if synthetic:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "synthetic image generated by medicraft_monai; no patient"
    # General Study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = acquired.strftime("%Y%m%d")
    ds.StudyTime = acquired.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    # General Series + Ophthalmic Tomography Series
    ds.Modality = "OPT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = description
    # Frame of Reference (present because Plane Position/Orientation are written)
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, lat or "U", "frame-of-reference"])
    ds.PositionReferenceIndicator = ""
    # General + Enhanced General Equipment
    try:
        from importlib.metadata import version

        software = version("medicraft-monai")
    except Exception:  # noqa: BLE001 - not installed as a distribution (source checkout)
        software = "0"
    ds.Manufacturer = "medicraft_monai"
    ds.ManufacturerModelName = "medicraft_monai write_oct_dicom"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = software
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    # Ophthalmic Tomography Image
    ds.ImageType = list(image_type) if image_type else ["DERIVED", "SECONDARY"]
    if synthetic and "DERIVED" not in [v.upper() for v in ds.ImageType]:
        raise ValueError("a synthetic image must have ImageType value 1 DERIVED")
    ds.AcquisitionDateTime = acquired.strftime("%Y%m%d%H%M%S")
    ds.AcquisitionNumber = 1
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    if synthetic:
        ds.DerivationDescription = "Synthetic OCT image generated by medicraft_monai (not a patient's image)"
    if comments is not None:
        ds.ImageComments = comments
    # Multi-frame Functional Groups + Multi-frame Dimension
    ds.InstanceNumber = int(instance_number)
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.NumberOfFrames = n_frames
    dim_uid = generate_uid()
    organisation = Dataset()
    organisation.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = [organisation]
    dims = []
    for keyword in ("StackID", "InStackPositionNumber"):
        dim = Dataset()
        dim.DimensionOrganizationUID = dim_uid
        dim.DimensionIndexPointer = tag_for_keyword(keyword)
        dim.FunctionalGroupPointer = tag_for_keyword("FrameContentSequence")
        dims.append(dim)
    ds.DimensionIndexSequence = dims
    # Acquisition Context
    ds.AcquisitionContextSequence = []
    # Ophthalmic Tomography Acquisition Parameters (type 2: present, unknown)
    for keyword in (
        "AxialLengthOfTheEye",
        "HorizontalFieldOfView",
        "EmmetropicMagnification",
        "IntraOcularPressure",
        "PupilDilated",
        "DepthSpatialResolution",
        "MaximumDepthDistortion",
        "AlongScanSpatialResolution",
        "MaximumAlongScanDistortion",
        "AcrossScanSpatialResolution",
        "MaximumAcrossScanDistortion",
    ):
        setattr(ds, keyword, None)
    ds.RefractiveStateSequence = []
    # Ophthalmic Tomography Parameters (nominal spectral-domain OCT values)
    ds.AcquisitionDeviceTypeCodeSequence = [_code_item(_OCT_SCANNER)]
    ds.LightPathFilterTypeStackCodeSequence = []
    ds.DetectorType = "CCD"
    ds.IlluminationWaveLength = 870.0
    ds.IlluminationPower = 1200.0
    ds.IlluminationBandwidth = 50.0
    # Ocular Region Imaged
    ds.ImageLaterality = lat or "U"
    ds.AnatomicRegionSequence = [_code_item(_RETINA)]

    # Shared functional groups: Pixel Measures, Frame Anatomy (and orientation when it is the same for all).
    shared = Dataset()
    measures = Dataset()
    if row_mm is not None:
        measures.PixelSpacing = [_ds(row_mm), _ds(col_mm)]
    shared.PixelMeasuresSequence = [measures]
    anatomy = Dataset()
    anatomy.FrameLaterality = lat or "U"
    anatomy.AnatomicRegionSequence = [_code_item(_RETINA)]
    shared.FrameAnatomySequence = [anatomy]
    reference_uid = generate_uid(entropy_srcs=[series_uid, "nominal-slo-reference"])
    per_frame = []
    for i in range(n_frames):
        angle = plane_angles[i] if plane_angles is not None else 0.0
        coords, orientation, position, _ = _scan_geometry(angle, cols, col_mm)
        item = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = i + 1
        content.DimensionIndexValues = [1, i + 1]
        item.FrameContentSequence = [content]
        pos = Dataset()
        pos.ImagePositionPatient = [_ds(v) for v in position]
        item.PlanePositionSequence = [pos]
        orient = Dataset()
        orient.ImageOrientationPatient = [_ds(v) for v in orientation]
        item.PlaneOrientationSequence = [orient]
        if plane_angles is not None:
            location = Dataset()
            location.ReferencedSOPClassUID = _OP_8BIT_SOP_CLASS_UID
            location.ReferencedSOPInstanceUID = reference_uid
            location.PurposeOfReferenceCodeSequence = [_code_item(_LOCALIZER)]
            location.ReferenceCoordinates = [float(v) for v in coords]
            location.OphthalmicImageOrientation = "LINEAR"
            item.OphthalmicFrameLocationSequence = [location]
        per_frame.append(item)
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.add_new(0x7FE00010, "OB" if bits == 8 else "OW", pixels.astype(f"<u{bits // 8}").tobytes())

    out.parent.mkdir(parents=True, exist_ok=True)
    _save(ds, out)
    return out


def _meta_value(meta: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = meta.get(key, default)
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return default
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, float) and math.isnan(v) for v in value):
        return default
    return value


class OphthalmicTomographyWriter(ImageWriter):
    """MONAI ``ImageWriter`` that saves a (frames, H, W) or (H, W) image as an OPT DICOM file.

    A thin wrapper over :func:`write_oct_dicom`, usable directly or through
    ``monai.transforms.SaveImage(writer=OphthalmicTomographyWriter, output_ext=".dcm")``::

        writer = OphthalmicTomographyWriter()
        writer.set_data_array(image)            # MetaTensor (1, H, W) from LoadOCTImage, or (N, H, W)
        writer.set_metadata(image.meta)         # laterality, plane angle(s), pixel spacing, synthetic ...
        writer.write("out.dcm")

    Float data whose metadata says ``bit_depth`` 8 or 16 and whose values are whole numbers in range is
    written back in that integer type (a loaded, unscaled B-scan round-trips exactly); other float data
    must lie in [0, 1]. Keyword arguments of :func:`write_oct_dicom` given to ``set_metadata`` or
    ``write`` override what the metadata says.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.write_kwargs: dict[str, Any] = {}
        super().__init__(**kwargs)

    def set_data_array(self, data_array: Any, channel_dim: int | None = 0, **kwargs: Any) -> None:
        """Keep the frames: channel-first (N, H, W) (``channel_dim=0``) or a single (H, W) frame."""
        if hasattr(data_array, "detach"):
            data_array = data_array.detach().cpu().numpy()
        arr = np.asarray(data_array)
        if channel_dim is not None and arr.ndim == 3 and channel_dim not in (0, -3):
            arr = np.moveaxis(arr, channel_dim, 0)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"expected (frames, H, W) or (H, W) data, got shape {arr.shape}")
        self.data_obj = arr

    def set_metadata(self, meta_dict: Mapping[str, Any] | None = None, **options: Any) -> None:
        """Take laterality, plane angle(s), pixel spacing, identifiers and synthetic marks from ``meta_dict``."""
        meta = dict(meta_dict or {})
        kw: dict[str, Any] = {}
        lat = _meta_value(meta, OCTMetaKeys.LATERALITY, "")
        kw["laterality"] = lat if isinstance(lat, str) else ""
        angles = _meta_value(meta, "plane_angles")
        if angles is None:
            angle = _meta_value(meta, OCTMetaKeys.PLANE_ANGLE)
            angles = None if angle is None or isinstance(angle, str) else [angle]
        if angles is not None and not any(isinstance(a, float) and math.isnan(a) for a in angles):
            kw["plane_angles"] = [float(a) for a in angles]
        spacing = _meta_value(meta, OCTMetaKeys.PIXEL_SPACING)
        if isinstance(spacing, (list, tuple)) and len(spacing) == 2:
            kw["pixel_spacing"] = (float(spacing[0]), float(spacing[1]))
        for key, arg in (
            (OCTMetaKeys.PATIENT_ID, "patient_id"),
            ("study_uid", "study_instance_uid"),
            ("series_uid", "series_instance_uid"),
        ):
            value = _meta_value(meta, key)
            if isinstance(value, str) and value:
                kw[arg] = value
        kw["synthetic"] = bool(_meta_value(meta, OCTMetaKeys.SYNTHETIC, False))
        provenance = _meta_value(meta, "provenance")
        if isinstance(provenance, str) and provenance:
            provenance = json.loads(provenance)
        if isinstance(provenance, dict) and kw["synthetic"]:
            kw["provenance"] = provenance
        bit_depth = _meta_value(meta, OCTMetaKeys.BIT_DEPTH, 0)
        self._bit_depth = int(bit_depth) if isinstance(bit_depth, (int, float)) else 0
        known = set(write_oct_dicom.__kwdefaults__ or {})
        kw.update({k: v for k, v in options.items() if k in known})
        self.write_kwargs = kw

    def write(self, filename: str | PathLike, verbose: bool = False, **kwargs: Any) -> Path:
        """Write the file; returns its path."""
        super().write(filename, verbose=verbose)
        if self.data_obj is None:
            raise ValueError("call set_data_array() before write()")
        data = np.asarray(self.data_obj)
        if np.issubdtype(data.dtype, np.floating) and getattr(self, "_bit_depth", 0) in (8, 16):
            limit = 255 if self._bit_depth == 8 else 65535
            if np.all(np.isfinite(data)) and data.min() >= 0 and data.max() <= limit and np.all(data == np.round(data)):
                data = data.astype(np.uint8 if self._bit_depth == 8 else np.uint16)
        known = set(write_oct_dicom.__kwdefaults__ or {})
        kw = {**self.write_kwargs, **{k: v for k, v in kwargs.items() if k in known}}
        if "plane_angles" in kw and len(kw["plane_angles"]) != data.shape[0]:
            kw.pop("plane_angles")
        return write_oct_dicom(filename, data, **kw)


# ----------------------------------------------------------------------------------------------------------
# folders
# ----------------------------------------------------------------------------------------------------------


def dicom_folder_items(
    folder: str | PathLike, *, return_problems: bool = False
) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], list[OCTDataError]]:
    """One datalist item per frame of every OPT DICOM file under ``folder`` (searched recursively).

    Candidates are files ending in ``.dcm``/``.dicom`` and files of any other name that start with the DICM
    preamble; other files are ignored, and so is a DICOMDIR. A candidate that cannot be used (corrupt,
    truncated, another SOP class, colour ...) is a *problem*: each is reported with ``warnings.warn``
    naming the file, and the usable files are still returned.

    Each item has the :class:`OCTKeys` ``image`` (absolute path), ``frame``, ``patient_id``, ``exam_id``
    (``"<StudyInstanceUID>_<R|L|U>"``), ``plane_angle`` (``None`` when unknown), ``laterality`` and
    ``synthetic``, plus ``study_uid`` and ``series_uid``. Items are sorted by path, then frame.

    Args:
        folder: the folder to scan.
        return_problems: when ``True`` return ``(items, problems)`` (a list of :class:`OCTDataError`)
            instead of only the items; nothing is warned then.

    Raises:
        EmptyDatasetError: the folder does not exist or holds no DICOM candidate.
        DataProblems: candidates were found but none was usable (lists every problem).
    """
    root = Path(folder)
    if not root.is_dir():
        raise EmptyDatasetError(root, "not a folder")
    candidates = sorted(p for p in root.rglob("*") if p.is_file() and _is_dicom_candidate(p))
    items: list[dict[str, Any]] = []
    problems: list[OCTDataError] = []
    n_dicomdir = 0
    for path in candidates:
        try:
            ds = _load_dataset(path)
        except UnsupportedFormatError as e:
            if path.name.upper() == "DICOMDIR" or _MEDIA_STORAGE_DIRECTORY in str(e):
                n_dicomdir += 1
                continue
            problems.append(e)
            continue
        except OCTDataError as e:
            problems.append(e)
            continue
        try:
            _check_pixel_length(ds, path)
            if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
                raise DimensionalityError(path, "colour DICOM image; OCT B-scans are grayscale")
            meta = _safe_metadata(ds, path)
        except OCTDataError as e:
            problems.append(e)
            continue
        exam_id = f"{meta['study_uid']}_{meta[OCTMetaKeys.LATERALITY] or 'U'}"
        for frame in range(meta["num_frames"]):
            items.append(
                {
                    OCTKeys.IMAGE: str(path.resolve()),
                    OCTKeys.FRAME: frame,
                    OCTKeys.PATIENT_ID: meta[OCTMetaKeys.PATIENT_ID],
                    OCTKeys.EXAM_ID: exam_id,
                    OCTKeys.PLANE_ANGLE: meta["plane_angles"][frame],
                    OCTKeys.LATERALITY: meta[OCTMetaKeys.LATERALITY],
                    OCTKeys.SYNTHETIC: meta[OCTMetaKeys.SYNTHETIC],
                    "study_uid": meta["study_uid"],
                    "series_uid": meta["series_uid"],
                }
            )
    if not items:
        if problems:
            raise DataProblems(problems, context=f"no usable OPT DICOM file in {root}")
        raise EmptyDatasetError(
            root,
            "no DICOM files found (looked for *.dcm, *.dicom and files with the DICM preamble, recursively)"
            + (f"; {n_dicomdir} DICOMDIR file(s) ignored" if n_dicomdir else ""),
        )
    if return_problems:
        return items, problems
    for problem in problems:
        warnings.warn(f"skipped DICOM file: {problem}", stacklevel=2)
    return items
