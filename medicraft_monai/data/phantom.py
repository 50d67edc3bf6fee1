"""The procedural OCT phantom: realistic radial OCT exams with exact ground truth.

An exam is ``n_planes`` radial B-scans through the foveal centre, one every ``360 / n_planes`` degrees, all cut from
ONE three-dimensional eye model per exam, so the planes agree with each other:

* a retinal layer-thickness map with a foveal pit at the centre (the inner layers thin to zero in the pit, the
  outer nuclear layer and the photoreceptors continue and thicken),
* the optic nerve head (ONH) on the nasal side (set by laterality): Bruch's membrane opening, the retina thinning
  into the disc and a cup, no RPE or choroid inside the opening,
* retinal vessels as curves radiating from the ONH in the en-face plane (arcades, nasal vessels, macular branches
  and small perifoveal vessels); a B-scan shows each crossing as a bright cross-section with a shadow below,
* a choroid with a vessel-like texture, the sclera fading below it,
* a lesion as a 2-D footprint in the en-face plane with a height profile: a choroidal nevus (flat,
  hyper-reflective choroidal thickening under an intact RPE) or a melanoma (a dome-shaped choroidal mass lifting
  the RPE, with subretinal fluid between the photoreceptors and the RPE).

The B-scan is rendered in the linear intensity domain (layer reflectivities, attenuation along depth, vessel and
lesion shadows, signal fall-off with depth, a noise floor and multiplicative gamma speckle) and log-compressed to
a display image in ``[0, 1]`` (float32), as an OCT device shows it.

Geometry conventions (the project's): rows are depth (row 0 at the vitreous side), columns the scan line; the
plane angle is the direction of the scan line from its first to its last column in the en-face plane seen from
the front, counter-clockwise from the viewer's right. Column ``c`` lies at ``s = (c - W // 2) * dx`` mm along the
line, so the fovea (the line's centre) is column ``W // 2``. A right eye's ONH lies to the viewer's right of the
fovea (``+x``), a left eye's to the left; the left eye is the mirror image of the right eye.

Ground truth (:class:`BScanTruth`) uses continuous row coordinates with pixel centres at integers: a boundary at
row ``z`` separates the pixels ``i < z`` (above) from ``i >= z`` (below).

Every draw comes from :class:`numpy.random.Generator` objects seeded from the exam seed (no global state), in
separate streams for anatomy, vessels, lesion, defect and per-plane noise: the same seed gives the same eye whatever
the class, laterality or defect, and :meth:`OCTPhantom.generate_bscan` reproduces the exam's plane exactly.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

from .keys import OCTKeys, normalise_laterality

__all__ = [
    "DEFAULT_CLASSES",
    "DEFECTS",
    "LAYER_BOUNDARIES",
    "LESION_KINDS",
    "BScanTruth",
    "OCTPhantom",
    "PhantomConfig",
    "PhantomExam",
    "load_phantom_truth",
    "write_phantom_dataset",
]

LAYER_BOUNDARIES: tuple[str, ...] = (
    "ILM",
    "RNFL_GCL",
    "GCL_IPL",
    "IPL_INL",
    "INL_OPL",
    "OPL_ONL",
    "ELM",
    "ISOS",
    "RPE",
    "BM",
    "CSI",
)
"""Boundaries in the ground truth, top to bottom: inner limiting membrane, RNFL/GCL, GCL/IPL, IPL/INL, INL/OPL,
OPL/ONL, external limiting membrane, photoreceptor inner/outer segment junction (ellipsoid zone), top of the RPE,
Bruch's membrane (bottom of the RPE) and the choroid/sclera interface."""

LESION_KINDS: tuple[str, ...] = ("healthy", "nevus", "melanoma")
"""What a class shows: no lesion, a choroidal nevus or a choroidal melanoma."""

DEFAULT_CLASSES: dict[str, str] = {"healthy": "healthy", "benign": "nevus", "melanoma": "melanoma"}
"""Default class names and the lesion kind each shows."""

DEFECTS: tuple[str, ...] = (
    "doubled_fovea",
    "absent_fovea",
    "hypoplastic_fovea",
    "absent_onh",
    "corrupted_image",
    "abnormal_vessel_diameter",
)
"""Failure modes of generated images that the phantom can inject (one per exam)."""

# Boundaries the renderer uses, top to bottom (OS_END: bottom of the photoreceptor outer segments, above the
# subretinal fluid; LES_TOP/LES_BOT: the lesion inside the choroid; they coincide where there is nothing between).
_RENDER_BOUNDARIES = (*LAYER_BOUNDARIES[:8], "OS_END", "RPE", "BM", "LES_TOP", "LES_BOT", "CSI")
# The tissue between consecutive render boundaries (index 0: the vitreous above the ILM); the order of the
# per-layer reflectivity and attenuation arrays of OCTPhantom.
_RENDER_LAYERS = (
    "vitreous",
    "RNFL",
    "GCL",
    "IPL",
    "INL",
    "OPL",
    "ONL",
    "IS",
    "OS",
    "fluid",
    "RPE",
    "choroid",
    "lesion",
    "choroid",
    "sclera",
)

_LN10_10 = math.log(10.0) / 10.0


def _default_reflectivity() -> dict[str, float]:
    return {
        "RNFL": -12.5,
        "GCL": -22.0,
        "IPL": -20.0,
        "INL": -28.5,
        "OPL": -21.0,
        "ONL": -31.5,
        "IS": -27.0,
        "OS": -22.0,
        "fluid": -60.0,
        "RPE": -2.0,
        "choroid": -19.5,
        "sclera": -20.0,
        "nevus": -9.0,
        "melanoma": -21.0,
        "disc": -18.0,
        "vessel": -10.0,
        "ILM_line": -15.0,
        "ELM_line": -24.0,
        "ISOS_line": -3.0,
        "IZ_line": -8.0,
        "CC_line": -14.0,
    }


def _default_attenuation() -> dict[str, float]:
    return {
        "retina": 8.0,
        "fluid": 1.0,
        "RPE": 120.0,
        "choroid": 22.0,
        "sclera": 40.0,
        "nevus": 45.0,
        "melanoma": 30.0,
        "disc": 30.0,
        "vessel": 110.0,
    }


@dataclass
class PhantomConfig:
    """Every setting of the phantom. Ranges ``(low, high)`` are drawn uniformly per exam.

    Attributes:
        height: B-scan height H in pixels (depth).
        width: B-scan width W in pixels (A-scans).
        n_planes: radial planes per exam, one every ``360 / n_planes`` degrees starting at 0.
        scan_length_mm: length of each scan line (the fovea at its centre).
        depth_mm: imaged depth (rows span this).
        bm_depth_mm: depth of Bruch's membrane under the fovea.
        bm_depth_jitter_mm: per-exam jitter of ``bm_depth_mm`` (uniform, +-).
        curvature_mm: how much Bruch's membrane rises at 6 mm eccentricity (the eye's curvature).
        tilt_mm: largest random tilt of the fundus (rise over 6 mm) per exam.
        onh_distance_mm: fovea-to-ONH-centre distance, nasal side.
        onh_radius_mm: radius of Bruch's membrane opening (the disc).
        onh_vertical_offset_mm: ONH centre above the fovea.
        cup_to_disc_ratio: cup radius over disc radius.
        cup_depth_mm: depth of the cup floor below Bruch's membrane level.
        foveal_pit_radius_mm: radius parameter of the foveal pit.
        foveal_pit_exponent: shape of the pit (2: Gaussian, larger: flatter floor, steeper walls).
        onl_foveal_boost_mm: extra outer nuclear layer thickness at the foveal centre.
        rnfl_peripapillary_mm: extra RNFL thickness at the disc margin (thinning away from the ONH).
        choroid_thickness_mm: subfoveal choroidal thickness.
        layer_thickness_jitter: relative per-exam jitter of every layer's thickness.
        nevus_semi_axis_mm: semi-axes of the nevus's elliptic footprint.
        nevus_thickness_mm: depth of the hyper-reflective nevus region below the choriocapillaris.
        melanoma_semi_axis_mm: semi-axes of the melanoma's elliptic footprint.
        melanoma_height_mm: apex height of the dome (capped so the retina stays in the image).
        fluid_height_mm: height of the subretinal fluid over the dome's apex.
        lesion_max_eccentricity_mm: largest distance of a lesion centre from the fovea.
        n_nasal_vessels: vessels leaving the disc towards the nasal side (inclusive range).
        n_macular_branches: branches from the arcades towards the fovea (inclusive range).
        n_perifoveal_vessels: small vessels arching around the foveal avascular zone (inclusive range).
        arcade_diameter_mm: diameter of the four arcade vessels at the disc (they taper away from it).
        abnormal_vessel_diameter_mm: diameter of the widened perifoveal vessel (defect "abnormal_vessel_diameter").
        doubled_fovea_offset_mm: distance of the two pits from the centre (defect "doubled_fovea").
        hypoplastic_depth_fraction: pit depth relative to normal (defect "hypoplastic_fovea").
        reflectivity_db: layer reflectivities (dB, linear domain, 0 dB is very bright) and bright lines.
        attenuation_db_per_mm: round-trip attenuation of each tissue (shadows below vessels and lesions).
        falloff_db_per_mm: SD-OCT signal roll-off with depth.
        noise_floor_db: noise floor at the top of the image.
        noise_floor_slope_db: change of the noise floor from top to bottom.
        speckle_looks: shape of the gamma speckle (1: fully developed speckle, Rayleigh amplitude; larger: averaged).
        display_range_db: (low, high) dB mapped to display 0 and 1 (log compression).
        classes: class name -> lesion kind (one of :data:`LESION_KINDS`).
        prevalence: class name -> weight for data sets (``None``: equal weights).
    """

    height: int = 256
    width: int = 512
    n_planes: int = 12
    scan_length_mm: float = 12.0
    depth_mm: float = 2.0
    bm_depth_mm: float = 0.95
    bm_depth_jitter_mm: float = 0.05
    curvature_mm: float = 0.2
    tilt_mm: float = 0.08
    onh_distance_mm: tuple[float, float] = (4.0, 4.5)
    onh_radius_mm: tuple[float, float] = (0.8, 0.9)
    onh_vertical_offset_mm: tuple[float, float] = (0.15, 0.4)
    cup_to_disc_ratio: tuple[float, float] = (0.3, 0.55)
    cup_depth_mm: tuple[float, float] = (0.12, 0.35)
    foveal_pit_radius_mm: tuple[float, float] = (0.5, 0.65)
    foveal_pit_exponent: float = 2.2
    onl_foveal_boost_mm: float = 0.06
    rnfl_peripapillary_mm: float = 0.09
    choroid_thickness_mm: tuple[float, float] = (0.25, 0.38)
    layer_thickness_jitter: float = 0.08
    nevus_semi_axis_mm: tuple[float, float] = (0.8, 1.8)
    nevus_thickness_mm: tuple[float, float] = (0.12, 0.25)
    melanoma_semi_axis_mm: tuple[float, float] = (1.2, 2.4)
    melanoma_height_mm: tuple[float, float] = (0.3, 0.6)
    fluid_height_mm: tuple[float, float] = (0.05, 0.15)
    lesion_max_eccentricity_mm: float = 4.5
    n_nasal_vessels: tuple[int, int] = (4, 6)
    n_macular_branches: tuple[int, int] = (4, 6)
    n_perifoveal_vessels: tuple[int, int] = (3, 5)
    arcade_diameter_mm: float = 0.12
    abnormal_vessel_diameter_mm: float = 0.2
    doubled_fovea_offset_mm: tuple[float, float] = (1.1, 1.6)
    hypoplastic_depth_fraction: float = 0.2
    reflectivity_db: dict[str, float] = field(default_factory=_default_reflectivity)
    attenuation_db_per_mm: dict[str, float] = field(default_factory=_default_attenuation)
    falloff_db_per_mm: float = 4.0
    noise_floor_db: float = -37.0
    noise_floor_slope_db: float = -5.0
    speckle_looks: float = 3.0
    display_range_db: tuple[float, float] = (-42.0, -6.0)
    classes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CLASSES))
    prevalence: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ValueError(f"height and width must be >= 16, got {self.height} x {self.width}")
        if self.n_planes < 1:
            raise ValueError(f"n_planes must be >= 1, got {self.n_planes}")
        if self.scan_length_mm <= 0 or self.depth_mm <= 0:
            raise ValueError("scan_length_mm and depth_mm must be positive")
        if self.speckle_looks <= 0:
            raise ValueError(f"speckle_looks must be positive, got {self.speckle_looks}")
        lo, hi = self.display_range_db
        if not hi > lo:
            raise ValueError(f"display_range_db must be (low, high) with high > low, got {self.display_range_db}")
        for key, default in (
            (self.reflectivity_db, _default_reflectivity()),
            (self.attenuation_db_per_mm, _default_attenuation()),
        ):
            missing = set(default) - set(key)
            for name in missing:  # partial overrides keep the other defaults
                key[name] = default[name]
        self.classes = dict(self.classes)
        if not self.classes:
            raise ValueError("classes must name at least one class")
        for name, kind in self.classes.items():
            if kind not in LESION_KINDS:
                raise ValueError(f"class {name!r}: unknown lesion kind {kind!r}; use one of {LESION_KINDS}")
        if self.prevalence is not None:
            self.prevalence = {str(k): float(v) for k, v in self.prevalence.items()}
            unknown = set(self.prevalence) - set(self.classes)
            if unknown:
                raise ValueError(
                    f"prevalence names unknown classes {sorted(unknown)}; classes are {list(self.classes)}"
                )
            if any(v < 0 for v in self.prevalence.values()) or sum(self.prevalence.values()) <= 0:
                raise ValueError(f"prevalence weights must be >= 0 with a positive sum, got {self.prevalence}")

    @property
    def pixel_spacing_mm(self) -> tuple[float, float]:
        """(row spacing, column spacing) in millimetres."""
        return self.depth_mm / self.height, self.scan_length_mm / self.width

    def plane_angles(self) -> np.ndarray:
        """The exam's plane angles in degrees: ``0, 360 / n, ...``."""
        return np.arange(self.n_planes, dtype=np.float64) * (360.0 / self.n_planes)


@dataclass
class BScanTruth:
    """Ground truth of one phantom B-scan.

    Attributes:
        plane_angle: plane angle in degrees.
        laterality: "R" or "L".
        layers: boundary name (:data:`LAYER_BOUNDARIES`) -> (W,) float32 row of the boundary per column (pixel
            centres at integer rows). Inside the ONH only the ILM exists; the others are NaN there. All NaN when
            the image is corrupted.
        fovea_columns: columns of the foveal pit centre(s): one for a normal exam (``W // 2``), two for a doubled
            fovea, none for an absent fovea (or a corrupted image).
        foveal_depths_mm: depth of each pit below the mean of the highest ILM points within 1.5 mm on either side.
        onh_columns: (first, last) column inside Bruch's membrane opening, or ``None`` when the plane does not cross
            the disc (or the ONH is absent).
        lesion_mask: (H, W) bool, the lesion (nevus or melanoma) in this plane.
        fluid_mask: (H, W) bool, subretinal fluid in this plane.
        vessel_columns: (K,) centre column of each retinal vessel cross-section.
        vessel_widths: (K,) apparent width of each vessel in columns (its shadow's width).
        vessel_diameters_mm: (K,) true vessel diameters.
        vessel_abnormal: (K,) True for the widened vessel of the "abnormal_vessel_diameter" defect.
        defect: the injected failure mode, or ``None``.
        class_name: the exam's class.
        lesion_kind: "healthy", "nevus" or "melanoma".
        valid_anatomy: False for a corrupted image (its anatomy is destroyed).
        pixel_spacing_mm: (row, column) spacing in millimetres.
    """

    plane_angle: float
    laterality: str
    layers: dict[str, np.ndarray]
    fovea_columns: list[int]
    foveal_depths_mm: list[float]
    onh_columns: tuple[int, int] | None
    lesion_mask: np.ndarray
    fluid_mask: np.ndarray
    vessel_columns: np.ndarray
    vessel_widths: np.ndarray
    vessel_diameters_mm: np.ndarray
    vessel_abnormal: np.ndarray
    defect: str | None = None
    class_name: str = ""
    lesion_kind: str = "healthy"
    valid_anatomy: bool = True
    pixel_spacing_mm: tuple[float, float] = (0.0, 0.0)

    @property
    def fovea_column(self) -> int | None:
        """The fovea's column when there is exactly one, else ``None``."""
        return self.fovea_columns[0] if len(self.fovea_columns) == 1 else None

    @property
    def has_onh(self) -> bool:
        """Whether this plane shows the optic nerve head."""
        return self.onh_columns is not None

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (no masks or boundary arrays)."""
        return {
            "plane_angle": float(self.plane_angle),
            "laterality": self.laterality,
            "fovea_columns": [int(c) for c in self.fovea_columns],
            "foveal_depths_mm": [round(float(d), 5) for d in self.foveal_depths_mm],
            "onh_columns": None if self.onh_columns is None else [int(c) for c in self.onh_columns],
            "lesion_pixels": int(self.lesion_mask.sum()),
            "fluid_pixels": int(self.fluid_mask.sum()),
            "vessel_columns": [round(float(c), 3) for c in self.vessel_columns],
            "vessel_widths": [round(float(w), 3) for w in self.vessel_widths],
            "vessel_diameters_mm": [round(float(d), 4) for d in self.vessel_diameters_mm],
            "vessel_abnormal": [bool(a) for a in self.vessel_abnormal],
            "defect": self.defect,
            "class_name": self.class_name,
            "lesion_kind": self.lesion_kind,
            "valid_anatomy": bool(self.valid_anatomy),
            "pixel_spacing_mm": [float(v) for v in self.pixel_spacing_mm],
        }


@dataclass
class PhantomExam:
    """One radial exam: the images, their ground truth and how the exam was made.

    Attributes:
        images: (n_planes, H, W) float32 display images in [0, 1].
        truths: one :class:`BScanTruth` per plane.
        plane_angles: (n_planes,) degrees.
        laterality: "R" or "L".
        class_name: the class.
        lesion_kind: what the class shows.
        defect: the injected failure mode or ``None``.
        seed: the exam seed.
        patient_id: patient identifier.
        exam_id: exam identifier.
        meta: eye-model parameters in en-face viewer coordinates (mm, fovea at the origin, x to the viewer's
            right, y up): ``onh_center_xy_mm``, ``onh_radius_mm``, ``lesion`` (kind, centre, semi-axes,
            orientation, heights; ``None`` for healthy), pixel spacing and the defect's settings.
    """

    images: np.ndarray
    truths: list[BScanTruth]
    plane_angles: np.ndarray
    laterality: str
    class_name: str
    lesion_kind: str
    defect: str | None
    seed: int
    patient_id: str
    exam_id: str
    meta: dict[str, Any]

    def to_uint8(self) -> np.ndarray:
        """The images as (n_planes, H, W) uint8 (``round(x * 255)``)."""
        return np.round(np.clip(self.images, 0.0, 1.0) * 255.0).astype(np.uint8)

    def truth_arrays(self) -> dict[str, np.ndarray]:
        """All ground truth of the exam as arrays (what :meth:`save_truth` writes to the ``.npz``)."""
        t0 = self.truths[0]
        n = len(self.truths)
        arrays: dict[str, np.ndarray] = {
            "plane_angles": np.asarray(self.plane_angles, dtype=np.float64),
            "laterality": np.array(self.laterality),
            "class_name": np.array(self.class_name),
            "lesion_kind": np.array(self.lesion_kind),
            "defect": np.array(self.defect or ""),
            "pixel_spacing_mm": np.asarray(t0.pixel_spacing_mm, dtype=np.float64),
            "valid_anatomy": np.array([t.valid_anatomy for t in self.truths]),
            "lesion_mask": np.stack([t.lesion_mask for t in self.truths]),
            "fluid_mask": np.stack([t.fluid_mask for t in self.truths]),
            "onh_columns": np.array(
                [t.onh_columns if t.onh_columns else (-1, -1) for t in self.truths], dtype=np.int32
            ),
        }
        for name in LAYER_BOUNDARIES:
            arrays[f"layer_{name}"] = np.stack([t.layers[name] for t in self.truths]).astype(np.float32)
        fovea = np.full((n, 2), -1, dtype=np.int32)
        depth = np.full((n, 2), np.nan, dtype=np.float32)
        for i, t in enumerate(self.truths):
            fovea[i, : len(t.fovea_columns)] = t.fovea_columns
            depth[i, : len(t.foveal_depths_mm)] = t.foveal_depths_mm
        arrays["fovea_columns"] = fovea
        arrays["foveal_depths_mm"] = depth
        arrays["vessel_plane"] = np.concatenate(
            [np.full(len(t.vessel_columns), i, dtype=np.int32) for i, t in enumerate(self.truths)]
        )
        arrays["vessel_columns"] = np.concatenate([t.vessel_columns for t in self.truths]).astype(np.float32)
        arrays["vessel_widths"] = np.concatenate([t.vessel_widths for t in self.truths]).astype(np.float32)
        arrays["vessel_diameters_mm"] = np.concatenate([t.vessel_diameters_mm for t in self.truths]).astype(np.float32)
        arrays["vessel_abnormal"] = np.concatenate([t.vessel_abnormal for t in self.truths]).astype(bool)
        return arrays

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary of the exam and of every plane's ground truth."""
        return {
            "patient_id": self.patient_id,
            "exam_id": self.exam_id,
            "class_name": self.class_name,
            "lesion_kind": self.lesion_kind,
            "laterality": self.laterality,
            "defect": self.defect,
            "seed": int(self.seed),
            "image_shape": list(self.images.shape),
            "meta": _jsonable(self.meta),
            "planes": [t.summary() for t in self.truths],
        }

    def save_truth(self, path: str | PathLike) -> tuple[Path, Path]:
        """Write the ground truth as ``<path>.npz`` (compressed arrays) and ``<path>.json`` (summary)."""
        stem = Path(path)
        if stem.suffix in (".npz", ".json"):
            stem = stem.with_suffix("")
        stem.parent.mkdir(parents=True, exist_ok=True)
        npz = stem.with_name(stem.name + ".npz")
        js = stem.with_name(stem.name + ".json")
        np.savez_compressed(npz, **self.truth_arrays())
        js.write_text(json.dumps(self.summary(), indent=1))
        return npz, js


def load_phantom_truth(path: str | PathLike) -> list[BScanTruth]:
    """Read the per-plane ground truth written by :meth:`PhantomExam.save_truth` (the ``.npz`` file)."""
    with np.load(Path(path), allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    defect = str(a["defect"]) or None
    spacing = tuple(float(v) for v in a["pixel_spacing_mm"])
    truths = []
    for i, angle in enumerate(a["plane_angles"]):
        sel = a["vessel_plane"] == i
        fov = [int(c) for c in a["fovea_columns"][i] if c >= 0]
        onh = a["onh_columns"][i]
        truths.append(
            BScanTruth(
                plane_angle=float(angle),
                laterality=str(a["laterality"]),
                layers={name: a[f"layer_{name}"][i] for name in LAYER_BOUNDARIES},
                fovea_columns=fov,
                foveal_depths_mm=[float(d) for d in a["foveal_depths_mm"][i][: len(fov)]],
                onh_columns=None if onh[0] < 0 else (int(onh[0]), int(onh[1])),
                lesion_mask=a["lesion_mask"][i],
                fluid_mask=a["fluid_mask"][i],
                vessel_columns=a["vessel_columns"][sel],
                vessel_widths=a["vessel_widths"][sel],
                vessel_diameters_mm=a["vessel_diameters_mm"][sel],
                vessel_abnormal=a["vessel_abnormal"][sel],
                defect=defect,
                class_name=str(a["class_name"]),
                lesion_kind=str(a["lesion_kind"]),
                valid_anatomy=bool(a["valid_anatomy"][i]),
                pixel_spacing_mm=spacing,
            )
        )
    return truths


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float):
        return round(value, 6)
    return value


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) % (1 << 63), *stream]))


_STREAM_ANATOMY, _STREAM_VESSELS, _STREAM_LESION, _STREAM_DEFECT, _STREAM_NOISE = 1, 2, 3, 4, 5


@dataclass
class _Vessels:
    """Vessel centrelines as segments in model coordinates (u nasal, v superior)."""

    p0: np.ndarray  # (S, 2)
    p1: np.ndarray  # (S, 2)
    d0: np.ndarray  # (S,) diameter at p0
    d1: np.ndarray  # (S,)
    abnormal: np.ndarray  # (S,) bool


class _EyeModel:
    """The 3-D eye of one exam, in model coordinates: u towards the nasal side, v superior, fovea at the origin."""

    def __init__(self, config: PhantomConfig, seed: int, laterality: str, lesion_kind: str, defect: str | None) -> None:
        self.config = config
        self.sign = 1.0 if laterality == "R" else -1.0
        self.defect = defect
        self.lesion_kind = lesion_kind
        c = config
        rng = _rng(seed, _STREAM_ANATOMY)
        self.bm0 = c.bm_depth_mm + rng.uniform(-c.bm_depth_jitter_mm, c.bm_depth_jitter_mm)
        self.curv = c.curvature_mm * rng.uniform(0.7, 1.3) / 36.0  # per mm^2
        tilt_angle = rng.uniform(0, 2 * np.pi)
        tilt = rng.uniform(0, c.tilt_mm) / 6.0
        self.tilt = (tilt * math.cos(tilt_angle), tilt * math.sin(tilt_angle))
        self.onh_u = _uniform(rng, c.onh_distance_mm)
        self.onh_v = _uniform(rng, c.onh_vertical_offset_mm)
        self.onh_r = _uniform(rng, c.onh_radius_mm)
        self.cup_r = self.onh_r * _uniform(rng, c.cup_to_disc_ratio)
        self.cup_depth = _uniform(rng, c.cup_depth_mm)
        self.pit_sigma = _uniform(rng, c.foveal_pit_radius_mm)
        self.choroid = _uniform(rng, c.choroid_thickness_mm)
        j = c.layer_thickness_jitter
        self.jit = {k: 1.0 + rng.uniform(-j, j) for k in ("RNFL", "GCL", "IPL", "INL", "OPL", "ONL", "IS", "OS")}
        self.has_onh = defect != "absent_onh"

        drng = _rng(seed, _STREAM_DEFECT)
        self.pit_ring = 0.0
        if defect == "doubled_fovea":
            dx = c.scan_length_mm / c.width
            self.pit_ring = max(round(_uniform(drng, c.doubled_fovea_offset_mm) / dx), 2) * dx
        self.vessels = self._make_vessels(_rng(seed, _STREAM_VESSELS), drng)
        self.lesion = self._make_lesion(_rng(seed, _STREAM_LESION)) if lesion_kind != "healthy" else None

    # ----------------------------------------------------------------------------------------------------- geometry
    def pit(self, r: np.ndarray) -> np.ndarray:
        """Foveal pit factor in [0, 1] (1: the pit's centre)."""
        k = self.config.foveal_pit_exponent
        if self.defect == "absent_fovea":
            return np.zeros_like(r)
        if self.defect == "doubled_fovea":
            sig = 0.85 * self.pit_sigma
            return np.exp(-((np.abs(r - self.pit_ring) / sig) ** k))
        p = np.exp(-((r / self.pit_sigma) ** k))
        if self.defect == "hypoplastic_fovea":
            return self.config.hypoplastic_depth_fraction * p
        return p

    def disc_distance(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.hypot(u - self.onh_u, v - self.onh_v)

    def bm_depth(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        r2 = u * u + v * v
        return self.bm0 - self.curv * r2 + self.tilt[0] * u + self.tilt[1] * v

    def thickness(self, u: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
        """Layer thicknesses (mm) of the healthy eye at en-face points, with the ONH margins applied."""
        r = np.hypot(u, v)
        d = self.disc_distance(u, v)
        P = self.pit(r)
        inner = 1.0 - P
        dm = np.maximum(d - self.onh_r, 0.0)  # distance outside the disc margin
        if self.has_onh:  # inner layers, photoreceptors and choroid end at the disc margin
            m_in = _smoothstep(dm / 0.6)
            m_out = _smoothstep(dm / 0.25)
            m_ch = _smoothstep(dm / 0.35)
        else:
            m_in = m_out = m_ch = np.ones_like(r)
        arc = np.exp(-(((np.abs(v) - 1.8) / 1.2) ** 2))
        j = self.jit
        c = self.config
        t = {
            "RNFL": j["RNFL"] * (0.012 + 0.03 * arc + c.rnfl_peripapillary_mm * np.exp(-dm / 1.2)) * inner,
            "GCL": j["GCL"] * (0.014 + 0.05 * np.exp(-((np.maximum(r - 1.1, 0.0) / 1.3) ** 2))) * inner * m_in,
            "IPL": j["IPL"] * (0.02 + 0.022 * np.exp(-((np.maximum(r - 1.1, 0.0) / 1.8) ** 2))) * inner * m_in,
            "INL": j["INL"] * (0.02 + 0.018 * np.exp(-((np.maximum(r - 1.0, 0.0) / 1.8) ** 2))) * inner * m_in,
            "OPL": j["OPL"] * (0.02 + 0.012 * np.exp(-((np.maximum(r - 0.9, 0.0) / 1.6) ** 2))) * inner * m_in,
            "ONL": j["ONL"] * (0.05 + 0.02 * np.exp(-((r / 2.5) ** 2)) + c.onl_foveal_boost_mm * P) * m_out,
            "IS": j["IS"] * (0.022 + 0.01 * P) * m_out,
            "OS": j["OS"] * (0.03 + 0.015 * P) * m_out,
            "RPE": np.full_like(r, 0.024),
            "choroid": self.choroid * (1.0 - 0.35 * np.exp(-dm / 2.0)) * m_ch,
        }
        return t

    def boundaries(self, u: np.ndarray, v: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Render boundaries (mm depth, all finite), the disc mask and the lesion mask of en-face points.

        Inside the disc the layers below the ILM are collapsed onto the prelaminar tissue's bottom (render only:
        the truth sets them to NaN there).
        """
        t = self.thickness(u, v)
        bm = self.bm_depth(u, v)
        z: dict[str, np.ndarray] = {"BM": bm.copy()}
        z["RPE"] = bm - t["RPE"]
        z["OS_END"] = z["RPE"].copy()
        z["ISOS"] = z["RPE"] - t["OS"]
        z["ELM"] = z["ISOS"] - t["IS"]
        z["OPL_ONL"] = z["ELM"] - t["ONL"]
        z["INL_OPL"] = z["OPL_ONL"] - t["OPL"]
        z["IPL_INL"] = z["INL_OPL"] - t["INL"]
        z["GCL_IPL"] = z["IPL_INL"] - t["IPL"]
        z["RNFL_GCL"] = z["GCL_IPL"] - t["GCL"]
        z["ILM"] = z["RNFL_GCL"] - t["RNFL"]
        z["LES_TOP"] = bm.copy()
        z["LES_BOT"] = bm.copy()
        z["CSI"] = bm + t["choroid"]

        disc = np.zeros(u.shape, dtype=bool)
        if self.has_onh:
            d = self.disc_distance(u, v)
            disc = d < self.onh_r
            if disc.any():
                dd = d[disc]
                floor = 0.4 * self.cup_r  # flat cup floor, then a sloping wall up to the disc margin
                w = 0.5 - 0.5 * np.cos(np.pi * np.clip((dd - floor) / (self.onh_r - floor), 0.0, 1.0))
                rim = t["RNFL"][disc] + t["RPE"][disc]
                bmd = bm[disc]
                ilm = bmd - (rim * w - self.cup_depth * (1.0 - w))
                z["ILM"][disc] = ilm
                prelam = np.maximum(ilm, bmd + 0.06)
                for name in ("RNFL_GCL", "GCL_IPL", "IPL_INL", "INL_OPL", "OPL_ONL", "ELM", "ISOS", "OS_END"):
                    z[name][disc] = prelam
                for name in ("RPE", "BM", "LES_TOP", "LES_BOT"):
                    z[name][disc] = prelam
                z["CSI"][disc] = np.maximum(prelam, bmd + 0.35)

        lesion = np.zeros(u.shape, dtype=bool)
        if self.lesion is not None:
            lesion = self._apply_lesion(u, v, z)
        return z, disc, lesion

    # ------------------------------------------------------------------------------------------------------ lesion
    def _lesion_rho(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        les = self.lesion
        assert les is not None
        du, dv = u - les["u"], v - les["v"]
        ca, sa = math.cos(les["theta"]), math.sin(les["theta"])
        a = (du * ca + dv * sa) / les["a"]
        b = (-du * sa + dv * ca) / les["b"]
        return np.sqrt(a * a + b * b)

    def _make_lesion(self, rng: np.random.Generator) -> dict[str, Any]:
        c = self.config
        melanoma = self.lesion_kind == "melanoma"
        axes = c.melanoma_semi_axis_mm if melanoma else c.nevus_semi_axis_mm
        n = c.n_planes
        dirs = np.deg2rad(np.arange(n) * 360.0 / n)
        reach = 1.4 if melanoma else 1.0  # how far (in footprint radii) the lesion changes the retina
        for _ in range(2000):
            a, b = _uniform(rng, axes), _uniform(rng, axes)
            theta = rng.uniform(0, np.pi)
            ecc = c.lesion_max_eccentricity_mm * math.sqrt(rng.uniform(0.0, 1.0))
            phi = rng.uniform(0, 2 * np.pi)
            u, v = ecc * math.cos(phi), ecc * math.sin(phi)
            big = max(a, b) * reach
            if ecc + big > c.scan_length_mm / 2 - 0.2:
                continue
            if math.hypot(u - self.onh_u, v - self.onh_v) < self.onh_r + big + 0.2:
                continue
            # the en-face direction (model coordinates) of every plane: some plane must cut the footprint well
            x_dirs = np.stack([self.sign * np.cos(dirs), np.sin(dirs)], axis=1)
            dist = np.abs(x_dirs[:, 0] * v - x_dirs[:, 1] * u)
            if dist.min() > 0.55 * min(a, b):
                continue
            break
        else:  # pragma: no cover - the loop above always finds a place with the default ranges
            raise RuntimeError("could not place the lesion; check the lesion size and eccentricity settings")
        les: dict[str, Any] = {"u": u, "v": v, "a": a, "b": b, "theta": theta}
        if melanoma:
            fluid = _uniform(rng, c.fluid_height_mm)
            height = _uniform(rng, c.melanoma_height_mm)
            # keep the lifted retina inside the image (0.12 mm margin at the top)
            ilm = float(self.boundaries_healthy_ilm(np.array([u]), np.array([v]))[0])
            height = max(min(height, ilm - fluid - 0.12), 0.1)
            les.update(height=height, fluid=fluid)
        else:
            les.update(height=0.0, fluid=0.0, thickness=_uniform(rng, c.nevus_thickness_mm))
        return les

    def boundaries_healthy_ilm(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        t = self.thickness(u, v)
        total = sum(t[k] for k in ("RNFL", "GCL", "IPL", "INL", "OPL", "ONL", "IS", "OS", "RPE"))
        return self.bm_depth(u, v) - total

    def _apply_lesion(self, u: np.ndarray, v: np.ndarray, z: dict[str, np.ndarray]) -> np.ndarray:
        les = self.lesion
        assert les is not None
        rho = self._lesion_rho(u, v)
        inside = rho < 1.0
        if self.lesion_kind == "melanoma":
            q = np.clip(1.0 - rho * rho, 0.0, None)
            h = les["height"] * q**1.3
            f = les["fluid"] * np.clip(1.0 - (rho / 1.35) ** 2, 0.0, None) ** 1.5
            e = h + f
            csi_h = z["CSI"].copy()
            bm_h = z["BM"].copy()
            for name in ("ILM", "RNFL_GCL", "GCL_IPL", "IPL_INL", "INL_OPL", "OPL_ONL", "ELM", "ISOS"):
                z[name] -= e
            z["OS_END"] = z["RPE"] - e
            z["RPE"] = z["RPE"] - h
            z["BM"] = z["BM"] - h
            z["LES_TOP"] = z["BM"].copy()
            # lens-shaped base: the mass fills the choroid (and a little more) at its centre, tapering to the edges
            base = bm_h + (csi_h - bm_h + 0.05) * np.sqrt(q)
            z["LES_BOT"] = np.where(inside, np.maximum(base, z["BM"]), z["BM"])
            z["CSI"] = np.maximum(csi_h, z["LES_BOT"])
        else:
            prof = np.clip(1.0 - rho * rho, 0.0, None) ** 0.6  # flat lens: thickest at the centre
            top = z["BM"] + 0.015
            bot = top + les["thickness"] * prof
            z["LES_TOP"] = np.where(inside, top, z["BM"])
            z["LES_BOT"] = np.where(inside, bot, z["BM"])
            z["CSI"] = np.maximum(z["CSI"], np.where(inside, bot + 0.03 * prof, z["CSI"]))
        return inside

    # ----------------------------------------------------------------------------------------------------- vessels
    def _make_vessels(self, rng: np.random.Generator, drng: np.random.Generator) -> _Vessels:
        c = self.config
        cu, cv, R = self.onh_u, self.onh_v, self.onh_r
        curves: list[tuple[np.ndarray, np.ndarray, bool]] = []  # (points (M,2), diameters (M,), abnormal)

        def spline(ctrl: np.ndarray, m: int) -> np.ndarray:
            seg = np.linalg.norm(np.diff(ctrl, axis=0), axis=1)
            tt = np.concatenate([[0.0], np.cumsum(seg)])
            cs = CubicSpline(tt, ctrl, bc_type="natural")
            return cs(np.linspace(0.0, tt[-1], m))

        arcades = []
        for side in (1.0, -1.0):
            for k, (dia, off) in enumerate(((c.arcade_diameter_mm, 0.0), (c.arcade_diameter_mm * 0.8, 0.3))):
                ang = np.deg2rad(95 + 20 * k + rng.uniform(-8, 8))
                start = np.array([cu + R * math.cos(ang), cv + side * R * math.sin(ang)])
                jit = rng.uniform(-0.2, 0.2, size=(6, 2))
                ctrl = np.array(
                    [
                        start,
                        [cu - 0.7 - 0.3 * k, side * (1.5 + off) + cv * 0.5],
                        [cu - 2.2, side * (2.5 + off)],
                        [0.4, side * (2.9 + off)],
                        [-2.2, side * (2.8 + off)],
                        [-4.5, side * (2.3 + off)],
                        [-7.5, side * (1.6 + off)],
                    ]
                )
                ctrl[1:] += jit
                pts = spline(ctrl, 90)
                dia_pts = np.linspace(dia, dia * 0.5, len(pts))
                curves.append((pts, dia_pts, False))
                arcades.append(pts)
        for _ in range(int(rng.integers(c.n_nasal_vessels[0], c.n_nasal_vessels[1] + 1))):
            ang = rng.uniform(-80, 80) * np.pi / 180
            length = rng.uniform(2.5, 4.0)
            bend = rng.uniform(-0.3, 0.3)
            t = np.linspace(0, 1, 30)[:, None]
            dirv = np.array([math.cos(ang), math.sin(ang)])
            norm = np.array([-dirv[1], dirv[0]])
            pts = np.array([cu, cv]) + dirv * (R + t * length) + norm * bend * np.sin(np.pi * t) * length / 3
            dia = rng.uniform(0.06, 0.1)
            curves.append((pts, np.linspace(dia, dia * 0.6, len(pts)), False))
        for _ in range(int(rng.integers(c.n_macular_branches[0], c.n_macular_branches[1] + 1))):
            arc = arcades[int(rng.integers(len(arcades)))]
            cand = np.flatnonzero((arc[:, 0] > -2.5) & (arc[:, 0] < 1.5))
            start = arc[int(rng.choice(cand))] if len(cand) else arc[len(arc) // 2]
            ang = math.atan2(start[1], start[0]) + rng.uniform(-0.5, 0.5)
            end = rng.uniform(0.9, 1.4) * np.array([math.cos(ang), math.sin(ang)])
            mid = 0.5 * (start + end) + rng.uniform(-0.3, 0.3, size=2)
            t = np.linspace(0, 1, 24)[:, None]
            pts = (1 - t) ** 2 * start + 2 * (1 - t) * t * mid + t**2 * end
            dia = rng.uniform(0.035, 0.055)
            curves.append((pts, np.linspace(dia, dia * 0.6, len(pts)), False))
        n_peri = int(rng.integers(c.n_perifoveal_vessels[0], c.n_perifoveal_vessels[1] + 1))
        peri = []
        for _ in range(n_peri):
            radius = rng.uniform(0.6, 1.2)
            centre = rng.uniform(0, 2 * np.pi)
            span = np.deg2rad(rng.uniform(60, 110))
            dia = rng.uniform(0.022, 0.035)
            peri.append([radius, centre, span, dia, False])
        if self.defect == "abnormal_vessel_diameter" and peri:
            k = int(drng.integers(len(peri)))
            step = 360.0 / c.n_planes if c.n_planes % 2 == 0 else 180.0 / c.n_planes
            peri[k][2] = max(peri[k][2], np.deg2rad(min(1.5 * step, 300.0)))
            peri[k][3] = c.abnormal_vessel_diameter_mm
            peri[k][4] = True
        for radius, centre, span, dia, abnormal in peri:
            ang = np.linspace(centre - span / 2, centre + span / 2, 32)
            pts = radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)
            curves.append((pts, np.full(len(pts), dia), bool(abnormal)))
        p0 = np.concatenate([p[:-1] for p, _, _ in curves])
        p1 = np.concatenate([p[1:] for p, _, _ in curves])
        d0 = np.concatenate([d[:-1] for _, d, _ in curves])
        d1 = np.concatenate([d[1:] for _, d, _ in curves])
        ab = np.concatenate([np.full(len(p) - 1, a) for p, _, a in curves])
        return _Vessels(p0, p1, d0, d1, ab)

    def vessel_crossings(self, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Where a line through the fovea (unit ``direction`` in model coordinates) crosses the vessels.

        Returns s (mm along the line), apparent width (mm), diameter (mm) and the abnormal flag of each crossing.
        """
        vs = self.vessels
        n = np.array([-direction[1], direction[0]])
        a0 = vs.p0 @ n
        a1 = vs.p1 @ n
        hit = (a0 * a1 <= 0) & (a0 != a1)
        if not hit.any():
            e = np.zeros(0)
            return e, e, e, np.zeros(0, dtype=bool)
        t = a0[hit] / (a0[hit] - a1[hit])
        seg = vs.p1[hit] - vs.p0[hit]
        x = vs.p0[hit] + t[:, None] * seg
        s = x @ direction
        dia = vs.d0[hit] + t * (vs.d1[hit] - vs.d0[hit])
        tang = seg / np.linalg.norm(seg, axis=1, keepdims=True)
        sin = np.abs(tang @ n)
        width = dia / np.maximum(sin, 0.2)
        keep = np.ones(len(s), dtype=bool)
        if self.has_onh:
            keep &= self.disc_distance(x[:, 0], x[:, 1]) > self.onh_r + 0.05
        # one crossing per place (segments sharing an end point are both hit)
        order = np.argsort(s)
        s, width, dia, ab, keep = s[order], width[order], dia[order], vs.abnormal[hit][order], keep[order]
        dup = np.concatenate([[False], np.diff(s) < 1e-6])
        keep &= ~dup
        return s[keep], width[keep], dia[keep], ab[keep]


class OCTPhantom:
    """Procedural generator of radial OCT exams with exact ground truth (see the module docstring).

    Args:
        config: the settings (:class:`PhantomConfig`); default settings when ``None``.

    Example::

        phantom = OCTPhantom(PhantomConfig(n_planes=12))
        exam = phantom.generate_exam(seed=7, class_name="melanoma", laterality="L")
        exam.images.shape  # (12, 256, 512), float32 in [0, 1]
        exam.truths[0].layers["RPE"]  # (512,) rows of the top of the RPE
    """

    def __init__(self, config: PhantomConfig | None = None) -> None:
        self.config = config or PhantomConfig()
        c = self.config
        H, W = c.height, c.width
        self._dz, self._dx = c.pixel_spacing_mm
        self._rows = np.arange(H, dtype=np.float32)[:, None]
        depth = (np.arange(H, dtype=np.float64) + 0.5) * self._dz
        self._falloff = (10.0 ** (-c.falloff_db_per_mm * depth / 10.0)).astype(np.float32)[:, None]
        noise_db = c.noise_floor_db + c.noise_floor_slope_db * depth / c.depth_mm
        self._noise = (10.0 ** (noise_db / 10.0)).astype(np.float32)[:, None]
        self._s = (np.arange(W) - W // 2) * self._dx
        lin = {k: 10.0 ** (v / 10.0) for k, v in c.reflectivity_db.items()}
        self._lin = lin
        att = c.attenuation_db_per_mm
        retina = att["retina"]
        self._layer_refl = np.array(
            [
                0.0,
                lin["RNFL"],
                lin["GCL"],
                lin["IPL"],
                lin["INL"],
                lin["OPL"],
                lin["ONL"],
                lin["IS"],
                lin["OS"],
                lin["fluid"],
                lin["RPE"],
                0.0,  # choroid: textured, added separately
                0.0,  # lesion: set per kind
                0.0,
                lin["sclera"],
            ],
            dtype=np.float32,
        )
        self._layer_att = np.array(
            [0.0, *([retina] * 8), att["fluid"], att["RPE"], att["choroid"], 0.0, att["choroid"], att["sclera"]],
            dtype=np.float32,
        )

    # ---------------------------------------------------------------------------------------------------- public
    def lesion_kind(self, class_name: str) -> str:
        """The lesion kind of a class name (a kind's own name is accepted too)."""
        if class_name in self.config.classes:
            return self.config.classes[class_name]
        if class_name in LESION_KINDS:
            return class_name
        raise ValueError(f"unknown class {class_name!r}; known classes: {list(self.config.classes)}")

    def generate_exam(
        self,
        seed: int,
        class_name: str,
        laterality: str = "R",
        defect: str | None = None,
        patient_id: str | None = None,
        exam_id: str | None = None,
    ) -> PhantomExam:
        """Generate one radial exam.

        Args:
            seed: the exam's seed (same seed, same eye and pixels).
            class_name: a class of ``config.classes`` (or a lesion kind).
            laterality: "R" or "L" (OD/OS accepted).
            defect: one of :data:`DEFECTS` or ``None``.
            patient_id: recorded in the exam (default ``"phantom-<seed>"``).
            exam_id: recorded in the exam (default ``"<patient_id>_<laterality>"``).
        """
        kind, lat, defect = self._check(class_name, laterality, defect)
        model = _EyeModel(self.config, seed, lat, kind, defect)
        angles = self.config.plane_angles()
        images = np.empty((len(angles), self.config.height, self.config.width), dtype=np.float32)
        truths = []
        for i, angle in enumerate(angles):
            images[i], truth = self._render(model, seed, float(angle), class_name)
            truths.append(truth)
        pid = patient_id if patient_id is not None else f"phantom-{seed}"
        return PhantomExam(
            images=images,
            truths=truths,
            plane_angles=angles,
            laterality=lat,
            class_name=class_name,
            lesion_kind=kind,
            defect=defect,
            seed=int(seed),
            patient_id=pid,
            exam_id=exam_id if exam_id is not None else f"{pid}_{lat}",
            meta=self._meta(model),
        )

    def generate_bscan(
        self,
        seed: int,
        class_name: str,
        plane_angle: float,
        laterality: str = "R",
        defect: str | None = None,
    ) -> tuple[np.ndarray, BScanTruth]:
        """One B-scan (H, W) float32 and its truth, cut from the same eye as ``generate_exam(seed, ...)``.

        At one of the exam's plane angles it equals that plane of the exam exactly.
        """
        kind, lat, defect = self._check(class_name, laterality, defect)
        model = _EyeModel(self.config, seed, lat, kind, defect)
        return self._render(model, seed, float(plane_angle) % 360.0, class_name)

    # --------------------------------------------------------------------------------------------------- helpers
    def _check(self, class_name: str, laterality: str, defect: str | None) -> tuple[str, str, str | None]:
        kind = self.lesion_kind(class_name)
        lat = normalise_laterality(laterality)
        if lat not in ("R", "L"):
            raise ValueError(f"laterality must be 'R' or 'L' for the phantom, got {laterality!r}")
        if defect is not None and defect not in DEFECTS:
            raise ValueError(f"unknown defect {defect!r}; use one of {DEFECTS} or None")
        return kind, lat, defect

    def _meta(self, model: _EyeModel) -> dict[str, Any]:
        sgn = model.sign
        meta: dict[str, Any] = {
            "fovea_xy_mm": [0.0, 0.0],
            "onh_center_xy_mm": [sgn * model.onh_u, model.onh_v],
            "onh_radius_mm": model.onh_r,
            "onh_present": model.has_onh,
            "cup_radius_mm": model.cup_r,
            "cup_depth_mm": model.cup_depth,
            "foveal_pit_radius_mm": model.pit_sigma,
            "choroid_thickness_mm": model.choroid,
            "pixel_spacing_mm": list(self.config.pixel_spacing_mm),
            "scan_length_mm": self.config.scan_length_mm,
            "center_column": self.config.width // 2,
            "lesion": None,
        }
        if model.pit_ring:
            meta["doubled_fovea_offset_mm"] = model.pit_ring
        les = model.lesion
        if les is not None:
            theta = les["theta"] if sgn > 0 else math.pi - les["theta"]
            meta["lesion"] = {
                "kind": model.lesion_kind,
                "center_xy_mm": [sgn * les["u"], les["v"]],
                "semi_axes_mm": [les["a"], les["b"]],
                "orientation_deg": math.degrees(theta) % 180.0,
                "height_mm": les["height"],
                "fluid_height_mm": les["fluid"],
                "thickness_mm": les.get("thickness", 0.0),
            }
        return meta

    def _render(self, model: _EyeModel, seed: int, angle: float, class_name: str) -> tuple[np.ndarray, BScanTruth]:
        c = self.config
        H, W = c.height, c.width
        dz, dx = self._dz, self._dx
        a = math.radians(angle)
        direction = np.array([model.sign * math.cos(a), math.sin(a)])  # scan direction in model coordinates
        u = self._s * direction[0]
        v = self._s * direction[1]
        zmm, disc, lesion_cols = model.boundaries(u, v)
        zr = {k: (val / dz - 0.5).astype(np.float32) for k, val in zmm.items()}
        rows = self._rows
        rng = _rng(seed, _STREAM_NOISE, int(round(angle * 1000)))

        # ---- layered reflectivity and attenuation (soft, partial-volume edges)
        refl = np.broadcast_to(self._layer_refl[:, None], (len(self._layer_refl), W)).copy()
        att = np.broadcast_to(self._layer_att[:, None], (len(self._layer_att), W)).copy()
        lin = self._lin
        atd = c.attenuation_db_per_mm
        if model.lesion_kind == "nevus":
            att[12] = atd["nevus"]  # reflectivity: textured, added below
        elif model.lesion_kind == "melanoma":
            att[12] = atd["melanoma"]  # reflectivity: textured, added below
        if disc.any():
            refl[1, disc] = lin["disc"]
            att[1, disc] = atd["disc"]
        R = np.full((H, W), refl[0], dtype=np.float32)
        A = np.zeros((H, W), dtype=np.float32)
        ramps = []
        for k, name in enumerate(_RENDER_BOUNDARIES):
            ramp = np.clip(rows + 0.5 - zr[name][None, :], 0.0, 1.0)
            ramps.append(ramp)
            R += (refl[k + 1] - refl[k])[None, :] * ramp
            A += (att[k + 1] - att[k])[None, :] * ramp
        ib = {name: i for i, name in enumerate(_RENDER_BOUNDARIES)}
        chor_w = ramps[ib["BM"]] - ramps[ib["LES_TOP"]] + ramps[ib["LES_BOT"]] - ramps[ib["CSI"]]

        # ---- choroid (and lamina cribrosa) texture: dark vessel lumens in brighter stroma
        tex = self._choroid_texture(rng, zr["BM"], zr["CSI"])
        chor = lin["choroid"] * (0.06 + 1.5 * tex)
        if disc.any():
            chor[:, disc] *= 0.35
        R += chor_w * chor
        if model.lesion is not None:
            les_lin = lin["melanoma"] if model.lesion_kind == "melanoma" else lin["nevus"]
            R += (ramps[ib["LES_TOP"]] - ramps[ib["LES_BOT"]]) * (les_lin * (0.55 + 0.6 * tex))

        # ---- bright thin lines: ILM, ELM, ellipsoid zone, interdigitation zone, choriocapillaris
        outer = ~disc
        self._line(R, zr["ILM"], lin["ILM_line"], 0.7, np.ones(W, dtype=bool))
        self._line(R, zr["ELM"], lin["ELM_line"], 0.6, outer & (zr["ISOS"] - zr["ELM"] > 0.5))
        self._line(R, zr["ISOS"], lin["ISOS_line"], 0.9, outer & (zr["OS_END"] - zr["ISOS"] > 0.5))
        self._line(R, zr["OS_END"] - 0.012 / dz, lin["IZ_line"], 0.8, outer & (zr["OS_END"] - zr["ISOS"] > 1.0))
        self._line(R, zr["BM"] + 0.012 / dz, lin["CC_line"], 1.0, outer & (zr["CSI"] - zr["BM"] > 1.0))

        # ---- retinal vessels: bright cross-sections whose attenuation casts the shadow below
        vs, vw, vd, vab = model.vessel_crossings(direction)
        vcol = vs / dx + W // 2
        inside = (vcol > -0.5) & (vcol < W - 0.5)
        vcol, vw, vd, vab = vcol[inside], vw[inside], vd[inside], vab[inside]
        thick_inner = zmm["IPL_INL"] - zmm["ILM"]
        for col, wmm, dmm in zip(vcol, vw, vd):
            ci = int(round(col))
            ilm = zr["ILM"][ci]
            inner_rows = max(thick_inner[ci] / dz, 0.0)
            dr = 0.8 * dmm / dz
            centre = ilm + max(0.5 * dr + 0.5, 0.35 * inner_rows)
            self._vessel(R, A, col, wmm / dx, centre, dr, lin["vessel"], atd["vessel"])

        # ---- attenuation along depth, fall-off, noise floor, speckle, log compression
        np.cumsum(A, axis=0, out=A)
        A *= -dz * _LN10_10
        np.exp(A, out=A)
        signal = R * A
        signal *= self._falloff
        signal += self._noise
        speckle = rng.standard_gamma(c.speckle_looks, size=(H, W), dtype=np.float32)
        speckle *= 1.0 / c.speckle_looks
        # real speckle grains span about two pixels both ways (oversampled A-scans and depth)
        speckle[1:] += speckle[:-1]
        speckle[:, 1:] += speckle[:, :-1]
        speckle *= 0.25
        signal *= speckle
        lo, hi = c.display_range_db
        img = np.log10(signal)
        img *= 10.0 / (hi - lo)
        img -= lo / (hi - lo)
        np.clip(img, 0.0, 1.0, out=img)

        truth = self._truth(model, zr, disc, lesion_cols, angle, vcol, vw / dx, vd, vab, class_name)
        if model.defect == "corrupted_image":
            img = self._corrupt(img, rng)
        return img.astype(np.float32, copy=False), truth

    def _choroid_texture(self, rng: np.random.Generator, bm: np.ndarray, csi: np.ndarray) -> np.ndarray:
        """Stroma-ness in [0, 1] (0: a vessel lumen); small lumens under the choriocapillaris, large ones deeper."""
        H, W = self.config.height, self.config.width
        fields = []
        for f, sig in ((4, (0.8, 1.8)), (8, (0.9, 1.8))):
            h, w = -(-H // f) + 1, -(-W // f) + 1
            low = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), sig, mode="wrap")
            low /= low.std() + 1e-6
            fields.append(ndimage.zoom(low, f, order=1, grid_mode=False)[:H, :W])
        depth_frac = np.clip((self._rows - bm[None, :]) / np.maximum(csi - bm, 1.0)[None, :], 0.0, 1.0)
        field_ = fields[0] * (1.0 - depth_frac) + fields[1] * depth_frac
        return 1.0 / (1.0 + np.exp(-3.0 * (field_ + 0.2)))

    def _line(self, img: np.ndarray, z: np.ndarray, amp: float, sigma: float, mask: np.ndarray) -> None:
        """Add a bright Gaussian line (rows ``z``) to the columns in ``mask``."""
        cols = np.flatnonzero(mask)
        if not len(cols):
            return
        zc = z[cols]
        base = np.floor(zc).astype(np.int64)
        H = img.shape[0]
        reach = int(math.ceil(3 * sigma))
        for k in range(-reach, reach + 1):
            r = base + k
            ok = (r >= 0) & (r < H)
            w = amp * np.exp(-0.5 * ((r[ok] - zc[ok]) / sigma) ** 2)
            img[r[ok], cols[ok]] += w.astype(np.float32)

    def _vessel(
        self,
        R: np.ndarray,
        A: np.ndarray,
        col: float,
        width: float,
        centre: float,
        height: float,
        refl: float,
        att: float,
    ) -> None:
        H, W = R.shape
        hw, hh = max(width / 2, 0.5), max(height / 2, 0.5)
        c0, c1 = max(int(math.floor(col - hw - 1)), 0), min(int(math.ceil(col + hw + 1)) + 1, W)
        r0, r1 = max(int(math.floor(centre - hh - 1)), 0), min(int(math.ceil(centre + hh + 1)) + 1, H)
        if c0 >= c1 or r0 >= r1:
            return
        yy = np.arange(r0, r1, dtype=np.float32)[:, None]
        xx = np.arange(c0, c1, dtype=np.float32)[None, :]
        q = ((xx - col) / (hw + 0.5)) ** 2 + ((yy - centre) / (hh + 0.5)) ** 2
        w = np.clip((1.0 - q) * 3.0, 0.0, 1.0)
        # bright wall, slightly darker lumen
        R[r0:r1, c0:c1] = R[r0:r1, c0:c1] * (1.0 - w) + w * refl * (0.55 + 0.45 * q)
        # attenuation per row so that the total over the vessel's height is about att * diameter
        A[r0:r1, c0:c1] += w * att

    def _corrupt(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Destroy the anatomy: scrambled blocks, banding and heavy structured noise."""
        H, W = img.shape
        b = int(rng.choice([8, 16, 32])) if min(H, W) >= 64 else 4
        hb, wb = H // b, W // b
        out = img.copy()
        core = out[: hb * b, : wb * b].reshape(hb, b, wb, b).transpose(0, 2, 1, 3).reshape(hb * wb, b, b)
        core = core[rng.permutation(hb * wb)]
        flips = rng.random(hb * wb) < 0.5
        core[flips] = core[flips, ::-1]
        out[: hb * b, : wb * b] = core.reshape(hb, wb, b, b).transpose(0, 2, 1, 3).reshape(hb * b, wb * b)
        period = rng.uniform(4, 24)
        phase = rng.uniform(0, 2 * np.pi)
        if rng.random() < 0.5:
            band = np.sin(np.arange(H)[:, None] * 2 * np.pi / period + phase)
        else:
            band = np.sin(np.arange(W)[None, :] * 2 * np.pi / period + phase)
        out = 0.55 * out + 0.25 * (band + 1.0) / 2.0
        noise = ndimage.gaussian_filter(rng.standard_normal((H, W)).astype(np.float32), (0.5, 3.0))
        out += 0.25 * noise / (noise.std() + 1e-6) * rng.uniform(0.5, 1.0)
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def _truth(
        self,
        model: _EyeModel,
        zr: dict[str, np.ndarray],
        disc: np.ndarray,
        lesion_cols: np.ndarray,
        angle: float,
        vcol: np.ndarray,
        vwidth: np.ndarray,
        vdia: np.ndarray,
        vab: np.ndarray,
        class_name: str,
    ) -> BScanTruth:
        c = self.config
        H, W = c.height, c.width
        rows = np.arange(H, dtype=np.float32)[:, None]
        layers = {}
        for name in LAYER_BOUNDARIES:
            arr = zr[name].astype(np.float32).copy()
            if name != "ILM":
                arr[disc] = np.nan
            layers[name] = arr
        lesion = np.zeros((H, W), dtype=bool)
        fluid = np.zeros((H, W), dtype=bool)
        if model.lesion is not None and lesion_cols.any():
            cols = lesion_cols & ~disc
            # nevus: below the spared choriocapillaris; melanoma: LES_TOP is Bruch's membrane itself
            lesion[:, cols] = (rows >= zr["LES_TOP"][None, cols]) & (rows < zr["LES_BOT"][None, cols])
        if model.lesion_kind == "melanoma":
            fl = (zr["RPE"] - zr["OS_END"]) > 0
            fluid[:, fl] = (rows >= zr["OS_END"][None, fl]) & (rows < zr["RPE"][None, fl])

        centre = W // 2
        fovea: list[int] = []
        if model.defect == "doubled_fovea":
            off = int(round(model.pit_ring / self._dx))
            fovea = [centre - off, centre + off]
        elif model.defect != "absent_fovea":
            fovea = [centre]
        fovea = [f for f in fovea if 0 <= f < W]
        depths = [self._foveal_depth(zr["ILM"], f) for f in fovea]
        onh = None
        if disc.any():
            idx = np.flatnonzero(disc)
            onh = (int(idx[0]), int(idx[-1]))
        truth = BScanTruth(
            plane_angle=angle,
            laterality="R" if model.sign > 0 else "L",
            layers=layers,
            fovea_columns=fovea,
            foveal_depths_mm=depths,
            onh_columns=onh,
            lesion_mask=lesion,
            fluid_mask=fluid,
            vessel_columns=vcol.astype(np.float32),
            vessel_widths=vwidth.astype(np.float32),
            vessel_diameters_mm=vdia.astype(np.float32),
            vessel_abnormal=vab.astype(bool),
            defect=model.defect,
            class_name=class_name,
            lesion_kind=model.lesion_kind,
            pixel_spacing_mm=c.pixel_spacing_mm,
        )
        if model.defect == "corrupted_image":
            truth.valid_anatomy = False
            truth.layers = {k: np.full(W, np.nan, dtype=np.float32) for k in LAYER_BOUNDARIES}
            truth.fovea_columns, truth.foveal_depths_mm, truth.onh_columns = [], [], None
            truth.lesion_mask = np.zeros((H, W), dtype=bool)
            truth.fluid_mask = np.zeros((H, W), dtype=bool)
            empty = np.zeros(0, dtype=np.float32)
            truth.vessel_columns, truth.vessel_widths, truth.vessel_diameters_mm = empty, empty.copy(), empty.copy()
            truth.vessel_abnormal = np.zeros(0, dtype=bool)
        return truth

    def _foveal_depth(self, ilm: np.ndarray, col: int) -> float:
        k = max(int(round(1.5 / self._dx)), 1)
        left = ilm[max(col - k, 0) : col]
        right = ilm[col + 1 : col + 1 + k]
        rims = [float(np.nanmin(x)) for x in (left, right) if len(x) and np.isfinite(x).any()]
        if not rims:
            return 0.0
        return float((ilm[col] - np.mean(rims)) * self._dz)


# ------------------------------------------------------------------------------------------------------- data sets
def _largest_remainder(n: int, weights: Sequence[float]) -> list[int]:
    w = np.asarray(weights, dtype=np.float64)
    raw = n * w / w.sum()
    counts = np.floor(raw).astype(int)
    rest = n - counts.sum()
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts.tolist()


def _resolve_classes(classes: Sequence[str] | Mapping[str, str] | None, config: PhantomConfig) -> dict[str, str]:
    if classes is None:
        return dict(config.classes)
    if isinstance(classes, Mapping):
        out = {str(k): str(v) for k, v in classes.items()}
    else:
        out = {}
        for name in classes:
            name = str(name)
            if name in config.classes:
                out[name] = config.classes[name]
            elif name in DEFAULT_CLASSES:
                out[name] = DEFAULT_CLASSES[name]
            elif name in LESION_KINDS:
                out[name] = name
            else:
                raise ValueError(
                    f"class {name!r} has no lesion kind: pass a mapping name -> kind ({LESION_KINDS}) "
                    f"or use one of {sorted(set(config.classes) | set(DEFAULT_CLASSES))}"
                )
    for name, kind in out.items():
        if kind not in LESION_KINDS:
            raise ValueError(f"class {name!r}: unknown lesion kind {kind!r}; use one of {LESION_KINDS}")
    if not out:
        raise ValueError("classes must name at least one class")
    return out


def _defect_plan(defects: str | Mapping[str, float] | Sequence[str] | None, n: int, rng: np.random.Generator) -> list:
    plan: list[str | None] = [None] * n
    if defects is None:
        return plan
    if isinstance(defects, str):
        if defects not in DEFECTS:
            raise ValueError(f"unknown defect {defects!r}; use one of {DEFECTS}")
        return [defects] * n
    if isinstance(defects, Mapping):
        items = [(str(k), float(v)) for k, v in defects.items()]
    else:
        names = list(defects)
        items = [(str(k), 1.0 / len(names)) for k in names] if names else []
    for name, frac in items:
        if name not in DEFECTS:
            raise ValueError(f"unknown defect {name!r}; use one of {DEFECTS}")
        if frac < 0:
            raise ValueError(f"defect fraction must be >= 0, got {name}: {frac}")
    total = sum(f for _, f in items)
    if total > 1.0 + 1e-9:
        raise ValueError(f"defect fractions add up to {total} > 1")
    counts = [int(round(f * n)) for _, f in items]
    while sum(counts) > n:
        counts[int(np.argmax(counts))] -= 1
    order = rng.permutation(n)
    pos = 0
    for (name, _), k in zip(items, counts):
        for i in order[pos : pos + k]:
            plan[int(i)] = name
        pos += k
    return plan


def _angle_tag(angle: float, integral: bool) -> str:
    return f"{int(round(angle)):03d}" if integral else f"{angle:06.2f}".replace(".", "p")


def write_phantom_dataset(
    out_dir: str | PathLike,
    n_exams: int = 12,
    classes: Sequence[str] | Mapping[str, str] | None = None,
    prevalence: Mapping[str, float] | None = None,
    fmt: str = "png",
    seed: int = 0,
    config: PhantomConfig | None = None,
    defects: str | Mapping[str, float] | Sequence[str] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Write a phantom data set: images, a manifest, the ground truth per exam and a summary.

    Layout under ``out_dir``::

        images/<class>/<patient>_<exam>_<eye>_<angle>.png   8-bit PNG per B-scan (fmt="png"), or
        images/<class>/<patient>_<exam>_<eye>.dcm           one multi-frame Ophthalmic Tomography file (fmt="dicom")
        images/manifest.csv                                 image, label, patient_id, exam_id, laterality, ...
        ground_truth/<exam_id>.npz, .json                   :meth:`PhantomExam.save_truth`
        phantom_summary.json                                classes, counts, seed, settings

    ``images/`` is a class-folder tree with a manifest, so ``build_datalist(out_dir / "images")`` reads it like any
    user data set. Each patient has one or two exams (two: both eyes), so patient-level splits are meaningful.

    Args:
        out_dir: output folder (created).
        n_exams: number of exams.
        classes: class names (known names or lesion kinds) or a mapping name -> lesion kind; default
            ``config.classes``.
        prevalence: class name -> weight (default ``config.prevalence``, else equal); exam counts per class follow
            the weights exactly (largest-remainder rounding).
        fmt: "png" or "dicom".
        seed: data-set seed (each exam's seed is derived from it and recorded).
        config: phantom settings.
        defects: ``None``; a defect name (every exam); a mapping defect -> fraction of the exams; or a list of
            names (equal fractions adding to one).
        progress: show a tqdm progress bar.

    Returns:
        one datalist item per B-scan with the :class:`~medicraft_monai.data.keys.OCTKeys` keys (the image path
        relative to ``out_dir``; ``frame`` is the frame in a DICOM file, 0 for PNG), ``synthetic=False``,
        ``phantom=True``, ``defect`` and ``truth`` (the ground-truth ``.npz`` relative to ``out_dir``).
    """
    from tqdm.auto import tqdm

    fmt = str(fmt).lower()
    if fmt not in ("png", "dicom"):
        raise ValueError(f"fmt must be 'png' or 'dicom', got {fmt!r}")
    if int(n_exams) < 1:
        raise ValueError(f"n_exams must be >= 1, got {n_exams}")
    n_exams = int(n_exams)
    config = config or PhantomConfig()
    class_map = _resolve_classes(classes, config)
    prev = prevalence if prevalence is not None else config.prevalence
    config = PhantomConfig(**{**asdict(config), "classes": class_map, "prevalence": None})
    names = list(class_map)
    if prev is not None:
        unknown = set(prev) - set(names)
        if unknown:
            raise ValueError(f"prevalence names unknown classes {sorted(unknown)}; classes are {names}")
        weights = [float(prev.get(n, 0.0)) for n in names]
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"prevalence weights must be >= 0 with a positive sum, got {dict(prev)}")
    else:
        weights = [1.0] * len(names)
    counts = _largest_remainder(n_exams, weights)
    rng = _rng(seed, 0x5E7)
    exam_classes = [name for name, k in zip(names, counts) for _ in range(k)]
    exam_classes = [exam_classes[i] for i in rng.permutation(n_exams)]
    plan = _defect_plan(defects, n_exams, rng)

    # patients: one or two exams (two: both eyes of the same visit)
    exams: list[tuple[str, str, str]] = []  # (patient_id, exam tag, laterality)
    p = 0
    while len(exams) < n_exams:
        p += 1
        pid = f"P{p:04d}"
        if n_exams - len(exams) >= 2 and rng.random() < 0.5:
            exams += [(pid, "E1", "R"), (pid, "E2", "L")]
        else:
            exams.append((pid, "E1", "R" if rng.random() < 0.5 else "L"))

    out = Path(out_dir)
    img_root, gt_root = out / "images", out / "ground_truth"
    img_root.mkdir(parents=True, exist_ok=True)
    gt_root.mkdir(parents=True, exist_ok=True)
    phantom = OCTPhantom(config)
    angles = config.plane_angles()
    integral = bool(np.allclose(angles, np.round(angles)))
    row_mm, col_mm = config.pixel_spacing_mm
    items: list[dict[str, Any]] = []
    manifest: list[dict[str, Any]] = []
    exam_records = []
    for i in tqdm(range(n_exams), desc="phantom exams", disable=not progress):
        pid, tag, lat = exams[i]
        cls = exam_classes[i]
        exam_seed = int(np.random.SeedSequence([int(seed) % (1 << 63), i]).generate_state(1, np.uint64)[0] >> 1)
        exam_id = f"{pid}_{tag}"
        exam = phantom.generate_exam(exam_seed, cls, lat, defect=plan[i], patient_id=pid, exam_id=exam_id)
        frames = exam.to_uint8()
        truth_npz, _ = exam.save_truth(gt_root / exam_id)
        truth_rel = truth_npz.relative_to(out).as_posix()
        label = names.index(cls)
        base = {
            OCTKeys.LABEL: label,
            OCTKeys.CLASS_NAME: cls,
            OCTKeys.PATIENT_ID: pid,
            OCTKeys.EXAM_ID: exam_id,
            OCTKeys.LATERALITY: lat,
            OCTKeys.SYNTHETIC: False,
            "phantom": True,
            "defect": plan[i],
            "truth": truth_rel,
        }
        cls_dir = img_root / cls
        cls_dir.mkdir(parents=True, exist_ok=True)
        if fmt == "png":
            from PIL import Image

            for k, angle in enumerate(angles):
                path = cls_dir / f"{pid}_{tag}_{lat}_{_angle_tag(float(angle), integral)}.png"
                Image.fromarray(frames[k]).save(path)
                rel = path.relative_to(img_root).as_posix()
                items.append(
                    {OCTKeys.IMAGE: f"images/{rel}", **base, OCTKeys.PLANE_ANGLE: float(angle), OCTKeys.FRAME: 0}
                )
                manifest.append(
                    {
                        "image": rel,
                        "label": cls,
                        "patient_id": pid,
                        "exam_id": exam_id,
                        "plane_angle": float(angle),
                        "laterality": lat,
                        "frame": 0,
                    }
                )
        else:
            from pydicom.uid import generate_uid

            from .dicom import write_oct_dicom

            path = cls_dir / f"{pid}_{tag}_{lat}.dcm"
            ent = ["medicraft-phantom", str(seed), str(exam_seed), exam_id]
            write_oct_dicom(
                path,
                frames,
                plane_angles=[float(a) for a in angles],
                laterality=lat,
                pixel_spacing=(row_mm, col_mm),
                patient_id=pid,
                patient_name=f"PHANTOM^{pid}",
                study_instance_uid=generate_uid(entropy_srcs=[*ent, "study"]),
                series_instance_uid=generate_uid(entropy_srcs=[*ent, "series"]),
                sop_instance_uid=generate_uid(entropy_srcs=[*ent, "sop"]),
                series_description=f"medicraft OCT phantom ({cls})",
                acquisition_datetime=datetime(2000, 1, 1),
            )
            rel = path.relative_to(img_root).as_posix()
            for k, angle in enumerate(angles):
                items.append(
                    {OCTKeys.IMAGE: f"images/{rel}", **base, OCTKeys.PLANE_ANGLE: float(angle), OCTKeys.FRAME: k}
                )
            manifest.append(
                {
                    "image": rel,
                    "label": cls,
                    "patient_id": pid,
                    "exam_id": exam_id,
                    "plane_angle": "",
                    "laterality": lat,
                    "frame": "",
                }
            )
        exam_records.append(
            {
                "exam_id": exam_id,
                "patient_id": pid,
                "class_name": cls,
                "laterality": lat,
                "defect": plan[i],
                "seed": exam_seed,
                "truth": truth_rel,
            }
        )

    with open(img_root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["image", "label", "patient_id", "exam_id", "plane_angle", "laterality", "frame"]
        )
        writer.writeheader()
        writer.writerows(manifest)
    summary = {
        "name": "medicraft OCT phantom",
        "seed": int(seed),
        "format": fmt,
        "n_exams": n_exams,
        "n_patients": len({e[0] for e in exams[:n_exams]}),
        "n_images": len(items),
        "labels": {str(i): n for i, n in enumerate(names)},
        "classes": class_map,
        "exams_per_class": dict(zip(names, counts)),
        "defects": {d: plan.count(d) for d in DEFECTS if d in plan},
        "config": _jsonable(asdict(config)),
        "exams": exam_records,
    }
    (out / "phantom_summary.json").write_text(json.dumps(summary, indent=1))
    return items
