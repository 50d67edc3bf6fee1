"""The three-dimensional eye model of one phantom exam: retinal layer thicknesses with the foveal pit, the optic
nerve head, Bruch's membrane, the lesion (nevus or melanoma) and the retinal vessels, in model coordinates (u
nasal, v superior, fovea at the origin). The renderer cuts B-scans from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.interpolate import CubicSpline

from medicraft_monai.data.phantom.config import (
    _STREAM_ANATOMY,
    _STREAM_DEFECT,
    _STREAM_LESION,
    _STREAM_VESSELS,
    PhantomConfig,
    _rng,
    _uniform,
)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


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
