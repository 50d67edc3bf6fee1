"""The OCT phantom's renderer: :class:`OCTPhantom` cuts radial B-scans from an exam's eye model and renders them in
the linear intensity domain (reflectivities, attenuation, shadows, fall-off, noise floor, speckle), log-compressed
to a display image in ``[0, 1]``, with the plane's exact ground truth.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from medicraft_monai.data.keys import normalise_laterality
from medicraft_monai.data.phantom.config import (
    _LN10_10,
    _RENDER_BOUNDARIES,
    _STREAM_NOISE,
    DEFECTS,
    LAYER_BOUNDARIES,
    LESION_KINDS,
    PhantomConfig,
    _rng,
)
from medicraft_monai.data.phantom.eye import _EyeModel
from medicraft_monai.data.phantom.truth import BScanTruth, PhantomExam

__all__ = ["OCTPhantom"]


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
