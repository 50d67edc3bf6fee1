"""Read and write single OCT B-scans: PNG, JPEG, TIFF (8/16-bit and float), NIfTI and DICOM OPT.

Every reader returns the project's array convention: a B-scan is (H, W) in display order (rows = depth,
row 0 at the top; columns = A-scans), a file is a stack of such frames (frames, H, W), and the pixel
values are kept as stored (uint8, uint16 or float32, never rescaled; ``bit_depth`` in the metadata says
which, for the intensity-scaling transform).

Decisions (also in ``docs/data_formats.md``):

- grayscale stored as RGB/RGBA/palette (all colour channels equal, alpha fully opaque) is accepted and
  read as one channel; a true colour image is a :class:`DimensionalityError`;
- a multi-page TIFF and a 3-D NIfTI volume are stacks of frames: NIfTI data axis 0 is x (= W, lateral),
  axis 1 is y (= H, depth) as ITK and MONAI write them, and a third axis is the frame index;
- NaN or infinity in floating-point data is a :class:`CorruptImageError`;
- integer data other than uint8/uint16 becomes uint16 when it lies in [0, 65535], float32 otherwise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import tifffile
import torch
from monai.config import DtypeLike, KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from PIL import Image, ImageFile, PngImagePlugin

from .dicom import OPT_SOP_CLASS_UID, PROVENANCE_KEY, collate_safe_meta, has_dicm_preamble, read_oct_dicom
from .errors import CorruptImageError, DimensionalityError, OCTDataError, UnsupportedFormatError
from .keys import OCTMetaKeys

__all__ = [
    "META_KEYS",
    "SUPPORTED_SUFFIXES",
    "LoadOCTImage",
    "LoadOCTImageD",
    "LoadOCTImageDict",
    "LoadOCTImaged",
    "describe_image",
    "image_format",
    "probe_image",
    "read_bscan",
    "read_frames",
    "write_bscan_png",
    "write_bscan_tiff",
    "write_nifti_bscan",
]

#: File suffix (lower case) -> format name. ``""`` stands for files without a suffix, which are read as
#: DICOM when they carry the DICM preamble (so do files with any unlisted suffix, e.g. UID-named files).
SUPPORTED_SUFFIXES: dict[str, str] = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".dcm": "dicom",
    ".dicom": "dicom",
    "": "dicom",
}

#: Keys of the metadata :func:`read_bscan` returns, the same for every format (so items of different
#: formats can be batched together).
META_KEYS = (
    "filename_or_obj",
    "format",
    "frame",
    "num_frames",
    OCTMetaKeys.LATERALITY,
    OCTMetaKeys.PLANE_ANGLE,
    OCTMetaKeys.PIXEL_SPACING,
    OCTMetaKeys.PATIENT_ID,
    "study_uid",
    "series_uid",
    OCTMetaKeys.SYNTHETIC,
    "provenance",
    OCTMetaKeys.BIT_DEPTH,
)

_JPEG_CHANNEL_TOLERANCE = 2  # lossy chroma may differ by a level or two on a grayscale-as-RGB JPEG
_NIFTI_UNITS_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def _supported_text() -> str:
    listed = ", ".join(s for s in SUPPORTED_SUFFIXES if s)
    return f"supported: {listed}, and DICOM files with the DICM preamble under any name"


def image_format(path: str | PathLike) -> str:
    """The format name of ``path`` ("png", "jpeg", "tiff", "nifti" or "dicom"), from its suffix.

    A file without a suffix, or with one not listed in :data:`SUPPORTED_SUFFIXES`, is DICOM when it
    starts with the DICM preamble.

    Raises:
        UnsupportedFormatError: the suffix is not supported and the file is not DICOM (the message names
            the file and lists what is supported).
    """
    p = Path(path)
    suffix = _suffix(p)
    if suffix and suffix in SUPPORTED_SUFFIXES:
        return SUPPORTED_SUFFIXES[suffix]
    if has_dicm_preamble(p):
        return "dicom"
    what = f"suffix {suffix!r}" if suffix else "no suffix and no DICM preamble"
    if suffix == "" and not p.exists():
        what = "no suffix (and the file does not exist)"
    raise UnsupportedFormatError(p, f"unsupported image format ({what}); {_supported_text()}")


# ----------------------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------------------


def _normalise_dtype(arr: np.ndarray, path: Path) -> np.ndarray:
    """uint8/uint16 kept, float -> float32 (must be finite), bool -> uint8 0/255, other ints -> uint16/float32."""
    if arr.dtype.fields is not None:
        raise DimensionalityError(path, f"structured (colour) pixel type {arr.dtype}; OCT B-scans are grayscale")
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        return arr
    if arr.dtype.kind == "u" and arr.dtype.itemsize in (1, 2):  # e.g. big-endian uint16
        return arr.astype(np.uint8 if arr.dtype.itemsize == 1 else np.uint16)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            n_bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise CorruptImageError(path, f"{n_bad} pixel(s) are NaN or infinite")
        return arr.astype(np.float32, copy=False)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo >= 0 and hi <= 255 and arr.dtype.itemsize == 1:
            return arr.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return arr.astype(np.uint16)
        return arr.astype(np.float32)
    raise UnsupportedFormatError(path, f"pixel type {arr.dtype} is not supported")


def _gray_from_colour(rgb: np.ndarray, path: Path, what: str, tolerance: int) -> np.ndarray:
    """Collapse (..., C) colour samples to one channel when the channels are equal (within ``tolerance``)."""
    channels = rgb.astype(np.int64) if np.issubdtype(rgb.dtype, np.integer) else rgb.astype(np.float64)
    spread = float(np.max(channels.max(axis=-1) - channels.min(axis=-1))) if channels.size else 0.0
    if spread > tolerance:
        raise DimensionalityError(
            path,
            f"true colour image ({what}): its colour channels differ by up to {spread:g} levels; OCT B-scans are "
            "grayscale (convert it to grayscale first if the colour carries no information)",
        )
    if tolerance == 0:
        return np.ascontiguousarray(rgb[..., 0])
    return np.round(channels.mean(axis=-1)).astype(rgb.dtype)


def _check_alpha(alpha: np.ndarray, path: Path, mode: str) -> None:
    full = 255 if alpha.dtype == np.uint8 else np.iinfo(alpha.dtype).max if alpha.dtype.kind == "u" else 1
    if np.any(alpha != full):
        raise DimensionalityError(path, f"image (mode {mode}) has transparent pixels; a B-scan has no alpha channel")


def _pil_frame(im: Image.Image, path: Path, fmt: str) -> np.ndarray:
    mode = im.mode
    if mode == "L" or mode in ("I", "F"):
        return np.asarray(im)
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode in ("LA", "La"):
        arr = np.asarray(im.convert("LA"))
        _check_alpha(arr[..., 1], path, mode)
        return np.ascontiguousarray(arr[..., 0])
    if mode in ("RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        rgba = np.asarray(im.convert("RGBA"))
        if mode in ("RGBA", "RGBa", "PA", "P"):
            _check_alpha(rgba[..., 3], path, mode)
        tolerance = _JPEG_CHANNEL_TOLERANCE if fmt == "jpeg" else 0
        return _gray_from_colour(rgba[..., :3], path, f"mode {mode}", tolerance)
    raise UnsupportedFormatError(path, f"image mode {mode} is not supported")


def _decode_pil(path: Path, fmt: str) -> tuple[np.ndarray, dict[str, Any]]:
    info: dict[str, Any] = {}
    tolerant = ImageFile.LOAD_TRUNCATED_IMAGES  # another library may have switched truncation errors off
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as im:
            frames = []
            for index in range(getattr(im, "n_frames", 1)):
                im.seek(index)
                im.load()  # the full decode: truncated data raises here
                frames.append(_pil_frame(im, path, fmt))
            text = dict(getattr(im, "text", {}) or {})
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = tolerant
    if len({f.shape for f in frames}) != 1 or len({f.dtype for f in frames}) != 1:
        raise DimensionalityError(path, "frames of different sizes or types")
    blob = text.get(PROVENANCE_KEY)
    if blob:
        try:
            info["provenance"] = json.loads(blob)
            info[OCTMetaKeys.SYNTHETIC] = True
        except ValueError as e:
            raise CorruptImageError(path, f"PNG text {PROVENANCE_KEY!r} is not valid JSON ({e})") from e
    return np.stack(frames), info


_TIFF_COLOUR = {"RGB", "YCBCR", "SEPARATED", "CIELAB", "ICCLAB", "ITULAB"}


def _decode_tiff(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    with tifffile.TiffFile(path) as tf:
        if not tf.series:
            raise CorruptImageError(path, "TIFF file holds no image")
        series = tf.series[0]
        arr = np.asarray(series.asarray())
        axes = list(series.axes)
        photometric = getattr(tf.pages[0].photometric, "name", str(tf.pages[0].photometric)).upper()
    if photometric == "PALETTE":
        raise DimensionalityError(path, "palette (indexed colour) TIFF; save B-scans as grayscale")
    if "S" in axes:
        s = axes.index("S")
        if photometric in _TIFF_COLOUR:
            arr = _gray_from_colour(np.moveaxis(arr, s, -1), path, f"TIFF {photometric}", 0)
            axes = [a for a in axes if a != "S"]
        else:
            axes[s] = "Q"  # extra samples of a grayscale image: treat as more frames
    if "Y" not in axes or "X" not in axes:
        raise DimensionalityError(path, f"TIFF with axes {''.join(axes)} has no 2-D image plane (Y and X)")
    arr = np.moveaxis(arr, [axes.index("Y"), axes.index("X")], [-2, -1])
    return arr.reshape((-1, *arr.shape[-2:])), {}


def _decode_nifti(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if data.dtype.fields is not None:
        raise DimensionalityError(path, f"colour NIfTI ({data.dtype}); OCT B-scans are grayscale")
    shape = data.shape
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        frames = data.T[None]
    elif data.ndim == 3:
        frames = np.transpose(data, (2, 1, 0))
    else:
        raise DimensionalityError(
            path, f"NIfTI data of shape {shape} is neither a 2-D image (x, y) nor a stack of them (x, y, frames)"
        )
    info: dict[str, Any] = {}
    zooms = img.header.get_zooms()
    factor = _NIFTI_UNITS_TO_MM.get(img.header.get_xyzt_units()[0])
    if factor is not None and len(zooms) >= 2:
        # zooms are float32 in the header: keep 7 significant digits
        info["pixel_spacing"] = tuple(float(f"{float(z) * factor:.7g}") for z in (zooms[1], zooms[0]))
    return np.ascontiguousarray(frames), info


def _file_frames(path: str | PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """All frames (N, H, W) of a file plus what the file says about them (Python-level, per file)."""
    p = Path(path)
    fmt = image_format(p)
    if not p.is_file():
        raise CorruptImageError(p, "file does not exist (or is not a regular file)")
    if p.stat().st_size == 0:
        raise CorruptImageError(p, "file is empty (0 bytes)")
    if fmt == "dicom":
        frames, meta = read_oct_dicom(p)
        info = {k: meta[k] for k in ("laterality", "patient_id", "study_uid", "series_uid", "synthetic", "provenance")}
        info["plane_angles"] = meta["plane_angles"]
        info["pixel_spacings"] = meta["pixel_spacings"]
    else:
        try:
            if fmt in ("png", "jpeg"):
                frames, info = _decode_pil(p, fmt)
            elif fmt == "tiff":
                frames, info = _decode_tiff(p)
            else:
                frames, info = _decode_nifti(p)
        except OCTDataError:
            raise
        except Exception as e:  # noqa: BLE001 - every decoder failure means the file cannot be read
            raise CorruptImageError(p, f"cannot decode {fmt} image ({type(e).__name__}: {e})") from e
    if frames.ndim != 3 or 0 in frames.shape:
        raise DimensionalityError(p, f"not a 2-D image or a stack of 2-D frames (shape {frames.shape})")
    frames = _normalise_dtype(frames, p)
    info["format"] = fmt
    return frames, info


def _bit_depth(dtype: np.dtype) -> int:
    return {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(np.dtype(dtype), 0)


def read_frames(path: str | PathLike) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """All frames of a file as (N, H, W) in the stored dtype, with the :func:`read_bscan` metadata of each."""
    frames, info = _file_frames(path)
    n = frames.shape[0]
    metas = []
    for index in range(n):
        angles = info.get("plane_angles")
        spacings = info.get("pixel_spacings")
        metas.append(
            {
                "filename_or_obj": str(path),
                "format": info["format"],
                "frame": index,
                "num_frames": n,
                OCTMetaKeys.LATERALITY: info.get("laterality", ""),
                OCTMetaKeys.PLANE_ANGLE: angles[index] if angles else None,
                OCTMetaKeys.PIXEL_SPACING: spacings[index] if spacings else info.get("pixel_spacing"),
                OCTMetaKeys.PATIENT_ID: info.get("patient_id", ""),
                "study_uid": info.get("study_uid", ""),
                "series_uid": info.get("series_uid", ""),
                OCTMetaKeys.SYNTHETIC: bool(info.get("synthetic", False)),
                "provenance": info.get("provenance"),
                OCTMetaKeys.BIT_DEPTH: _bit_depth(frames.dtype),
            }
        )
    return frames, metas


def probe_image(path: str | PathLike) -> dict[str, Any]:
    """Decode ``path`` completely once and describe it.

    Returns:
        ``{"format": str, "shape": (frames, H, W), "dtype": str, "bit_depth": int}``; ``bit_depth`` is 8 or
        16 for uint8/uint16 data and 0 for float32.

    Raises:
        CorruptImageError: missing, empty, truncated or undecodable file; NaN/inf in float data.
        UnsupportedFormatError: a suffix (or DICOM SOP class) that is not supported.
        DimensionalityError: a true colour image, or data that is not 2-D frames.
    """
    frames, info = _file_frames(path)
    return {
        "format": info["format"],
        "shape": tuple(int(s) for s in frames.shape),
        "dtype": str(frames.dtype),
        "bit_depth": _bit_depth(frames.dtype),
    }


def describe_image(path: str | PathLike) -> dict[str, Any]:
    """What the reader sees in a file (``medicraft info FILE``): format, file size, frames, frame size, bit depth,
    laterality, plane angles, pixel spacing, whether it is marked synthetic and, for DICOM, the SOP class.

    Raises the reader's errors (:func:`probe_image`), each naming the file and the problem.
    """
    frames, metas = read_frames(path)
    first = metas[0]
    angles = [m[OCTMetaKeys.PLANE_ANGLE] for m in metas]
    spacing = first[OCTMetaKeys.PIXEL_SPACING]
    out: dict[str, Any] = {
        "file": str(path),
        "format": first["format"],
        "file size": f"{Path(path).stat().st_size} bytes",
        "frames": int(frames.shape[0]),
        "size": f"{frames.shape[1]} x {frames.shape[2]} (rows x columns)",
        "bit depth": f"{first[OCTMetaKeys.BIT_DEPTH]} ({frames.dtype})" if first[OCTMetaKeys.BIT_DEPTH] else "float32",
        "laterality": first[OCTMetaKeys.LATERALITY] or "unknown",
        "plane angles": ", ".join("?" if a is None else f"{a:g}" for a in angles)
        if any(a is not None for a in angles)
        else "unknown",
        "pixel spacing": "unknown" if spacing is None else " x ".join(f"{v:g}" for v in spacing) + " mm",
        "synthetic": bool(first[OCTMetaKeys.SYNTHETIC]),
    }
    if first["format"] == "dicom":
        out["SOP class"] = f"{OPT_SOP_CLASS_UID} (Ophthalmic Tomography Image Storage)"
    return out


def read_bscan(path: str | PathLike, frame: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """One B-scan as an (H, W) array in its stored dtype (uint8, uint16 or float32) and its metadata.

    The metadata has the same keys for every format (:data:`META_KEYS`): ``filename_or_obj``, ``format``,
    ``frame``, ``num_frames``, ``laterality`` ("R"/"L"/""), ``plane_angle`` (degrees or ``None``),
    ``pixel_spacing`` ((row_mm, col_mm) or ``None``), ``patient_id``, ``study_uid``, ``series_uid``,
    ``synthetic``, ``provenance`` (dict or ``None``) and ``bit_depth`` (8/16, 0 for float). Only DICOM
    (and NIfTI, for the spacing; PNG, for the provenance text written by :func:`write_bscan_png`) fill more
    than the defaults.

    Raises:
        the errors of :func:`probe_image`, and :class:`OCTDataError` for a frame index out of range.
    """
    frames, metas = read_frames(path)
    n = frames.shape[0]
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not 0 <= int(frame) < n:
        raise OCTDataError(path, f"frame {frame!r} is out of range: the file has {n} frame(s) (0..{n - 1})")
    return np.array(frames[int(frame)]), metas[int(frame)]


# ----------------------------------------------------------------------------------------------------------
# MONAI transforms
# ----------------------------------------------------------------------------------------------------------


def _affine(pixel_spacing: tuple[float, float] | None) -> torch.Tensor:
    affine = torch.eye(3, dtype=torch.float64)
    if pixel_spacing is not None and not any(math.isnan(float(v)) for v in pixel_spacing):
        affine[0, 0], affine[1, 1] = float(pixel_spacing[0]), float(pixel_spacing[1])
    return affine


class LoadOCTImage(Transform):
    """Load one B-scan from any supported file as a (1, H, W) float32 ``MetaTensor``.

    Values are kept as stored (0..255 for 8-bit, 0..65535 for 16-bit); scaling is a separate transform
    that reads ``meta["bit_depth"]``. ``meta`` has the :data:`META_KEYS` of :func:`read_bscan` in their
    collate-safe form (unknown plane angle NaN, unknown pixel spacing (NaN, NaN), provenance a JSON string,
    ``""`` when none), so items of any format can be batched by ``monai.data.list_data_collate``, plus
    MONAI's ``affine``/``original_affine`` (3 x 3: array axis 0 scaled by the row spacing, axis 1 by the
    column spacing), ``spatial_shape`` and ``original_channel_dim`` (0).

    Args:
        dtype: the tensor dtype (default float32).
    """

    def __init__(self, dtype: DtypeLike | torch.dtype = np.float32) -> None:
        self.dtype = dtype

    def __call__(self, path: str | PathLike, frame: int | None = 0) -> MetaTensor:
        """Read frame ``frame`` (``None`` means 0) of ``path``."""
        array, meta = read_bscan(path, 0 if frame is None else frame)
        safe = collate_safe_meta(meta)
        affine = _affine(meta[OCTMetaKeys.PIXEL_SPACING])
        safe["original_affine"] = affine.clone()
        safe["spatial_shape"] = np.asarray(array.shape)
        safe["original_channel_dim"] = 0
        data = torch.as_tensor(array.astype(np.float32, copy=False))[None]
        out = MetaTensor(data, affine=affine, meta=safe)
        if self.dtype not in (np.float32, torch.float32, "float32"):
            out = out.to(
                self.dtype if isinstance(self.dtype, torch.dtype) else getattr(torch, np.dtype(self.dtype).name)
            )
        return out


class LoadOCTImaged(MapTransform):
    """Dictionary version of :class:`LoadOCTImage`: replaces each key's path by its (1, H, W) B-scan.

    The frame index comes from the item's ``frame_key`` (``"frame"``, written by the DICOM datalists),
    0 when absent or ``None``.

    Args:
        keys: keys of the items holding file paths.
        frame_key: item key holding the frame index.
        allow_missing_keys: do not fail on items without a key.
        dtype: tensor dtype.
    """

    def __init__(
        self,
        keys: KeysCollection,
        frame_key: str = "frame",
        allow_missing_keys: bool = False,
        dtype: DtypeLike | torch.dtype = np.float32,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.frame_key = frame_key
        self.loader = LoadOCTImage(dtype=dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        frame = d.get(self.frame_key, 0)
        frame = 0 if frame is None else int(frame)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], frame)
        return d


LoadOCTImageD = LoadOCTImageDict = LoadOCTImaged


# ----------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------


def _as_2d(image_hw: Any, allowed: Sequence[type]) -> np.ndarray:
    if hasattr(image_hw, "detach"):
        image_hw = image_hw.detach().cpu().numpy()
    arr = np.asarray(image_hw)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected an (H, W) image (or (1, H, W)), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and np.float32 in allowed:
        if not np.all(np.isfinite(arr)):
            raise ValueError("image contains NaN or infinity")
        arr = arr.astype(np.float32, copy=False)
    if arr.dtype.type not in allowed:
        raise TypeError(f"image dtype {arr.dtype} not supported here; use {', '.join(t.__name__ for t in allowed)}")
    return np.ascontiguousarray(arr)


def write_bscan_png(path: str | PathLike, image_hw: Any, *, provenance: Mapping[str, Any] | None = None) -> Path:
    """Write an (H, W) uint8 (8-bit) or uint16 (16-bit) grayscale PNG; the dtype decides the bit depth.

    ``provenance`` (for a synthetic image) is kept as JSON in a PNG text chunk ``medicraft_provenance``;
    :func:`read_bscan` then reports ``synthetic=True`` and that provenance.
    """
    arr = _as_2d(image_hw, (np.uint8, np.uint16))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "medicraft_monai")
    if provenance is not None:
        info.add_text(PROVENANCE_KEY, json.dumps(dict(provenance), sort_keys=True))
    Image.fromarray(arr).save(out, format="PNG", pnginfo=info)
    return out


def write_bscan_tiff(path: str | PathLike, image_hw: Any) -> Path:
    """Write an (H, W) uint8, uint16 or float32 grayscale TIFF (float64 is stored as float32)."""
    arr = _as_2d(image_hw, (np.uint8, np.uint16, np.float32))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out, arr, photometric="minisblack")
    return out


def write_nifti_bscan(path: str | PathLike, image_hw: Any, pixel_spacing: tuple[float, float] | None = None) -> Path:
    """Write an (H, W) B-scan as a 2-D NIfTI image in ITK/MONAI axis order: data axis 0 = x = W, axis 1 = y = H.

    ``pixel_spacing`` (row_mm, col_mm) goes into the affine and the zooms (x: col_mm, y: row_mm, units mm);
    without it the zooms are 1 with unknown units, which :func:`read_bscan` reports as no spacing. uint8,
    uint16 and float32 are kept (float64 is stored as float32).
    """
    arr = _as_2d(image_hw, (np.uint8, np.uint16, np.float32))
    affine = np.eye(4)
    if pixel_spacing is not None:
        row_mm, col_mm = (float(v) for v in pixel_spacing)
        if not (row_mm > 0 and col_mm > 0):
            raise ValueError(f"pixel_spacing must be positive (row_mm, col_mm), got {pixel_spacing}")
        affine[0, 0], affine[1, 1] = col_mm, row_mm
    img = nib.Nifti1Image(np.ascontiguousarray(arr.T), affine)
    img.header.set_xyzt_units("mm" if pixel_spacing is not None else "unknown")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out))
    return out
