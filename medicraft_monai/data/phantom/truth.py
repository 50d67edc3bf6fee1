"""Ground truth of the OCT phantom: :class:`BScanTruth` per B-scan, :class:`PhantomExam` (images, truths and how the
exam was made; written as ``.npz`` + ``.json``) and :func:`load_phantom_truth` that reads it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medicraft_monai.data.phantom.config import LAYER_BOUNDARIES
from medicraft_monai.utils import atomic_write, to_jsonable, write_text_atomic

__all__ = ["BScanTruth", "PhantomExam", "load_phantom_truth"]


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
            "meta": to_jsonable(self.meta, ndigits=6, where="meta"),
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
        atomic_write(npz, lambda tmp: np.savez_compressed(tmp, **self.truth_arrays()))
        write_text_atomic(js, json.dumps(self.summary(), indent=1))
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
