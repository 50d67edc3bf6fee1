"""Settings of the OCT phantom: the layer, lesion-kind, class and defect vocabularies, :class:`PhantomConfig` (every
setting, with tissue reflectivities and attenuations) and the seeded random streams every draw comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DEFAULT_CLASSES", "DEFECTS", "LAYER_BOUNDARIES", "LESION_KINDS", "PhantomConfig"]

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


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) % (1 << 63), *stream]))


_STREAM_ANATOMY, _STREAM_VESSELS, _STREAM_LESION, _STREAM_DEFECT, _STREAM_NOISE = 1, 2, 3, 4, 5
