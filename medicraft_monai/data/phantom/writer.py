"""Phantom data sets on disk: :func:`write_phantom_dataset` (images as PNG or DICOM, a manifest, the ground truth and a
summary) and :func:`make_phantom_dataset` (the same plus a patient-split datalist, as ``medicraft phantom`` and the
demo write it).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medicraft_monai.data.datalist import build_datalist, count_table
from medicraft_monai.data.errors import OCTDataError
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.data.phantom.config import (
    DEFAULT_CLASSES,
    DEFECTS,
    LESION_KINDS,
    PhantomConfig,
    _rng,
)
from medicraft_monai.data.phantom.renderer import OCTPhantom
from medicraft_monai.utils import to_jsonable

__all__ = ["make_phantom_dataset", "write_phantom_dataset"]


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

            from medicraft_monai.data.dicom import write_oct_dicom

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
        "config": to_jsonable(asdict(config), ndigits=6, where="config"),
        "exams": exam_records,
    }
    (out / "phantom_summary.json").write_text(json.dumps(summary, indent=1))
    return items


def make_phantom_dataset(
    output_dir: str | PathLike,
    exams: int = 12,
    fmt: str = "png",
    seed: int = 0,
    classes: Sequence[str] | None = None,
    prevalence: Mapping[str, float] | None = None,
    defect: str | None = None,
    height: int = 256,
    width: int = 512,
    planes: int = 12,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a phantom data set, its ground truth and a patient-split datalist (``output_dir/datalist.json``).

    The images go to ``output_dir/images/<class>/`` with a ``manifest.csv`` (patient, exam, plane angle,
    laterality), the ground truth to ``output_dir/ground_truth/``; the datalist is then built from the images the
    same way as for any user data set (:func:`~medicraft_monai.data.build_datalist`), so the phantom exercises the
    same code path. Returns the datalist and prints its per-class, per-split count table.

    An ``output_dir`` that already holds a phantom data set is refused (its files would mix with the new ones)
    unless ``overwrite`` is set, which first removes its ``images/`` and ``ground_truth/`` folders.
    """
    out = Path(output_dir)
    previous = [out / "images", out / "ground_truth"]
    if any(p.is_dir() and any(p.iterdir()) for p in previous):
        if not overwrite:
            raise OCTDataError(out, "already holds a phantom data set; choose an empty folder or pass --overwrite")
        for p in previous:
            shutil.rmtree(p, ignore_errors=True)
    config = PhantomConfig(height=height, width=width, n_planes=planes)
    write_phantom_dataset(
        out,
        n_exams=exams,
        classes=list(classes) if classes else None,
        prevalence=dict(prevalence) if prevalence else None,
        fmt=fmt,
        seed=seed,
        config=config,
        defects=defect,
        progress=progress,
    )
    class_order = list(classes) if classes else list(config.classes)  # the phantom's order, not alphabetical
    datalist = build_datalist(
        out / "images",
        output=out / "datalist.json",
        classes=class_order,
        fractions=tuple(fractions),
        seed=seed,
        strict=True,
        name="medicraft OCT phantom",
    )
    print(count_table(datalist))
    return datalist
