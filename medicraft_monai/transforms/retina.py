"""Retina detection on OCT B-scans, and the transforms built on it: crop/pad around the retina, flattening.

All functions take channel-first ``(C, H, W)`` images (or a single ``(H, W)`` B-scan for the detector) in the
project's display order: row 0 is the top of the B-scan (vitreous side), rows grow with depth, columns are
A-scans. Boundaries are returned as float row coordinates, one per column.

Pixel-sized defaults are tuned for Spectralis-like axial sampling (about 3.9 um per row, 496 rows over 1.9 mm).
For other devices or resized images pass ``axial_scale`` (rows per 3.9 um): the transforms derive it from the
``pixel_spacing`` metadata when it is known.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import BorderPad, InvertibleTransform, MapTransform, SpatialCrop
from monai.utils import TraceKeys, convert_to_dst_type, convert_to_numpy, convert_to_tensor, ensure_tuple_rep
from scipy import ndimage

from medicraft_monai.data.errors import DimensionalityError
from medicraft_monai.data.keys import OCTMetaKeys

__all__ = [
    "REFERENCE_ROW_SPACING_MM",
    "CROP_START_KEY",
    "CROP_ORIG_HEIGHT_KEY",
    "FLATTEN_TARGET_KEY",
    "detect_retina_boundaries",
    "axial_scale_from_meta",
    "get_flatten_shifts",
    "RetinaCrop",
    "RetinaCropd",
    "RetinaCropD",
    "RetinaCropDict",
    "FlattenRetina",
    "FlattenRetinad",
    "FlattenRetinaD",
    "FlattenRetinaDict",
]

#: axial sampling the pixel-sized defaults are tuned for (Spectralis: 1.9 mm over 496 rows).
REFERENCE_ROW_SPACING_MM = 0.0039
#: metadata key: input row that became row 0 of the :class:`RetinaCrop` output (negative when padded on top).
CROP_START_KEY = "retina_crop_start"
#: metadata key: number of rows of the image before :class:`RetinaCrop`.
CROP_ORIG_HEIGHT_KEY = "retina_crop_orig_height"
#: metadata key: the row Bruch's membrane was moved to by :class:`FlattenRetina`.
FLATTEN_TARGET_KEY = "retina_flatten_target_row"


# ----------------------------------------------------------------------------------------------------------
# detection
# ----------------------------------------------------------------------------------------------------------


def _as_hw(image: Any) -> np.ndarray:
    """A float32 (H, W) numpy view of a (H, W) or (1, H, W) array/tensor (several channels are averaged)."""
    arr = convert_to_numpy(image.as_tensor() if isinstance(image, MetaTensor) else image, wrap_sequence=True)
    if arr.ndim == 3:
        arr = arr.mean(axis=0) if arr.shape[0] > 1 else arr[0]
    if arr.ndim != 2:
        raise DimensionalityError(None, f"expected a (H, W) B-scan or a channel-first (C, H, W) image, got {arr.shape}")
    arr = np.asarray(arr, dtype=np.float32)
    if np.isnan(arr).any():
        raise ValueError(f"image contains {int(np.isnan(arr).sum())} NaN value(s); fix or mask them before detection")
    return arr


def _edge_run(mask: np.ndarray, axis: int) -> np.ndarray:
    """Length of the run of True values starting at index 0 along ``axis`` (runs of 1 are ignored as noise)."""
    n = np.argmin(mask, axis=axis)
    n[mask.all(axis=axis)] = mask.shape[axis]
    n[n < 2] = 0
    return n


def _vertical_opening(mask: np.ndarray, length: int) -> np.ndarray:
    """Binary opening with a vertical line (removes bright structures thinner than ``length`` rows)."""
    m = mask.view(np.uint8)
    return ndimage.maximum_filter1d(ndimage.minimum_filter1d(m, length, axis=0), length, axis=0).view(bool)


def _brightest_path(cost: np.ndarray, max_step: int) -> np.ndarray:
    """Row per column of the minimum-cost left-to-right path moving at most ``max_step`` rows per column."""
    h, w = cost.shape
    acc = np.empty_like(cost)
    acc[:, 0] = cost[:, 0]
    size = 2 * max_step + 1
    for j in range(1, w):
        acc[:, j] = cost[:, j] + ndimage.minimum_filter1d(acc[:, j - 1], size=size, mode="nearest")
    path = np.empty(w, dtype=np.int64)
    r = int(np.argmin(acc[:, -1]))
    path[-1] = r
    for j in range(w - 1, 0, -1):
        a = max(0, r - max_step)
        r = a + int(np.argmin(acc[a : r + max_step + 1, j - 1]))
        path[j - 1] = r
    return path


def detect_retina_boundaries(
    image_hw: Any,
    *,
    axial_scale: float = 1.0,
    lateral_bins: int = 192,
    min_thickness: float = 20.0,
    max_thickness: float = 250.0,
    return_reliable: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimate the inner limiting membrane (ILM) and Bruch's membrane (BM) row of every column of a B-scan.

    The image is binned to about ``lateral_bins`` columns and smoothed; then

    1. saturated padding (the white wedges of registered Spectralis exports, white columns: saturated regions
       touching an edge, or saturated runs taller than any bright layer) is replaced by a background level;
    2. the RPE is the brightest smooth left-to-right path (dynamic programming, a few rows per column at most)
       scored by brightness minus the brightest signal up to 150 rows below it, so that a bright inner layer
       (RNFL) or a detached outer retina above the RPE is not taken for it; BM is the smooth path of steepest
       intensity fall at the bottom of that bright band (a second dynamic programme over the offset from the
       RPE path, changing by about one row per column at most, so it passes under drusen and ignores bright
       choroidal patches);
    3. the ILM is the top of the tissue above the RPE: pixels above a column-adaptive threshold, opened with a
       vertical line (removing thin membranes such as a detached posterior hyaloid and vitreous speckle),
       keeping long connected structures near the RPE, extended upward through weaker tissue (the foveal
       floor) by hysteresis, then refined to the steepest rise;
    4. columns without a clear retina (shadows, dark or padded columns, the optic nerve head, outliers against
       their neighbours, implausible thickness) are marked unreliable and filled by interpolation; both curves
       are median- and Gaussian-smoothed across columns and interpolated back to full width.

    Args:
        image_hw: a (H, W) B-scan, or a (1, H, W) image (several channels are averaged); any intensity scale.
        axial_scale: rows per 3.9 um (1.0 for Spectralis-like sampling); scales the pixel-sized parameters.
        lateral_bins: number of column bins the detection works on (speed and robustness).
        min_thickness: smallest plausible ILM-to-BM distance in rows (at ``axial_scale`` 1).
        max_thickness: largest plausible ILM-to-BM distance in rows (at ``axial_scale`` 1).
        return_reliable: also return the per-column boolean mask of columns that were measured (not filled).

    Returns:
        ``(ilm_rows, bm_rows)`` float arrays of shape (W,) (row coordinates, sub-pixel), plus ``reliable``
        when asked. When no column shows a retina (a blank image, or one smaller than 16 x 4) both arrays are
        all NaN.

    Raises:
        DimensionalityError: for input that is not one B-scan.
        ValueError: for NaN pixels.
    """
    img = _as_hw(image_hw)
    h, w = img.shape
    k = float(axial_scale)
    if not k > 0:
        raise ValueError(f"axial_scale must be positive, got {axial_scale}")
    px = lambda v: max(1, int(round(v * k)))  # noqa: E731 - pixel sizes at this axial sampling

    b = max(1, int(round(w / max(1, lateral_bins))))
    wb = max(1, w // b)
    parts = [img[:, j : wb * b : b] for j in range(b)]
    binned = np.add.reduce(parts) / np.float32(b) if b > 1 else parts[0].copy()
    bmax = np.maximum.reduce(parts) if b > 1 else parts[0]
    lo, hi = float(img.min()), float(bmax.max())
    nan = np.full(w, np.nan)
    if hi - lo <= 0 or h < 16 or w < 4:  # blank, or too small to hold a retina
        return (nan, nan.copy(), np.zeros(w, bool)) if return_reliable else (nan, nan.copy())

    # 1. padding: saturated runs from an edge (through any constant minimum-value fill, e.g. left by flattening)
    #    and saturated blocks taller than any bright layer
    near = bmax >= hi - 0.03 * (hi - lo)
    edge = near | (bmax <= lo)
    rows = np.arange(h)[:, None]
    cols = np.arange(wb)

    def run(e: np.ndarray, sat: np.ndarray, axis: int) -> np.ndarray:
        """Length of the edge run along ``axis`` from index 0, counted only when it holds a saturated pixel."""
        length = _edge_run(e, axis)
        last = np.expand_dims(np.maximum(length - 1, 0), axis)
        has_sat = np.squeeze(np.take_along_axis(np.cumsum(sat, axis=axis), last, axis), axis) > 0
        return ndimage.maximum_filter1d(np.where(has_sat, length, 0), 3 if axis == 0 else 5)

    top, left = run(edge, near, 0), run(edge, near, 1)
    bot, right = run(edge[::-1], near[::-1], 0), run(edge[:, ::-1], near[:, ::-1], 1)
    top_end = np.where(top > 0, top + 3, 0)
    bot_start = h - np.where(bot > 0, bot + 3, 0)
    pad = (rows < top_end[None, :]) | (rows >= bot_start[None, :])
    pad |= (cols[None, :] < np.where(left > 0, left + 1, 0)[:, None]) | (
        cols[None, :] >= wb - np.where(right > 0, right + 1, 0)[:, None]
    )
    pad |= _vertical_opening(near, px(12))
    sample = binned[::2, ::2][~pad[::2, ::2]]
    if sample.size == 0:
        return (nan, nan.copy(), np.zeros(w, bool)) if return_reliable else (nan, nan.copy())
    fill, q_lo, q_v, q_hi = np.percentile(sample, [20, 5, 25, 99.5])
    binned[pad] = fill
    scale = q_hi - q_lo if q_hi > q_lo else 1.0
    s = (ndimage.gaussian_filter(binned, sigma=(2.0 * k, 1.0)) - q_lo) / scale
    v = (q_v - q_lo) / scale  # vitreous / background level

    # 2. RPE path and BM
    sc = np.clip(s, 0, 1.5)
    below_len, below_gap = px(150), px(8)
    below = ndimage.maximum_filter1d(sc, size=below_len, axis=0, origin=-(below_len // 2), mode="nearest")
    below = np.concatenate([below[below_gap:], np.repeat(below[-1:], below_gap, axis=0)])
    path = _brightest_path(-(sc - 0.7 * below), max(1, int(round(1.5 * b * k))))
    offs = np.arange(-px(4), px(18))
    idx = np.clip(path[None, :] + offs[:, None], 1, h - 2)
    win = s[idx, cols]
    pmax = win.max(axis=0)
    is_peak = (win >= s[idx - 1, cols]) & (win >= s[idx + 1, cols]) & (win >= (v + 0.75 * (pmax - v))[None, :])
    rpe = idx[len(offs) - 1 - np.argmax(is_peak[::-1], axis=0), cols]
    grad = np.diff(s, axis=0)  # grad[r] = s[r + 1] - s[r]
    # BM: the smooth path of steepest fall at the bottom of the RPE band (under drusen rather than over them)
    offs = np.arange(-px(2), px(20) + 1)
    idx = path[None, :] + offs[:, None]
    fall = np.where((idx >= 0) & (idx < h - 1), grad[np.clip(idx, 0, h - 2), cols], 10.0)
    bm = path + offs[_brightest_path(fall, max(1, int(round(b * k))))] + 0.5  # offset from the RPE path
    p = s[rpe, cols]

    # 3. ILM: top of the long tissue structures above the RPE
    open_len = px(7)
    strong = _vertical_opening((s > (v + 0.3 * (p - v))[None, :]) & (rows <= rpe[None, :]), open_len)
    lab, n = ndimage.label(strong)
    keep = np.zeros(n + 1, bool)
    if n:
        depth = ndimage.mean(np.broadcast_to(rpe[None, :] - rows, (h, wb)), lab, np.arange(1, n + 1))
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is not None and sl[1].stop - sl[1].start >= 0.1 * wb and depth[i - 1] < 0.75 * max_thickness * k:
                keep[i] = True
    keep[lab[np.clip(rpe - 2, 0, h - 1), cols]] = True
    keep[0] = False
    strong = keep[lab]
    weak = _vertical_opening((s > (v + 0.2 * (p - v))[None, :]) & (rows <= rpe[None, :]), open_len)
    labw, _ = ndimage.label(weak)
    keepw = np.zeros(labw.max() + 1, bool)
    keepw[np.unique(labw[strong])] = True
    keepw[0] = False
    tissue = keepw[labw]
    has = strong.any(axis=0)
    ilm0 = np.maximum(np.argmax(tissue, axis=0), np.argmax(strong, axis=0) - px(15))
    idx = np.clip(ilm0[None, :] + np.arange(-px(3), px(3) + 1)[:, None], 0, h - 2)
    ilm = idx[np.argmax(grad[idx, cols], axis=0), cols] + 0.5

    # 4. reliability, filling and smoothing
    contrast = p - v
    thick = bm - ilm
    reliable = has & (contrast > 0.3 * np.median(contrast)) & (thick > min_thickness * k)
    reliable &= (thick < max_thickness * k) & (ilm > top_end) & (bm + 3 < bot_start)
    for size, tol in ((9, 12.0), (25, 25.0), (25, 25.0)):
        # compare each column with the median of its neighbours, unreliable columns filled from reliable ones
        if reliable.sum() < 2:
            break
        for arr in (bm, ilm):
            filled = np.interp(cols, cols[reliable], arr[reliable])
            reliable &= np.abs(arr - ndimage.median_filter(filled, size=size, mode="nearest")) < tol * k
    if reliable.sum() < 2:
        return (nan, nan.copy(), np.zeros(w, bool)) if return_reliable else (nan, nan.copy())
    curves = []
    for arr in (ilm, bm):
        arr = np.interp(cols, cols[reliable], arr[reliable])
        arr = ndimage.gaussian_filter1d(ndimage.median_filter(arr, 5, mode="nearest"), 1.0, mode="nearest")
        curves.append(np.interp(np.arange(w), (cols + 0.5) * b - 0.5, arr))
    if not return_reliable:
        return curves[0], curves[1]
    full = np.zeros(w, bool)
    full[: wb * b] = np.repeat(reliable, b)
    full[wb * b :] = reliable[-1]
    return curves[0], curves[1], full


def axial_scale_from_meta(img: Any, default: float = 1.0) -> float:
    """Rows per 3.9 um from ``meta["pixel_spacing"]`` (row spacing in mm), ``default`` when unknown."""
    meta = getattr(img, "meta", None) or {}
    spacing = meta.get(OCTMetaKeys.PIXEL_SPACING)
    if spacing is None:
        return default
    try:
        row = float(np.asarray(convert_to_numpy(spacing, wrap_sequence=True), dtype=np.float64).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return default
    return REFERENCE_ROW_SPACING_MM / row if math.isfinite(row) and row > 0 else default


def _detect(img: Any, axial_scale: float | None) -> tuple[np.ndarray, np.ndarray]:
    scale = axial_scale_from_meta(img) if axial_scale is None else axial_scale
    ilm, bm = detect_retina_boundaries(img, axial_scale=scale)[:2]
    return ilm, bm


# ----------------------------------------------------------------------------------------------------------
# crop / pad around the retina
# ----------------------------------------------------------------------------------------------------------


class RetinaCrop(InvertibleTransform):
    """Crop (or pad) the rows of a (C, H, W) B-scan to a fixed ``height`` centred on the detected retina.

    The retina band runs from ``min(ILM) - margin_top`` to ``max(BM) + margin_bottom`` (the bottom margin keeps
    some choroid). The output window of ``height`` rows is centred on that band and, when the image has at
    least ``height`` rows, kept inside the image (no padding needed); an image shorter than ``height`` is
    padded (``pad_mode``) so that it lies wholly inside the window, as close to centred on the retina as
    possible. Columns are untouched.

    When the band is taller than ``height`` (a tilted or very thick retina), the margins shrink (the window
    still centred where possible) down to ``min_margin`` rows above the ILM and below BM. If even that does not
    fit (the retina itself spans more than about ``height`` rows):

    - ``oversize="keep"`` (default): the retina with ``min_margin`` is kept whole, so the output is taller than
      ``height`` (no rows of the retina are ever lost); follow with
      :class:`~medicraft_monai.transforms.OCTResize` for a fixed size;
    - ``oversize="crop"``: the output is exactly ``height`` rows, centred on the retina, which loses rows at
      both ends.

    Both emit a ``UserWarning`` naming the band height. When no retina is found (a blank image) the window is
    centred on the image, with a warning.

    The input row that became row 0 is stored in ``meta["retina_crop_start"]`` (negative when padded on top)
    with the original height in ``meta["retina_crop_orig_height"]``; for a ``MetaTensor`` the operation is also
    recorded in ``applied_operations`` so that :meth:`inverse` puts the rows back (rows cut away come back as
    zeros).

    Args:
        height: number of rows of the output.
        margin_top: rows kept above the highest ILM point (at ``axial_scale`` 1).
        margin_bottom: rows kept below the deepest BM point (at ``axial_scale`` 1).
        pad_mode: padding mode of :class:`monai.transforms.BorderPad` (``"constant"``, ``"edge"``, ...).
        oversize: ``"keep"`` or ``"crop"``, see above.
        axial_scale: rows per 3.9 um for the detector and margins; ``None`` reads ``meta["pixel_spacing"]``
            (1.0 when unknown).
        min_margin: the margins never shrink below this many rows (at ``axial_scale`` 1).
        pad_kwargs: other arguments of the padding function (for example ``value``).
    """

    def __init__(
        self,
        height: int = 256,
        margin_top: float = 16.0,
        margin_bottom: float = 48.0,
        pad_mode: str = "constant",
        oversize: str = "keep",
        axial_scale: float | None = None,
        min_margin: float = 8.0,
        **pad_kwargs: Any,
    ) -> None:
        if height < 1:
            raise ValueError(f"height must be positive, got {height}")
        if oversize not in ("keep", "crop"):
            raise ValueError(f"oversize must be 'keep' or 'crop', got {oversize!r}")
        self.height = int(height)
        self.margin_top = float(margin_top)
        self.margin_bottom = float(margin_bottom)
        self.pad_mode = pad_mode
        self.oversize = oversize
        self.axial_scale = axial_scale
        self.min_margin = float(min_margin)
        self.pad_kwargs = pad_kwargs

    def compute_window(self, img: Any, boundaries: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[int, int]:
        """Rows ``(start, stop)`` of the input that make the output (``start < 0`` or ``stop > H``: padding).

        Args:
            img: the (C, H, W) image.
            boundaries: ``(ilm_rows, bm_rows)`` to use instead of detecting them.
        """
        h = int(img.shape[-2])
        scale = axial_scale_from_meta(img) if self.axial_scale is None else float(self.axial_scale)
        ilm, bm = _detect(img, scale) if boundaries is None else (np.asarray(boundaries[0]), np.asarray(boundaries[1]))
        if not (np.isfinite(ilm).any() and np.isfinite(bm).any()):
            warnings.warn("RetinaCrop: no retina found; the window is centred on the image", stacklevel=3)
            full = minimal = (h / 2, h / 2)
        else:
            r0, r1 = float(np.nanmin(ilm)), float(np.nanmax(bm)) + 1.0
            full = (max(0.0, r0 - self.margin_top * scale), min(float(h), r1 + self.margin_bottom * scale))
            minimal = (max(0.0, r0 - self.min_margin * scale), min(float(h), r1 + self.min_margin * scale))
        centre = (full[0] + full[1]) / 2
        if full[1] - full[0] > self.height:
            if minimal[1] - minimal[0] <= self.height:
                # the margins shrink (evenly where possible) but the retina and min_margin stay
                centre = min(max(centre, minimal[1] - self.height / 2), minimal[0] + self.height / 2)
            elif self.oversize == "keep":
                start, stop = int(math.floor(minimal[0])), int(math.ceil(minimal[1]))
                warnings.warn(
                    f"RetinaCrop: the retina band is {stop - start} rows, more than height={self.height}; kept "
                    f"whole (output {stop - start} rows). Follow with OCTResize, raise height, or pass "
                    "oversize='crop'",
                    stacklevel=3,
                )
                return start, stop
            else:
                centre = (minimal[0] + minimal[1]) / 2
                warnings.warn(
                    f"RetinaCrop: the retina band is {int(round(minimal[1] - minimal[0]))} rows, more than "
                    f"height={self.height}; cropped to {self.height} rows, losing rows of the retina",
                    stacklevel=3,
                )
        start = int(round(centre - self.height / 2))
        if h >= self.height:
            start = min(max(start, 0), h - self.height)
        else:
            start = min(max(start, h - self.height), 0)
        return start, start + self.height

    def apply_window(self, img: Any, start: int, stop: int, mode: str | None = None) -> Any:
        """Crop/pad ``img`` to rows ``[start, stop)`` of the input and record it (see the class docstring)."""
        h = int(img.shape[-2])
        w = int(img.shape[-1])
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        crop = (max(0, start), min(h, stop))
        pad = (max(0, -start), max(0, stop - h))
        out = img_t
        cropper = SpatialCrop(roi_start=(crop[0], 0), roi_end=(crop[1], w))
        with cropper.trace_transform(False):
            out = cropper(out)
        if pad[0] or pad[1]:
            padder = BorderPad(spatial_border=(pad[0], pad[1], 0, 0), mode=mode or self.pad_mode, **self.pad_kwargs)
            with padder.trace_transform(False):
                out = padder(out)
        if isinstance(out, MetaTensor):
            out.meta = dict(out.meta)
            out.meta[CROP_START_KEY] = int(start)
            out.meta[CROP_ORIG_HEIGHT_KEY] = h
            self.push_transform(
                out, orig_size=(h, w), extra_info={"start": int(start), "crop": list(crop), "pad": list(pad)}
            )
        if not isinstance(img, torch.Tensor):
            out = convert_to_dst_type(out, img)[0]
        return out

    def __call__(  # type: ignore[override]
        self, img: Any, boundaries: tuple[np.ndarray, np.ndarray] | None = None, mode: str | None = None
    ) -> Any:
        """Crop/pad ``img`` around its retina.

        Args:
            img: a channel-first (C, H, W) image (numpy, torch or MetaTensor).
            boundaries: optional ``(ilm_rows, bm_rows)`` (skips detection).
            mode: padding mode for this call (defaults to ``pad_mode``).
        """
        if len(img.shape) != 3:
            raise DimensionalityError(
                None, f"RetinaCrop expects a channel-first (C, H, W) image, got {tuple(img.shape)}"
            )
        start, stop = self.compute_window(img, boundaries)
        return self.apply_window(img, start, stop, mode)

    def inverse(self, data: Any) -> Any:
        """Put the rows back where they were (rows that were cut away come back as zeros)."""
        transform = self.pop_transform(data)
        return self._undo(data, transform)

    @staticmethod
    def _undo(data: Any, transform: Mapping) -> Any:
        info = transform[TraceKeys.EXTRA_INFO]
        orig_h, w = (int(v) for v in transform[TraceKeys.ORIG_SIZE])
        crop, pad = info["crop"], info["pad"]
        h = int(data.shape[-2])
        out = data
        if pad[0] or pad[1]:
            cropper = SpatialCrop(roi_start=(int(pad[0]), 0), roi_end=(h - int(pad[1]), w))
            with cropper.trace_transform(False):
                out = cropper(out)
        if crop[0] or orig_h - crop[1]:
            padder = BorderPad(spatial_border=(int(crop[0]), orig_h - int(crop[1]), 0, 0))
            with padder.trace_transform(False):
                out = padder(out)
        if isinstance(out, MetaTensor):
            out.meta = dict(out.meta)
            out.meta.pop(CROP_START_KEY, None)
            out.meta.pop(CROP_ORIG_HEIGHT_KEY, None)
        return out


class RetinaCropd(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`RetinaCrop`: one window, found on ``source_key``, applied to every key.

    Args:
        keys: keys of the images (and masks) to crop.
        source_key: key of the image the retina is detected on (default: the first key).
        height, margin_top, margin_bottom, oversize, axial_scale, min_margin: see :class:`RetinaCrop`.
        pad_mode: padding mode, or a sequence with one mode per key.
        allow_missing_keys: do not fail on items without a key.
        pad_kwargs: other arguments of the padding function.
    """

    def __init__(
        self,
        keys: KeysCollection,
        source_key: Hashable | None = None,
        height: int = 256,
        margin_top: float = 16.0,
        margin_bottom: float = 48.0,
        pad_mode: str | Sequence[str] = "constant",
        oversize: str = "keep",
        axial_scale: float | None = None,
        min_margin: float = 8.0,
        allow_missing_keys: bool = False,
        **pad_kwargs: Any,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.source_key = self.keys[0] if source_key is None else source_key
        self.pad_mode = ensure_tuple_rep(pad_mode, len(self.keys))
        self.cropper = RetinaCrop(
            height, margin_top, margin_bottom, "constant", oversize, axial_scale, min_margin, **pad_kwargs
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        start, stop = self.cropper.compute_window(d[self.source_key])
        for key, mode in self.key_iterator(d, self.pad_mode):
            d[key] = self.cropper.apply_window(d[key], start, stop, mode)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.cropper.inverse(d[key])
        return d


# ----------------------------------------------------------------------------------------------------------
# flattening
# ----------------------------------------------------------------------------------------------------------


def _shift_columns(arr: np.ndarray, shifts: np.ndarray, order: int, mode: str, cval: float) -> np.ndarray:
    """``out[c, r, x] = arr[c, r - shifts[x], x]`` (sub-pixel with spline ``order``)."""
    c, h, w = arr.shape
    if order == 0:
        src = np.arange(h)[:, None] - np.rint(shifts)[None, :].astype(np.int64)
        inside = (src >= 0) & (src < h)
        if mode == "nearest":
            src, inside = np.clip(src, 0, h - 1), np.ones_like(inside)
        taken = np.take_along_axis(arr, np.broadcast_to(np.clip(src, 0, h - 1), (c, h, w)), axis=1)
        return np.where(inside[None], taken, np.asarray(cval, dtype=arr.dtype))
    rows = np.arange(h, dtype=np.float32)[:, None] - shifts[None, :].astype(np.float32)
    coords = np.stack([rows, np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], (h, w))])
    return np.stack(
        [
            ndimage.map_coordinates(arr[i], coords, order=order, mode=mode, cval=cval, prefilter=order > 1).astype(
                arr.dtype, copy=False
            )
            for i in range(c)
        ]
    )


def get_flatten_shifts(img: MetaTensor) -> np.ndarray:
    """The per-column row shifts of the most recent :class:`FlattenRetina` applied to ``img``.

    They live in the operation record (``img.applied_operations``), not in ``img.meta``: their length is the
    image width, which differs between images, and ``meta`` must stay collatable into batches.
    """
    for op in reversed(getattr(img, "applied_operations", []) or []):
        if op.get(TraceKeys.CLASS_NAME) in ("FlattenRetina", "FlattenRetinad"):
            return np.asarray(op[TraceKeys.EXTRA_INFO]["shifts"], dtype=np.float32)
    raise ValueError("no FlattenRetina record in applied_operations (was the image flattened as a MetaTensor?)")


class FlattenRetina(InvertibleTransform):
    """Shift every column vertically so that Bruch's membrane lies on one row.

    Bruch's membrane is detected with :func:`detect_retina_boundaries` (or given), smoothed across columns with
    a Gaussian of ``smooth`` columns (so that local bumps such as drusen stay visible while the curvature and
    tilt of the eye go), and column ``x`` is moved by ``target_row - bm[x]`` rows (sub-pixel, spline ``order``).
    Rows moved in from outside the image are filled with ``cval`` (``padding_mode="constant"``) or the edge
    value (``"nearest"``).

    The target row is stored in ``meta["retina_flatten_target_row"]``; the per-column shifts are recorded in
    ``applied_operations`` (see :func:`get_flatten_shifts`) and :meth:`inverse` shifts the columns back (rows
    that left the image come back as ``cval``).

    Args:
        target_row: row to put Bruch's membrane on; ``None`` keeps its mean row (rounded).
        smooth: Gaussian sigma, in columns, applied to the BM curve before computing the shifts (0: none).
        order: spline order of the resampling (0 = whole-row shifts, 1 = linear).
        padding_mode: ``"constant"`` or ``"nearest"``.
        cval: fill value for ``"constant"``.
        axial_scale: rows per 3.9 um for the detector; ``None`` reads ``meta["pixel_spacing"]``.
    """

    def __init__(
        self,
        target_row: float | None = None,
        smooth: float = 8.0,
        order: int = 1,
        padding_mode: str = "constant",
        cval: float = 0.0,
        axial_scale: float | None = None,
    ) -> None:
        if padding_mode not in ("constant", "nearest"):
            raise ValueError(f"padding_mode must be 'constant' or 'nearest', got {padding_mode!r}")
        if order not in (0, 1, 2, 3):
            raise ValueError(f"order must be 0..3, got {order}")
        self.target_row = target_row
        self.smooth = float(smooth)
        self.order = int(order)
        self.padding_mode = padding_mode
        self.cval = float(cval)
        self.axial_scale = axial_scale

    def compute_shifts(self, img: Any, bm_rows: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Per-column shifts (rows, positive = down) and the target row, for ``img`` or the given BM curve."""
        if bm_rows is None:
            bm_rows = _detect(img, self.axial_scale)[1]
        bm = np.asarray(bm_rows, dtype=np.float64)
        if bm.shape != (int(img.shape[-1]),):
            raise ValueError(f"bm_rows must have one row per column ({img.shape[-1]}), got shape {bm.shape}")
        if not np.isfinite(bm).all():
            warnings.warn("FlattenRetina: no Bruch's membrane found; the image is left as it is", stacklevel=3)
            return np.zeros(bm.shape, np.float32), float("nan")
        if self.smooth > 0:
            bm = ndimage.gaussian_filter1d(bm, self.smooth, mode="nearest")
        target = float(np.round(bm.mean())) if self.target_row is None else float(self.target_row)
        return (target - bm).astype(np.float32), target

    def apply_shifts(
        self, img: Any, shifts: np.ndarray, target: float, order: int | None = None, record: bool = True
    ) -> Any:
        """Shift the columns of ``img`` by ``shifts`` rows and record it."""
        if len(img.shape) != 3:
            raise DimensionalityError(None, f"FlattenRetina expects a (C, H, W) image, got {tuple(img.shape)}")
        order = self.order if order is None else int(order)
        arr = convert_to_numpy(img.as_tensor() if isinstance(img, MetaTensor) else img, wrap_sequence=True)
        out_arr = _shift_columns(np.asarray(arr), np.asarray(shifts), order, self.padding_mode, self.cval)
        out = convert_to_dst_type(out_arr, img)[0]
        if isinstance(out, MetaTensor):
            out.meta = dict(out.meta)
            out.meta[FLATTEN_TARGET_KEY] = target
            if record:
                self.push_transform(
                    out, extra_info={"shifts": np.asarray(shifts, np.float32), "order": order, "target_row": target}
                )
        return out

    def __call__(self, img: Any, bm_rows: np.ndarray | None = None, order: int | None = None) -> Any:  # type: ignore[override]
        """Flatten ``img`` (C, H, W); ``bm_rows`` skips detection, ``order`` overrides the spline order."""
        if len(img.shape) != 3:
            raise DimensionalityError(None, f"FlattenRetina expects a (C, H, W) image, got {tuple(img.shape)}")
        shifts, target = self.compute_shifts(img, bm_rows)
        return self.apply_shifts(img, shifts, target, order)

    def inverse(self, data: Any) -> Any:
        """Shift the columns back."""
        transform = self.pop_transform(data)
        return self._undo(data, transform)

    def _undo(self, data: Any, transform: Mapping) -> Any:
        info = transform[TraceKeys.EXTRA_INFO]
        shifts = -np.asarray(info["shifts"], dtype=np.float32)
        out = self.apply_shifts(data, shifts, float("nan"), int(info["order"]), record=False)
        if isinstance(out, MetaTensor):
            out.meta.pop(FLATTEN_TARGET_KEY, None)
        return out


class FlattenRetinad(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`FlattenRetina`: shifts found on ``source_key``, applied to every key.

    Args:
        keys: keys of the images (and masks) to flatten.
        source_key: key of the image Bruch's membrane is detected on (default: the first key).
        target_row, smooth, padding_mode, cval, axial_scale: see :class:`FlattenRetina`.
        order: spline order, or a sequence with one per key (use 0 for label masks).
        allow_missing_keys: do not fail on items without a key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        source_key: Hashable | None = None,
        target_row: float | None = None,
        smooth: float = 8.0,
        order: int | Sequence[int] = 1,
        padding_mode: str = "constant",
        cval: float = 0.0,
        axial_scale: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.source_key = self.keys[0] if source_key is None else source_key
        self.order = ensure_tuple_rep(order, len(self.keys))
        self.flattener = FlattenRetina(target_row, smooth, 1, padding_mode, cval, axial_scale)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        shifts, target = self.flattener.compute_shifts(d[self.source_key])
        for key, order in self.key_iterator(d, self.order):
            d[key] = self.flattener.apply_shifts(d[key], shifts, target, order)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.flattener.inverse(d[key])
        return d


RetinaCropD = RetinaCropDict = RetinaCropd
FlattenRetinaD = FlattenRetinaDict = FlattenRetinad
