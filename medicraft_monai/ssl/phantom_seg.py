"""A segmentation data set from the OCT phantom's exact ground truth: retinal layer bands, lesion and fluid masks.

:func:`build_phantom_segmentation_datalist` writes phantom exams (:func:`medicraft_monai.data.write_phantom_dataset`),
turns each B-scan's ground truth (``ground_truth/<exam>.npz``, see :meth:`PhantomExam.truth_arrays`) into a label
map (:func:`phantom_label_map`) saved as an 8-bit PNG, splits the B-scans by patient and writes a decathlon-style
datalist whose items have ``image`` and ``label`` paths (``monai.data.load_decathlon_datalist`` reads it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medicraft_monai.data.datalist import split_by_patient
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.data.phantom import LAYER_BOUNDARIES, PhantomConfig, write_phantom_dataset
from medicraft_monai.utils import write_json_atomic

__all__ = [
    "SEGMENTATION_BOUNDARIES",
    "build_phantom_segmentation_datalist",
    "phantom_label_map",
    "segmentation_class_names",
]

SEGMENTATION_BOUNDARIES: tuple[str, ...] = ("ILM", "OPL_ONL", "ISOS", "BM", "CSI")
"""Default boundaries: the bands between them are inner retina (ILM to OPL/ONL), outer nuclear layer and inner
segments (to the ellipsoid zone), outer segments and RPE (to Bruch's membrane), and choroid (to the sclera)."""

_BAND_NAMES = {
    ("ILM", "OPL_ONL"): "inner_retina",
    ("OPL_ONL", "ISOS"): "onl_is",
    ("ISOS", "BM"): "os_rpe",
    ("BM", "CSI"): "choroid",
}


def segmentation_class_names(boundaries: Sequence[str] = SEGMENTATION_BOUNDARIES, lesions: bool = True) -> list[str]:
    """Names of the label values of :func:`phantom_label_map`: background, one per band, then lesion and fluid."""
    bands = [_BAND_NAMES.get((a, b), f"{a}_to_{b}") for a, b in zip(boundaries[:-1], boundaries[1:])]
    return ["background", *bands, *(["lesion", "fluid"] if lesions else [])]


def phantom_label_map(
    truth: Mapping[str, np.ndarray],
    plane: int,
    height: int,
    boundaries: Sequence[str] = SEGMENTATION_BOUNDARIES,
    lesions: bool = True,
) -> np.ndarray:
    """The (H, W) uint8 label map of one plane of an exam's ground truth.

    A pixel in row ``i`` belongs to band ``k`` (label ``k + 1``) when ``z_k <= i < z_{k+1}`` for the boundary rows
    ``z`` of that column (the phantom's convention: pixel centres at integer rows). Where a boundary is undefined
    (inside the optic nerve head, only the ILM exists) the pixels stay background. With ``lesions``, the lesion
    and then the subretinal fluid masks are painted on top (labels ``len(boundaries)`` and ``+ 1``).

    Args:
        truth: the arrays of :meth:`~medicraft_monai.data.PhantomExam.truth_arrays` (or the ``.npz`` loaded).
        plane: the plane index in the exam.
        height: image height H.
        boundaries: boundary names (:data:`~medicraft_monai.data.phantom.LAYER_BOUNDARIES`), top to bottom.
        lesions: add the lesion and fluid labels.
    """
    unknown = [b for b in boundaries if b not in LAYER_BOUNDARIES]
    if unknown or len(boundaries) < 2:
        raise ValueError(f"boundaries must be at least two of {LAYER_BOUNDARIES}, got {list(boundaries)}")
    z = np.stack([np.asarray(truth[f"layer_{b}"][plane], dtype=np.float64) for b in boundaries])  # (K, W)
    rows = np.arange(int(height), dtype=np.float64)[:, None]
    out = np.zeros((int(height), z.shape[1]), dtype=np.uint8)
    for k in range(len(boundaries) - 1):
        top, bottom = z[k][None, :], z[k + 1][None, :]
        inside = (rows >= top) & (rows < bottom)  # NaN compares False: undefined boundaries stay background
        out[inside] = k + 1
    if lesions:
        out[np.asarray(truth["lesion_mask"][plane], dtype=bool)] = len(boundaries)
        out[np.asarray(truth["fluid_mask"][plane], dtype=bool)] = len(boundaries) + 1
    return out


def build_phantom_segmentation_datalist(
    out_dir: str | os.PathLike,
    n_exams: int = 12,
    seed: int = 0,
    height: int = 128,
    width: int = 256,
    classes: Sequence[str] | Mapping[str, str] | None = None,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    boundaries: Sequence[str] = SEGMENTATION_BOUNDARIES,
    lesions: bool = True,
    n_planes: int = 12,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write phantom B-scans, their label maps and a patient-split segmentation datalist; return the datalist path.

    Layout under ``out_dir``: ``images/<class>/*.png`` (the B-scans), ``labels/<class>/*.png`` (label maps, values
    0..N-1, see :func:`segmentation_class_names`), ``ground_truth/*.npz``, and ``datalist.json`` with
    ``training``/``validation``/``test`` items ``{"image", "label", "class_label", "class_name", "patient_id",
    ...}`` (paths relative to ``out_dir``) and ``labels`` naming the segmentation classes. An existing datalist is
    returned as it is unless ``overwrite``.

    Args:
        out_dir: output folder.
        n_exams: phantom exams (``n_planes`` B-scans each).
        seed: seed of the phantom and of the split.
        height, width: B-scan size.
        classes: phantom classes (default: healthy, benign, melanoma).
        fractions: (training, validation, test) fractions of patients.
        boundaries: layer boundaries delimiting the bands.
        lesions: label the lesion and the subretinal fluid.
        n_planes: radial planes per exam.
        overwrite: rebuild even if ``datalist.json`` exists.
        progress: show progress bars.
    """
    out = Path(out_dir)
    path = out / "datalist.json"
    if path.is_file() and not overwrite:
        return path
    config = PhantomConfig(height=int(height), width=int(width), n_planes=int(n_planes))
    items = write_phantom_dataset(
        out, n_exams=n_exams, classes=classes, seed=seed, config=config, progress=progress, overwrite=overwrite
    )
    names = segmentation_class_names(boundaries, lesions)
    truths: dict[str, Any] = {}
    seg_items = []
    for it in items:
        truth_rel = it["truth"]
        if truth_rel not in truths:
            with np.load(out / truth_rel) as npz:
                truths[truth_rel] = {k: npz[k] for k in npz.files}
        truth = truths[truth_rel]
        plane = int(np.argmin(np.abs(truth["plane_angles"] - float(it[OCTKeys.PLANE_ANGLE]))))
        if not bool(truth["valid_anatomy"][plane]):
            continue  # a corrupted image has no anatomy to segment
        label = phantom_label_map(truth, plane, config.height, boundaries, lesions)
        label_rel = "labels/" + it[OCTKeys.IMAGE].split("/", 1)[1]
        (out / label_rel).parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(label).save(out / label_rel)
        seg_items.append({**it, "label_path": label_rel})
    splits = split_by_patient(seg_items, fractions, seed)
    datalist: dict[str, Any] = {
        "name": "phantom_segmentation",
        "description": f"OCT phantom B-scans ({height}x{width}) with layer-band, lesion and fluid label maps from "
        f"the phantom's ground truth; split by patient with seed {seed} (medicraft_monai)",
        "labels": {str(i): n for i, n in enumerate(names)},
        "num_classes": len(names),
        "boundaries": list(boundaries),
        "seed": int(seed),
    }
    for split, split_items in splits.items():
        datalist[split] = [
            {
                OCTKeys.IMAGE: s[OCTKeys.IMAGE],
                "label": s["label_path"],
                "class_label": int(s[OCTKeys.LABEL]),
                OCTKeys.CLASS_NAME: s[OCTKeys.CLASS_NAME],
                OCTKeys.PATIENT_ID: s[OCTKeys.PATIENT_ID],
                OCTKeys.EXAM_ID: s[OCTKeys.EXAM_ID],
                OCTKeys.PLANE_ANGLE: s[OCTKeys.PLANE_ANGLE],
                "truth": s["truth"],
            }
            for s in split_items
        ]
    return write_json_atomic(path, datalist, indent=1)
