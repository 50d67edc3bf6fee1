"""Automated anatomical plausibility checks for OCT B-scans.

A clinician reviewing generated B-scans (the medicraft medical team) found these failure modes: a doubled fovea, an
absent fovea, a hypoplastic (too shallow) fovea, an absent optic nerve head (ONH) on a plane that should cross it, a
totally corrupted image and an abnormal vessel diameter (a too wide vessel shadow) near the fovea. The same names are
the phantom's :data:`~medicraft_monai.data.phantom.DEFECTS`, so every check can be validated on phantom exams with
the failure injected (:func:`validate_on_phantom`) and its false-alarm rate measured on real images
(:func:`false_alarm_rate`).

Each B-scan is measured once (:meth:`AnatomyChecker.measure`):

1. the inner limiting membrane (ILM) and Bruch's membrane (BM) per column
   (:func:`~medicraft_monai.transforms.retina.detect_retina_boundaries`) and the retinal thickness profile
   (ILM to BM);
2. the RPE signal per column: the brightest (smoothed) pixel in a thin band just above BM, normalised between the
   vitreous level (0) and the typical RPE level of the scan (1). Retinal vessels shadow it over their width; inside
   the ONH it vanishes over a wide run of columns;
3. foveal pits: local minima of the thickness profile near the middle of the scan, each with its depth relative to
   the lower of the two rims around it (``(rim - floor) / rim``) and its width at half depth;
4. how much the scan looks like a layered retina: the share of the variance of the BM-flattened image explained
   by one depth profile (a B-scan: most of it; noise or scrambled blocks: little).

Lateral sizes are set in millimetres and converted with ``scan_length_mm`` (the scan line's length, which the image
width spans), depths relative to the retinal thickness, so one checker works at any resolution of the same scan
protocol (the phantom at 64 x 128, 128 x 256 or 256 x 512: ``scan_length_mm=12``; the OCT2017 Spectralis sample:
:meth:`AnatomyChecker.for_spectralis`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import MetaTensor
from monai.utils import convert_to_numpy
from scipy import ndimage, signal

from medicraft_monai.data.errors import DimensionalityError, OCTDataError
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.data.phantom import DEFECTS, BScanTruth, OCTPhantom, PhantomConfig
from medicraft_monai.transforms.retina import REFERENCE_ROW_SPACING_MM, detect_retina_boundaries
from medicraft_monai.utils import to_jsonable

__all__ = [
    "CHECKS",
    "AnatomyChecker",
    "AnatomyResult",
    "check_images",
    "false_alarm_rate",
    "phantom_image_truth",
    "summarise",
    "validate_on_phantom",
]

_LIFTED_RPE = 0.85  # normalised signal of a bright line taken for a (lifted) RPE
_MIN_DIP = 0.02  # dips shallower than this (relative to their rim) are not listed as pits

CHECKS: tuple[str, ...] = tuple(DEFECTS)
"""Names of the checks: the phantom's failure modes (``doubled_fovea``, ``absent_fovea``, ``hypoplastic_fovea``,
``absent_onh``, ``corrupted_image``, ``abnormal_vessel_diameter``)."""


@dataclass
class AnatomyResult:
    """The verdict on one B-scan.

    Attributes:
        checks: check name (:data:`CHECKS`) -> ``True`` (pass), ``False`` (fail) or ``None`` (not applicable: the
            ONH check without an expected ONH; every other check of a corrupted image; the hypoplastic check when
            there is no fovea).
        passed: no check failed.
        measurements: what the checks are based on (see :meth:`AnatomyChecker.measure`).
        failures: names of the failed checks.
        boundaries: ``{"ILM": (W,), "BM": (W,)}`` rows of the detected boundaries (NaN when there is no retina).
    """

    checks: dict[str, bool | None]
    passed: bool
    measurements: dict[str, Any]
    failures: list[str]
    boundaries: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (without the boundary arrays)."""
        return {
            "checks": dict(self.checks),
            "passed": bool(self.passed),
            "failures": list(self.failures),
            "measurements": to_jsonable(self.measurements, ndigits=5, where="measurements"),
        }


def _as_hw(image: Any, what: str | None = None) -> np.ndarray:
    """(H, W) float64 from a (H, W) or (1, H, W) array, tensor or MetaTensor."""
    arr = convert_to_numpy(image.as_tensor() if isinstance(image, MetaTensor) else image, wrap_sequence=True)
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise DimensionalityError(what, f"expected one B-scan (H, W) or (1, H, W), got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise OCTDataError(what, f"image has {int((~np.isfinite(arr)).sum())} NaN or infinite pixel(s)")
    return arr


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True values."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.diff(m.astype(np.int8))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1) - 1
    return list(zip(starts.tolist(), ends.tolist()))


class AnatomyChecker:
    """Anatomical plausibility checks for one OCT B-scan (a line scan through the fovea).

    Lateral settings are millimetres along the scan line (converted to columns with ``scan_length_mm``), depth
    settings are relative to the retinal thickness or to the RPE signal, so the checker works at any image size of
    one scan protocol. The defaults suit the phantom (12 mm lines, 2 mm deep); use :meth:`for_spectralis` for 6 mm
    Spectralis line scans such as the OCT2017 sample.

    Args:
        scan_length_mm: length of the scan line that the image width spans.
        depth_mm: imaged depth that the image height spans (sets the boundary detector's axial scale).
        smooth_mm: Gaussian smoothing (sigma) of the thickness profile before the pits are measured.
        fovea_search_mm: pits are searched within this distance of the scan's centre.
        pit_rim_mm: a pit's rims are the highest thickness within this distance on either side.
        pit_min_depth: a dip shallower than this (relative to its lower rim) is no pit: no pit at all fails
            ``absent_fovea``.
        pit_normal_depth: the deepest pit shallower than this fails ``hypoplastic_fovea``.
        double_pit_depth: a second pit at least this deep and ``double_pit_separation_mm`` away from the deepest
            fails ``doubled_fovea``.
        double_pit_ratio: ... and at least this share of the deepest pit's depth.
        double_pit_separation_mm: smallest distance between the two pits of a doubled fovea.
        onh_rpe_level: columns whose normalised RPE signal (median over 0.1 mm) is below this may belong to the ONH.
        onh_min_width_mm: a run of such columns at least this wide is the ONH (``absent_onh`` passes when one is
            found and an ONH is expected).
        onh_lift_mm: columns with an RPE-bright line (normalised signal >= 0.85) up to this far above the detected
            BM are not ONH (an RPE lifted by a lesion, under which the detector cut).
        vessel_shadow_level: columns whose normalised RPE signal is below this are shadowed (by a vessel).
        vessel_max_width_mm: a shadow at least this wide within ``vessel_zone_mm`` of the fovea fails
            ``abnormal_vessel_diameter``.
        vessel_zone_mm: distance from the fovea (the scan's centre when no fovea is found) searched for vessels.
        corrupt_min_layering: a scan whose BM-flattened image is explained less than this by one depth profile
            fails ``corrupted_image``.
        corrupt_min_reliable: a scan whose boundaries are reliable in fewer than this share of the columns fails
            ``corrupted_image``.
        corrupt_min_contrast: a scan whose RPE level is less than this above the vitreous level, in units of the
            image's intensity range (1st to 99.9th percentile), fails ``corrupted_image``.
    """

    def __init__(
        self,
        scan_length_mm: float = 12.0,
        depth_mm: float = 2.0,
        smooth_mm: float = 0.1,
        fovea_search_mm: float = 2.5,
        pit_rim_mm: float = 1.5,
        pit_min_depth: float = 0.045,
        pit_normal_depth: float = 0.16,
        double_pit_depth: float = 0.08,
        double_pit_ratio: float = 0.4,
        double_pit_separation_mm: float = 1.2,
        onh_rpe_level: float = 0.65,
        onh_min_width_mm: float = 1.0,
        onh_lift_mm: float = 0.8,
        vessel_shadow_level: float = 0.6,
        vessel_max_width_mm: float = 0.13,
        vessel_zone_mm: float = 1.6,
        corrupt_min_layering: float = 0.35,
        corrupt_min_reliable: float = 0.5,
        corrupt_min_contrast: float = 0.15,
    ) -> None:
        if not scan_length_mm > 0 or not depth_mm > 0:
            raise ValueError(f"scan_length_mm and depth_mm must be positive, got {scan_length_mm}, {depth_mm}")
        self.scan_length_mm = float(scan_length_mm)
        self.depth_mm = float(depth_mm)
        self.smooth_mm = float(smooth_mm)
        self.fovea_search_mm = float(fovea_search_mm)
        self.pit_rim_mm = float(pit_rim_mm)
        self.pit_min_depth = float(pit_min_depth)
        self.pit_normal_depth = float(pit_normal_depth)
        self.double_pit_depth = float(double_pit_depth)
        self.double_pit_ratio = float(double_pit_ratio)
        self.double_pit_separation_mm = float(double_pit_separation_mm)
        self.onh_rpe_level = float(onh_rpe_level)
        self.onh_min_width_mm = float(onh_min_width_mm)
        self.onh_lift_mm = float(onh_lift_mm)
        self.vessel_shadow_level = float(vessel_shadow_level)
        self.vessel_max_width_mm = float(vessel_max_width_mm)
        self.vessel_zone_mm = float(vessel_zone_mm)
        self.corrupt_min_layering = float(corrupt_min_layering)
        self.corrupt_min_reliable = float(corrupt_min_reliable)
        self.corrupt_min_contrast = float(corrupt_min_contrast)

    # ---------------------------------------------------------------------------------------------- presets
    @classmethod
    def for_phantom(cls, config: PhantomConfig | None = None, **overrides: Any) -> AnatomyChecker:
        """A checker for phantom images made with ``config`` (its scan length and depth)."""
        c = config or PhantomConfig()
        kw: dict[str, Any] = {"scan_length_mm": c.scan_length_mm, "depth_mm": c.depth_mm}
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def for_spectralis(cls, **overrides: Any) -> AnatomyChecker:
        """A checker for Spectralis 6 mm horizontal line scans through the fovea (496 rows over 1.9 mm)."""
        kw: dict[str, Any] = {"scan_length_mm": 6.0, "depth_mm": 1.9, "fovea_search_mm": 1.8, "pit_rim_mm": 1.4}
        kw.update(overrides)
        return cls(**kw)

    def settings(self) -> dict[str, float]:
        """The checker's settings (constructor arguments)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, float)}

    # ------------------------------------------------------------------------------------------- measuring
    def measure(self, image: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Measure one B-scan; returns the measurements and the detected boundaries.

        Measurements: ``retina_found``, ``reliable_fraction``, ``layering``, ``contrast``, ``thickness_mm``
        (median), ``pits`` (list of {column, depth, width_mm}), ``n_pits``, ``fovea_column``, ``fovea_depth``,
        ``fovea_width_mm``, ``onh_found``, ``onh_columns``, ``onh_width_mm``, ``onh_relative_thickness``, ``lifted_rpe_columns`` (columns
        where a lifted RPE was followed), ``vessel_shadows`` (list of
        {column, width_mm, level} near the fovea), ``max_vessel_width_mm``.
        """
        img = _as_hw(image)
        h, w = img.shape
        lo, hi = np.percentile(img, [1.0, 99.9])
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        row_mm, col_mm = self.depth_mm / h, self.scan_length_mm / w
        mm = lambda v: v / col_mm  # noqa: E731 - millimetres to columns
        m: dict[str, Any] = {
            "retina_found": False,
            "reliable_fraction": 0.0,
            "layering": 0.0,
            "contrast": 0.0,
            "thickness_mm": float("nan"),
            "pits": [],
            "n_pits": 0,
            "fovea_column": None,
            "fovea_depth": 0.0,
            "fovea_width_mm": 0.0,
            "onh_found": False,
            "onh_columns": None,
            "onh_width_mm": 0.0,
            "onh_relative_thickness": None,
            "lifted_rpe_columns": 0,
            "vessel_shadows": [],
            "max_vessel_width_mm": 0.0,
        }
        nan = np.full(w, np.nan)
        bounds = {"ILM": nan, "BM": nan.copy()}
        if h < 16 or w < 16 or hi <= lo:
            return m, bounds
        axial = REFERENCE_ROW_SPACING_MM / row_mm
        ilm, bm, reliable = detect_retina_boundaries(img.astype(np.float32), axial_scale=axial, return_reliable=True)
        bounds = {"ILM": ilm, "BM": bm}
        if not np.isfinite(ilm).all() or not np.isfinite(bm).all():
            return m, bounds
        m["retina_found"] = True
        m["reliable_fraction"] = float(reliable.mean())
        rows = np.arange(h)[:, None]
        cols = np.arange(w)

        # smoothed image, vitreous level, RPE signal just above BM
        s = ndimage.gaussian_filter(img, sigma=(max(0.5, 0.008 / row_mm), max(0.5, 0.01 / col_mm)))
        above = (rows < (ilm - 0.03 / row_mm)[None, :]) & (s < 0.97)  # saturated padding is no vitreous
        vit = float(np.median(s[above])) if above.sum() > 0.02 * h * w else float(np.percentile(s, 5))
        band = np.arange(-max(2, int(round(0.07 / row_mm))), max(1, int(round(0.01 / row_mm))) + 1)
        idx = np.clip(np.round(bm).astype(int)[None, :] + band[:, None], 0, h - 1)
        rpe_raw = s[idx, cols].max(axis=0)
        ref = float(np.percentile(rpe_raw[reliable] if reliable.sum() > 0.2 * w else rpe_raw, 75))
        m["contrast"] = float(ref - vit)
        # the RPE level varies slowly across a real scan (tilt, vignetting): normalise by a local reference (a high
        # percentile over +-2 mm, at least half the global one)
        local = ndimage.percentile_filter(rpe_raw, 85, size=max(3, int(round(mm(4.0)))), mode="nearest")
        local = np.maximum(local, vit + 0.5 * (ref - vit))
        rpe = (rpe_raw - vit) / np.maximum(local - vit, 1e-6)

        # an RPE-bright line up to onh_lift_mm above a weak RPE signal is an RPE lifted by a lesion (a dome that the
        # boundary detector cut under): follow it (BM just below its brightest row); such columns are no ONH
        tall = np.arange(-max(2, int(round(self.onh_lift_mm / row_mm))), band[-1] + 1)
        tidx = np.clip(np.round(bm).astype(int)[None, :] + tall[:, None], 0, h - 1)
        tsig = s[tidx, cols]
        lifted = ((tsig.max(axis=0) - vit) / np.maximum(local - vit, 1e-6) >= _LIFTED_RPE) & (rpe < self.onh_rpe_level)
        for a, b in _runs(lifted):  # only wide runs: a vessel's bright cross-section above its shadow is no RPE
            if (b - a + 1) * col_mm < self.onh_min_width_mm:
                lifted[a : b + 1] = False
        if lifted.any():
            fixed = tidx[np.argmax(tsig, axis=0), cols] + 0.02 / row_mm
            bm = np.where(lifted, fixed, bm)
            bm = np.where(lifted, ndimage.median_filter(bm, max(3, int(mm(0.1))) | 1, mode="nearest"), bm)
            # the ILM was cut under the dome too: the first tissue row within 0.6 mm above the lifted BM
            s2 = ndimage.gaussian_filter(img, sigma=(max(1.0, 0.02 / row_mm), max(1.0, 0.02 / col_mm)))
            thr = vit + 0.25 * (ref - vit)
            lc = np.flatnonzero(lifted)
            win = np.arange(-max(2, int(round(0.6 / row_mm))), -max(1, int(round(0.05 / row_mm))))
            widx = np.clip(np.round(bm[lc]).astype(int)[None, :] + win[:, None], 0, h - 1)
            hit = s2[widx, lc] > thr
            top = np.where(hit.any(axis=0), widx[np.argmax(hit, axis=0), np.arange(len(lc))], ilm[lc])
            ilm = ilm.copy()
            ilm[lc] = np.minimum(top, ilm[lc])
            bounds["BM"], bounds["ILM"] = bm, ilm
            rpe = np.where(lifted, (tsig.max(axis=0) - vit) / np.maximum(local - vit, 1e-6), rpe)

        # layering: variance of the BM-flattened image explained by its mean depth profile
        offs = np.arange(-int(round(0.6 / row_mm)), int(round(0.25 / row_mm)) + 1)
        fidx = np.round(bm).astype(int)[None, :] + offs[:, None]
        inside = (fidx >= 0) & (fidx < h)
        flat = np.where(inside, s[np.clip(fidx, 0, h - 1), cols], np.nan)
        ok = inside.mean(axis=1) > 0.5
        flat = flat[ok]
        total = np.nanvar(flat)
        resid = np.nanvar(flat - np.nanmean(flat, axis=1, keepdims=True))
        m["layering"] = float(1.0 - resid / total) if total > 0 else 0.0

        # thickness profile (ILM to BM), relative to its median
        thick = ndimage.gaussian_filter1d(bm - ilm, max(1.0, mm(self.smooth_mm)), mode="nearest")
        med = float(np.median(thick))
        m["thickness_mm"] = med * row_mm

        # ONH: a wide run of columns with a weak RPE signal (Bruch's membrane opening). The retina dips into the cup
        # there, but the ILM detector is unreliable inside the disc: the thickness is recorded, not required.
        onh = None
        low = ndimage.median_filter(rpe, max(3, int(round(mm(0.1)))) | 1, mode="nearest") < self.onh_rpe_level
        low = ndimage.binary_closing(low, structure=np.ones(max(1, int(round(mm(0.15))))))
        cand = []
        for a, b in _runs(low):
            rel_thick = float(np.mean(thick[a : b + 1])) / med if med > 0 else 1.0
            if (b - a + 1) * col_mm >= self.onh_min_width_mm:
                cand.append((b - a, a, b, rel_thick))
        if cand:
            _, a, b, rel_thick = max(cand)
            onh = (int(a), int(b))
            m["onh_found"] = True
            m["onh_columns"] = onh
            m["onh_width_mm"] = float((b - a + 1) * col_mm)
            m["onh_relative_thickness"] = rel_thick

        # foveal pits: dips of the thickness profile near the scan's centre (at least 2% deep)
        valid = np.ones(w, bool)
        if onh is not None:
            valid[max(0, onh[0] - int(mm(0.8))) : onh[1] + int(mm(0.8)) + 1] = False
        if lifted.any():  # boundaries repaired under a dome are too rough for pits
            valid &= ~ndimage.binary_dilation(lifted, iterations=max(1, int(mm(0.3))))
        m["lifted_rpe_columns"] = int(lifted.sum())
        centre = w // 2
        search = np.abs(cols - centre) <= mm(self.fovea_search_mm)
        rim = max(2, int(round(mm(self.pit_rim_mm))))
        with warnings.catch_warnings():  # plateaus give zero-width peaks: not pits, filtered below
            warnings.filterwarnings("ignore", message="some peaks have a width of 0")
            peaks, props = signal.find_peaks(-thick, width=1, rel_height=0.5)
        pits = []
        for p, pw in zip(peaks, props["widths"]):
            if not (search[p] and valid[p]):
                continue
            left = thick[max(0, p - rim) : p]
            right = thick[p + 1 : p + 1 + rim]
            if not len(left) or not len(right):
                continue
            r = min(float(left.max()), float(right.max()))
            depth = (r - float(thick[p])) / r if r > 0 else 0.0
            if depth >= _MIN_DIP:
                pits.append({"column": int(p), "depth": float(depth), "width_mm": float(pw * col_mm)})
        pits.sort(key=lambda d: -d["depth"])
        kept: list[dict[str, Any]] = []
        for pit in pits:  # one pit per place: the deepest within the separation distance
            if all(abs(pit["column"] - k["column"]) * col_mm >= 0.5 * self.double_pit_separation_mm for k in kept):
                kept.append(pit)
        m["pits"] = kept
        sig = [p for p in kept if p["depth"] >= self.pit_min_depth]
        m["n_pits"] = len(sig)
        if kept:
            m["fovea_depth"] = kept[0]["depth"]
        if sig:
            m["fovea_column"] = sig[0]["column"]
            m["fovea_width_mm"] = sig[0]["width_mm"]

        # vessel shadows near the fovea (the scan's centre when there is none; between two pits)
        shadow = rpe < self.vessel_shadow_level
        if onh is not None:
            shadow[onh[0] : onh[1] + 1] = False
        if len(sig) >= 2 and sig[1]["depth"] >= self.double_pit_depth:  # between the pits of a doubled fovea
            fc = 0.5 * (sig[0]["column"] + sig[1]["column"])
        else:
            fc = float(sig[0]["column"]) if sig else float(centre)
        shadows = []
        for a, b in _runs(shadow):
            c = 0.5 * (a + b)
            if abs(c - fc) * col_mm <= self.vessel_zone_mm and (b - a + 1) * col_mm < self.onh_min_width_mm:
                shadows.append(
                    {"column": float(c), "width_mm": float((b - a + 1) * col_mm), "level": float(rpe[a : b + 1].min())}
                )
        m["vessel_shadows"] = shadows
        m["max_vessel_width_mm"] = max((v["width_mm"] for v in shadows), default=0.0)
        m["_rpe_signal"] = rpe
        return m, bounds

    # -------------------------------------------------------------------------------------------- checking
    def check(self, image: Any, expect_onh: bool | None = None) -> AnatomyResult:
        """Check one B-scan (``(H, W)`` or ``(1, H, W)``, any intensity scale).

        Args:
            image: the B-scan.
            expect_onh: whether the plane should cross the optic nerve head (a radial plane towards the disc);
                ``None`` or ``False``: the ``absent_onh`` check is not applicable.
        """
        m, bounds = self.measure(image)
        rpe = m.pop("_rpe_signal", None)
        checks: dict[str, bool | None] = dict.fromkeys(CHECKS)
        corrupted = (
            not m["retina_found"]
            or m["reliable_fraction"] < self.corrupt_min_reliable
            or m["layering"] < self.corrupt_min_layering
            or m["contrast"] < self.corrupt_min_contrast
        )
        checks["corrupted_image"] = not corrupted
        if not corrupted:
            pits = [p for p in m["pits"] if p["depth"] >= self.pit_min_depth]
            deep = pits[0]["depth"] if pits else 0.0
            second = [p for p in pits[1:] if p["depth"] >= max(self.double_pit_depth, self.double_pit_ratio * deep)]
            far = [
                p
                for p in second
                if abs(p["column"] - pits[0]["column"]) * self.scan_length_mm / len(bounds["ILM"])
                >= self.double_pit_separation_mm
            ]
            checks["absent_fovea"] = bool(pits)
            checks["doubled_fovea"] = not (far and deep >= self.double_pit_depth)
            checks["hypoplastic_fovea"] = None if not pits else deep >= self.pit_normal_depth
            checks["absent_onh"] = bool(m["onh_found"]) if expect_onh else None
            checks["abnormal_vessel_diameter"] = m["max_vessel_width_mm"] < self.vessel_max_width_mm
        failures = [k for k in CHECKS if checks[k] is False]
        if rpe is not None:
            bounds["rpe_signal"] = rpe
        return AnatomyResult(checks=checks, passed=not failures, measurements=m, failures=failures, boundaries=bounds)

    __call__ = check


# ---------------------------------------------------------------------------------------------------- batches
def _load(item: Any) -> tuple[np.ndarray, str | None, str | None]:
    """(image (H, W), class name or None, path or None) of an array, a path or a datalist item."""
    from medicraft_monai.data.io import read_bscan

    label = None
    if isinstance(item, Mapping):
        label = item.get(OCTKeys.CLASS_NAME, item.get(OCTKeys.LABEL))
        frame = int(item.get(OCTKeys.FRAME, 0) or 0)
        item = item[OCTKeys.IMAGE]
    else:
        frame = 0
    if isinstance(item, (str, PathLike)):
        arr, _ = read_bscan(item, frame)
        path = str(item)
        if label is None:
            label = Path(item).parent.name
        return _as_hw(arr, path), None if label is None else str(label), path
    return _as_hw(item), None if label is None else str(label), None


def check_images(
    images: Any,
    expect_onh: bool | None | Sequence[bool | None] = None,
    progress: bool = True,
    checker: AnatomyChecker | None = None,
) -> list[AnatomyResult]:
    """Check a batch: a ``(N, 1, H, W)`` or ``(N, H, W)`` array/tensor, or a sequence of images, paths or datalist
    items (``{"image": path, ...}``).

    Args:
        images: the B-scans.
        expect_onh: one value for all or one per image (see :meth:`AnatomyChecker.check`).
        progress: show a tqdm progress bar.
        checker: the checker (default :class:`AnatomyChecker()`: the phantom's 12 mm scan lines).
    """
    from tqdm.auto import tqdm

    checker = checker or AnatomyChecker()
    if hasattr(images, "ndim") and images.ndim in (3, 4):
        seq: Sequence[Any] = [images[i] for i in range(images.shape[0])]
    else:
        seq = list(images)
    expect = list(expect_onh) if isinstance(expect_onh, Sequence) else [expect_onh] * len(seq)
    if len(expect) != len(seq):
        raise ValueError(f"expect_onh has {len(expect)} values for {len(seq)} images")
    out = []
    for item, e in zip(tqdm(seq, desc="anatomy checks", disable=not progress), expect):
        img, _, _ = _load(item)
        out.append(checker.check(img, expect_onh=e))
    return out


def summarise(results: Sequence[AnatomyResult], labels: Sequence[Any] | None = None) -> dict[str, Any]:
    """Share of images passing overall, per class (``labels``: one per result) and per failure mode.

    Returns ``{"n", "passed", "pass_rate", "failure_rate": {check: share failing among applicable},
    "applicable": {check: count}, "per_class": {label: the same for its images}}``.
    """

    def block(rs: Sequence[AnatomyResult]) -> dict[str, Any]:
        n = len(rs)
        applicable = {k: sum(r.checks.get(k) is not None for r in rs) for k in CHECKS}
        failed = {k: sum(r.checks.get(k) is False for r in rs) for k in CHECKS}
        passed = sum(r.passed for r in rs)
        return {
            "n": n,
            "passed": passed,
            "pass_rate": passed / n if n else float("nan"),
            "failures": failed,
            "applicable": applicable,
            "failure_rate": {k: failed[k] / applicable[k] if applicable[k] else None for k in CHECKS},
        }

    out = block(results)
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(results):
            raise ValueError(f"{len(labels)} labels for {len(results)} results")
        out["per_class"] = {
            str(c): block([r for r, lab in zip(results, labels) if lab == c]) for c in sorted(set(labels), key=str)
        }
    return out


# ------------------------------------------------------------------------------------------------- validation
def _plane_crosses_onh(meta: Mapping[str, Any], angle: float, half_length_mm: float) -> bool:
    """Whether the radial plane at ``angle`` (viewer coordinates) crosses the exam's disc (present or removed)."""
    x, y = meta["onh_center_xy_mm"]
    r = float(meta["onh_radius_mm"])
    a = math.radians(angle)
    along = x * math.cos(a) + y * math.sin(a)
    perp = abs(-x * math.sin(a) + y * math.cos(a))
    return perp < r and -half_length_mm < along < half_length_mm


def phantom_image_truth(truth: BScanTruth, crosses_onh: bool) -> dict[str, bool]:
    """Which failure modes one phantom B-scan shows (check name -> True when the defect is visible)."""
    d = truth.defect
    return {
        "doubled_fovea": d == "doubled_fovea" and len(truth.fovea_columns) == 2,
        "absent_fovea": d == "absent_fovea",
        "hypoplastic_fovea": d == "hypoplastic_fovea",
        "absent_onh": d == "absent_onh" and crosses_onh,
        "corrupted_image": d == "corrupted_image",
        "abnormal_vessel_diameter": d == "abnormal_vessel_diameter" and bool(np.any(truth.vessel_abnormal)),
    }


def validate_on_phantom(
    n_exams: int = 6,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    checker: AnatomyChecker | None = None,
    progress: bool = True,
    classes: Sequence[str] | None = None,
    config: PhantomConfig | None = None,
) -> dict[str, Any]:
    """Sensitivity and specificity of every check on phantom exams with known defects.

    For each of ``n_exams`` eyes (exam seeds ``seed * 100003 + i``, classes in turn, lateralities alternating) a
    clean exam and one exam per defect are generated. Each B-scan's truth (:func:`phantom_image_truth`) says which
    failure it shows: a removed ONH only on the planes that should cross the disc, an abnormal vessel only on the
    planes that cross it; the other planes of a defective exam count as clean. Planes that should cross the disc are
    checked with ``expect_onh=True``.

    Per check: positives are the images showing that failure, negatives the images showing none; ``sensitivity =
    tp / (tp + fn)``, ``specificity = tn / (tn + fp)`` (a check that is not applicable counts as passing).
    ``confusion[defect][check]`` is the share of the images showing ``defect`` (or ``"none"``) that fail
    ``check``.

    Args:
        n_exams: eyes per defect (each eye gives ``n_planes`` B-scans per exam).
        seed: seed of the set (use different seeds for tuning and reporting).
        image_size: (H, W) of the rendered B-scans (default ``config``'s, 256 x 512).
        checker: default :meth:`AnatomyChecker.for_phantom` of the config.
        progress: show a tqdm progress bar.
        classes: phantom classes to cycle through (default all of the config's).
        config: phantom settings.
    """
    from tqdm.auto import tqdm

    config = config or PhantomConfig()
    if image_size is not None:
        config = PhantomConfig(**{**asdict(config), "height": int(image_size[0]), "width": int(image_size[1])})
    checker = checker or AnatomyChecker.for_phantom(config)
    phantom = OCTPhantom(config)
    names = list(classes) if classes is not None else list(config.classes)
    kinds: list[str | None] = [None, *DEFECTS]
    counts = {k: {"tp": 0, "fn": 0, "tn": 0, "fp": 0} for k in CHECKS}
    flagged: dict[str, dict[str, int]] = {t: dict.fromkeys(CHECKS, 0) for t in ["none", *CHECKS]}
    shown: dict[str, int] = dict.fromkeys(["none", *CHECKS], 0)
    records = []
    jobs = [(i, d) for i in range(int(n_exams)) for d in kinds]
    for i, defect in tqdm(jobs, desc="phantom validation", disable=not progress):
        exam_seed = int(seed) * 100003 + i
        cls = names[i % len(names)]
        lat = "R" if i % 2 == 0 else "L"
        exam = phantom.generate_exam(exam_seed, cls, lat, defect=defect)
        half = 0.5 * config.scan_length_mm
        for img, t, angle in zip(exam.images, exam.truths, exam.plane_angles):
            crosses = _plane_crosses_onh(exam.meta, float(angle), half)
            truth = phantom_image_truth(t, crosses)
            res = checker.check(img, expect_onh=True if crosses else None)
            visible = [k for k, v in truth.items() if v]
            tag = visible[0] if visible else "none"
            shown[tag] += 1
            for k in CHECKS:
                fail = res.checks[k] is False
                flagged[tag][k] += int(fail)
                if truth[k]:
                    counts[k]["tp" if fail else "fn"] += 1
                elif not visible:
                    counts[k]["fp" if fail else "tn"] += 1
            records.append(
                {
                    "exam_seed": exam_seed,
                    "class_name": cls,
                    "laterality": lat,
                    "plane_angle": float(angle),
                    "defect": defect,
                    "shows": tag,
                    "failures": res.failures,
                }
            )
    checks = {}
    for k, c in counts.items():
        pos, neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
        checks[k] = {
            **c,
            "sensitivity": c["tp"] / pos if pos else None,
            "specificity": c["tn"] / neg if neg else None,
        }
    return {
        "seed": int(seed),
        "n_exams": int(n_exams),
        "image_size": [config.height, config.width],
        "n_images": len(records),
        "classes": names,
        "checker": checker.settings(),
        "checks": checks,
        "images_showing": shown,
        "confusion": {t: {k: flagged[t][k] / shown[t] if shown[t] else None for k in CHECKS} for t in flagged},
        "records": records,
    }


def false_alarm_rate(
    paths_or_items: Iterable[Any],
    checker: AnatomyChecker | None = None,
    progress: bool = True,
    labels: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """How often the checks fail on real B-scans, per class and per check (``absent_onh`` is not applicable).

    Args:
        paths_or_items: image paths (the class is the parent folder's name, as in the OCT2017 sample) or datalist
            items (the class is ``class_name``, else ``label``).
        checker: default :meth:`AnatomyChecker.for_spectralis` (6 mm line scans through the fovea).
        progress: show a tqdm progress bar.
        labels: class of each image (overrides the paths' and items').

    Returns:
        :func:`summarise` of the results (``failure_rate`` is the false-alarm rate where the images are healthy;
        ``1 - pass_rate``: images with any alarm) plus ``files`` -> failures for every image that failed.
    """
    from tqdm.auto import tqdm

    checker = checker or AnatomyChecker.for_spectralis()
    items = list(paths_or_items)
    results, names, failed = [], [], {}
    for k, item in enumerate(tqdm(items, desc="anatomy checks (real)", disable=not progress)):
        img, label, path = _load(item)
        res = checker.check(img, expect_onh=None)
        results.append(res)
        names.append(str(labels[k]) if labels is not None else (label or "unknown"))
        if res.failures:
            failed[path or str(k)] = res.failures
    out = summarise(results, names)
    out["checker"] = checker.settings()
    out["failed_files"] = failed
    return out
