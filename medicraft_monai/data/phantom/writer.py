"""Phantom data sets on disk: :func:`write_phantom_dataset` (images as PNG or DICOM, a manifest, the ground truth and a
summary) and :func:`make_phantom_dataset` (the same plus a patient-split datalist, as ``medicraft phantom`` and the
demo write it).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medicraft_monai.data.datalist import _check_fractions, build_datalist, count_table
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
from medicraft_monai.utils import atomic_write, file_sha256, to_jsonable, write_csv_atomic, write_json_atomic

__all__ = ["PHANTOM_RECORD", "make_phantom_dataset", "write_phantom_dataset"]

#: the phantom's record of a data set (beside ``images/``): the settings it was asked for, whether it finished, and
#: every file it wrote with its SHA-256. A rerun resumes from it; ``overwrite`` deletes only the files it lists.
PHANTOM_RECORD = "phantom_files.json"
_FOLDERS = ("images", "ground_truth")
_SUMMARY = "phantom_summary.json"  # every version wrote it, the record came later: without one it marks an older set
_MANIFEST_FIELDS = ["image", "label", "patient_id", "exam_id", "plane_angle", "laterality", "frame"]
#: what one B-scan takes on disk, as an upper bound: the image (raw 8-bit pixels; PNG compresses speckle little) plus
#: its ground truth (~0.6 byte per pixel at 64 x 128, less for larger planes), plus a few kB per file
_BYTES_PER_PIXEL = 2.0
_BYTES_PER_IMAGE = 8192


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


@dataclass
class _PhantomPlan:
    """A checked request: what every exam is (class, patient, eye, defect), before anything is written."""

    settings: dict[str, Any]
    config: PhantomConfig
    class_map: dict[str, str]
    names: list[str]
    counts: list[int]
    exam_classes: list[str]
    defects: list[str | None]
    exams: list[tuple[str, str, str]]  # (patient_id, exam tag, laterality)
    fmt: str
    seed: int

    @property
    def n_images(self) -> int:
        return len(self.exams) * self.config.n_planes

    def estimated_bytes(self) -> int:
        """An upper bound of what the data set takes on disk (images and ground truth)."""
        pixels = self.config.height * self.config.width
        return int(self.n_images * (pixels * _BYTES_PER_PIXEL + _BYTES_PER_IMAGE))


def _plan_phantom(
    n_exams: int,
    classes: Sequence[str] | Mapping[str, str] | None,
    prevalence: Mapping[str, float] | None,
    fmt: str,
    seed: int,
    config: PhantomConfig | None,
    defects: str | Mapping[str, float] | Sequence[str] | None,
    min_patients_per_class: int = 0,
) -> _PhantomPlan:
    """Check every argument and draw the exams' classes, patients and defects; writes nothing."""
    fmt = str(fmt).lower()
    if fmt not in ("png", "dicom"):
        raise ValueError(f"fmt must be 'png' or 'dicom', got {fmt!r}")
    if isinstance(n_exams, bool) or int(n_exams) < 1:
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
    min_p = int(min_patients_per_class)
    if min_p < 0:
        raise ValueError(f"min_patients_per_class must be >= 0, got {min_patients_per_class}")
    short = {n: k for n, k in zip(names, counts) if 0 < k < min_p}
    if short:
        raise ValueError(
            f"min_patients_per_class={min_p} needs at least {min_p} exams of every class, but {short} get fewer "
            f"of {n_exams} exams with prevalence {dict(zip(names, weights))}: give more exams"
        )
    rng = _rng(seed, 0x5E7)
    exam_classes = [name for name, k in zip(names, counts) for _ in range(k)]
    exam_classes = [exam_classes[i] for i in rng.permutation(n_exams)]
    plan = _defect_plan(defects, n_exams, rng)

    # patients: one or two exams (two: both eyes of the same visit)
    exams: list[tuple[str, str, str]] = []
    p = 0
    patients_of = dict.fromkeys(names, 0)  # patients per class so far; both eyes of one class make one patient
    while len(exams) < n_exams:
        p += 1
        pid = f"P{p:04d}"
        pair = n_exams - len(exams) >= 2 and rng.random() < 0.5
        if pair and min_p:
            a, b = exam_classes[len(exams)], exam_classes[len(exams) + 1]
            left = exam_classes[len(exams) :].count(a)  # exams of a not yet given a patient, these two included
            pair = a != b or patients_of[a] + left - 1 >= min_p
        if pair:
            for c in {exam_classes[len(exams)], exam_classes[len(exams) + 1]}:
                patients_of[c] += 1
            exams += [(pid, "E1", "R"), (pid, "E2", "L")]
        else:
            patients_of[exam_classes[len(exams)]] += 1
            exams.append((pid, "E1", "R" if rng.random() < 0.5 else "L"))
    settings = {
        "n_exams": n_exams,
        "fmt": fmt,
        "seed": int(seed),
        "defects": plan,
        "exams_per_class": dict(zip(names, counts)),
        "config": to_jsonable(asdict(config), ndigits=6, where="config"),
    }
    if min_p:  # only then: records of data sets written before the option stay valid
        settings["min_patients_per_class"] = min_p
    return _PhantomPlan(settings, config, class_map, names, counts, exam_classes, plan, exams, fmt, int(seed))


def _as_stored(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), to compare with a stored record."""
    return json.loads(json.dumps(value))


def _read_record(out: Path) -> dict[str, Any] | None:
    path = out / PHANTOM_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise OCTDataError(path, f"phantom record cannot be read ({e}); choose an empty folder") from None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise OCTDataError(path, "is not a phantom record (no 'files'); choose an empty folder")
    return record


_TMP = re.compile(r"^\..+\.tmp\d+")  # utils.files.default_tmp_path: a write cut short by a killed run


def _files_under(out: Path, top: Sequence[str] = ()) -> list[str]:
    """Every file under ``images/`` and ``ground_truth/``, and each of the ``top`` files of ``out`` that exists,
    relative to ``out`` (POSIX)."""
    found = [name for name in top if (out / name).is_file() or (out / name).is_symlink()]
    for name in _FOLDERS:
        root = out / name
        if root.is_dir():
            found += [f.relative_to(out).as_posix() for f in sorted(root.rglob("*")) if not f.is_dir()]
    return found


def _foreign_files_message(out: Path, foreign: list[str], why: str) -> str:
    by_folder: dict[str, list[str]] = {}
    for rel in foreign:
        top, _, rest = rel.partition("/") if "/" in rel else ("", "", rel)
        by_folder.setdefault(top, []).append(rest)
    parts = []
    for top, rels in by_folder.items():
        shown = ", ".join(rels[:5]) + (f", ... ({len(rels) - 5} more)" if len(rels) > 5 else "")
        parts.append(f"{out / top if top else out} holds {len(rels)} file(s) the phantom did not write: {shown}")
    return "; ".join(parts) + f" ({why}); move them away or choose an empty folder (nothing was changed)"


def _older_set_message(out: Path, present: Sequence[str], overwrite: bool) -> str:
    """Why a data set an older version wrote (its summary, no record) is refused, and what to do."""
    import shlex

    tops = sorted({rel.split("/")[0] for rel in present} | {_SUMMARY})
    tops += ["datalist.json"] if (out / "datalist.json").is_file() and "datalist.json" not in tops else []
    delete = " ".join(shlex.quote(str(out / t)) for t in tops)
    shown = ", ".join(t + "/" if (out / t).is_dir() else t for t in tops)
    return (
        f"holds a phantom data set written by an older medicraft_monai ({shown}: {len(present)} file(s)) without the "
        f"record {PHANTOM_RECORD} of the files it wrote, so the phantom cannot tell its files from yours "
        f"({'--overwrite deletes nothing' if overwrite else 'and a new set would mix with them'}); if nothing of yours "
        "is in it, delete it yourself "
        f"(rm -r {delete}) and run again, or choose an empty folder (nothing was changed)"
    )


def _prepare_folder(out: Path, settings: Mapping[str, Any], overwrite: bool, top: Sequence[str] = ()) -> dict[str, Any]:
    """The record to continue from: a fresh one, the same request's (resume), or a fresh one after deleting the
    files a phantom of other settings wrote (``overwrite``). Refuses, changing nothing, a folder with files the
    phantom did not write (under ``images/`` and ``ground_truth/``, or one of the ``top`` files it writes in
    ``out``), and a data set an older version wrote without a record."""
    record = _read_record(out)
    present = _files_under(out, (_SUMMARY, *top))
    if record is None:
        if (out / _SUMMARY).is_file():
            raise OCTDataError(out, _older_set_message(out, present, overwrite))
        if present:
            raise OCTDataError(
                None, _foreign_files_message(out, present, f"there is no phantom record {PHANTOM_RECORD}")
            )
        return {"settings": dict(settings), "complete": False, "files": {}}
    written = record["files"]
    foreign = [rel for rel in present if rel not in written and not _TMP.match(Path(rel).name)]
    if foreign:
        raise OCTDataError(None, _foreign_files_message(out, foreign, f"they are not in {out / PHANTOM_RECORD}"))
    if record.get("settings") == _as_stored(settings):
        return record  # the same request: resume
    old = record.get("settings") or {}
    changed = sorted(k for k in set(old) | set(settings) if old.get(k) != _as_stored(settings).get(k))
    what = "a phantom data set" if record.get("complete") else "an incomplete phantom data set"
    if not overwrite:
        raise OCTDataError(
            out,
            f"already holds {what} made with other settings (differs in {changed}); choose an empty folder, rerun "
            "with the same settings to finish it, or pass --overwrite (which deletes only the files the phantom wrote)",
        )
    for rel in [*written, *(r for r in present if _TMP.match(Path(r).name))]:  # never a file it did not write
        (out / rel).unlink(missing_ok=True)
    for name in _FOLDERS:  # the folders the phantom made, now empty, deepest first
        root = out / name
        if root.is_dir():
            for d in sorted((d for d in root.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
                if not any(d.iterdir()):
                    d.rmdir()
    (out / PHANTOM_RECORD).unlink(missing_ok=True)
    return {"settings": dict(settings), "complete": False, "files": {}}


def _check_disk(out: Path, plan: _PhantomPlan) -> None:
    """Refuse, up front and with the estimate, a data set that does not fit on the disk."""
    folder = out
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    need = plan.estimated_bytes()
    free = shutil.disk_usage(folder).free
    if need > free:
        h, w = plan.config.height, plan.config.width
        raise OCTDataError(
            out,
            f"the phantom needs about {need / 1e6:,.0f} MB ({plan.n_images} images of {h} x {w} with their ground "
            f"truth) but only {free / 1e6:,.0f} MB are free on that disk; ask for fewer n_exams or n_planes or a "
            "smaller image, or choose another folder",
        )


def _mark_pending(out: Path, record: dict[str, Any], rels: Sequence[str]) -> None:
    """List ``rels`` in the record before they are written (digest ``""``: being written), so a run interrupted between
    writing one and recording its digest leaves a file the rerun knows as its own, never one it refuses as foreign."""
    record["files"].update({rel: record["files"].get(rel, "") for rel in rels})
    write_json_atomic(out / PHANTOM_RECORD, record, indent=1)


def _exam_complete(out: Path, files: Mapping[str, str], rels: Sequence[str]) -> bool:
    """Every file of an exam was recorded and still has the recorded bytes."""
    return all(rel in files and (out / rel).is_file() and file_sha256(out / rel) == files[rel] for rel in rels)


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
    overwrite: bool = False,
    also_writes: Sequence[str] = (),
    min_patients_per_class: int = 0,
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
        out_dir: output folder (created once the arguments are checked).
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
        overwrite: replace a phantom data set of other settings already in ``out_dir`` (only the files its record
            lists are deleted).
        also_writes: files (relative to ``out_dir``) the caller writes next and lists in the record, such as
            :func:`make_phantom_dataset`'s ``datalist.json``: one that is there and not in the record is refused like
            a file under ``images/``.
        min_patients_per_class: both eyes of a patient are of one class only while that class keeps at least this
            many patients (0: eyes paired at random), so a rare class can have a patient in every split
            (:func:`~medicraft_monai.data.datalist.split_by_patient` needs as many patients as splits).

    Every argument is checked before anything is written, and a request that does not fit on the disk is refused
    with the estimate. Each file is written atomically and listed, with its SHA-256, in ``out_dir/phantom_files.json``
    after each exam, so an interrupted run leaves no partial file and a rerun with the same settings resumes: it keeps
    the exams whose files match the record and writes the rest. A folder whose ``images/`` or ``ground_truth/``
    holds files the phantom did not write (or files without a record), or whose ``phantom_summary.json`` or
    ``also_writes`` files are not in the record, is refused, and nothing in it is touched; so is a data set an older
    version wrote (it has no record: the message says to delete it by hand, naming what to delete).

    Returns:
        one datalist item per B-scan with the :class:`~medicraft_monai.data.keys.OCTKeys` keys (the image path
        relative to ``out_dir``; ``frame`` is the frame in a DICOM file, 0 for PNG), ``synthetic=False``,
        ``phantom=True``, ``defect`` and ``truth`` (the ground-truth ``.npz`` relative to ``out_dir``).
    """
    from tqdm.auto import tqdm

    plan = _plan_phantom(n_exams, classes, prevalence, fmt, seed, config, defects, min_patients_per_class)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OCTDataError(out, "output_dir exists and is not a folder")
    record = _prepare_folder(out, plan.settings, overwrite, also_writes)
    _check_disk(out, plan)
    config, names, fmt, seed = plan.config, plan.names, plan.fmt, plan.seed
    img_root, gt_root = out / "images", out / "ground_truth"
    img_root.mkdir(parents=True, exist_ok=True)
    gt_root.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = record["files"]
    record["complete"] = False
    phantom = OCTPhantom(config)
    angles = config.plane_angles()
    integral = bool(np.allclose(angles, np.round(angles)))
    row_mm, col_mm = config.pixel_spacing_mm
    items: list[dict[str, Any]] = []
    manifest: list[dict[str, Any]] = []
    exam_records = []
    resumed = 0
    for i in tqdm(range(len(plan.exams)), desc="phantom exams", disable=not progress):
        pid, tag, lat = plan.exams[i]
        cls = plan.exam_classes[i]
        exam_seed = int(np.random.SeedSequence([int(seed) % (1 << 63), i]).generate_state(1, np.uint64)[0] >> 1)
        exam_id = f"{pid}_{tag}"
        truth_rel = f"ground_truth/{exam_id}.npz"
        base = {
            OCTKeys.LABEL: names.index(cls),
            OCTKeys.CLASS_NAME: cls,
            OCTKeys.PATIENT_ID: pid,
            OCTKeys.EXAM_ID: exam_id,
            OCTKeys.LATERALITY: lat,
            OCTKeys.SYNTHETIC: False,
            "phantom": True,
            "defect": plan.defects[i],
            "truth": truth_rel,
        }
        row = {"label": cls, "patient_id": pid, "exam_id": exam_id, "laterality": lat}
        if fmt == "png":
            images = [f"{cls}/{pid}_{tag}_{lat}_{_angle_tag(float(a), integral)}.png" for a in angles]
            for rel, angle in zip(images, angles):
                items.append(
                    {OCTKeys.IMAGE: f"images/{rel}", **base, OCTKeys.PLANE_ANGLE: float(angle), OCTKeys.FRAME: 0}
                )
                manifest.append({"image": rel, **row, "plane_angle": float(angle), "frame": 0})
        else:
            images = [f"{cls}/{pid}_{tag}_{lat}.dcm"]
            for k, angle in enumerate(angles):
                items.append(
                    {OCTKeys.IMAGE: f"images/{images[0]}", **base, OCTKeys.PLANE_ANGLE: float(angle), OCTKeys.FRAME: k}
                )
            manifest.append({"image": images[0], **row, "plane_angle": "", "frame": ""})
        exam_records.append(
            {
                "exam_id": exam_id,
                "patient_id": pid,
                "class_name": cls,
                "laterality": lat,
                "defect": plan.defects[i],
                "seed": exam_seed,
                "truth": truth_rel,
            }
        )
        rels = [truth_rel, f"ground_truth/{exam_id}.json", *(f"images/{rel}" for rel in images)]
        if _exam_complete(out, files, rels):
            resumed += 1
            continue
        exam = phantom.generate_exam(exam_seed, cls, lat, defect=plan.defects[i], patient_id=pid, exam_id=exam_id)
        frames = exam.to_uint8()
        exam.save_truth(gt_root / exam_id)
        if fmt == "png":
            from PIL import Image

            for k, rel in enumerate(images):
                atomic_write(img_root / rel, Image.fromarray(frames[k]).save)
        else:
            from pydicom.uid import generate_uid

            from medicraft_monai.data.dicom import write_oct_dicom

            ent = ["medicraft-phantom", str(seed), str(exam_seed), exam_id]
            dicom = {
                "frames": frames,
                "plane_angles": [float(a) for a in angles],
                "laterality": lat,
                "pixel_spacing": (row_mm, col_mm),
                "patient_id": pid,
                "patient_name": f"PHANTOM^{pid}",
                "study_instance_uid": generate_uid(entropy_srcs=[*ent, "study"]),
                "series_instance_uid": generate_uid(entropy_srcs=[*ent, "series"]),
                "sop_instance_uid": generate_uid(entropy_srcs=[*ent, "sop"]),
                "series_description": f"medicraft OCT phantom ({cls})",
                "acquisition_datetime": datetime(2000, 1, 1),
            }
            atomic_write(img_root / images[0], partial(write_oct_dicom, **dicom))
        files.update({rel: file_sha256(out / rel) for rel in rels})
        write_json_atomic(out / PHANTOM_RECORD, record, indent=1)
    if resumed and progress:
        print(f"phantom: {resumed} of {len(plan.exams)} exams were already complete in {out} (kept)")

    _mark_pending(out, record, ("images/manifest.csv", _SUMMARY))
    write_csv_atomic(img_root / "manifest.csv", manifest, _MANIFEST_FIELDS)
    summary = {
        "name": "medicraft OCT phantom",
        "seed": int(seed),
        "format": fmt,
        "n_exams": len(plan.exams),
        "n_patients": len({e[0] for e in plan.exams}),
        "n_images": len(items),
        "labels": {str(i): n for i, n in enumerate(names)},
        "classes": plan.class_map,
        "exams_per_class": dict(zip(names, plan.counts)),
        "defects": {d: plan.defects.count(d) for d in DEFECTS if d in plan.defects},
        "config": plan.settings["config"],
        "exams": exam_records,
    }
    write_json_atomic(out / _SUMMARY, summary, indent=1)
    files.update({rel: file_sha256(out / rel) for rel in ("images/manifest.csv", _SUMMARY)})
    record["complete"] = True
    write_json_atomic(out / PHANTOM_RECORD, record, indent=1)
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
    min_patients_per_class: int = 0,
) -> dict[str, Any]:
    """Write a phantom data set, its ground truth and a patient-split datalist (``output_dir/datalist.json``).

    The images go to ``output_dir/images/<class>/`` with a ``manifest.csv`` (patient, exam, plane angle,
    laterality), the ground truth to ``output_dir/ground_truth/``; the datalist is then built from the images the
    same way as for any user data set (:func:`~medicraft_monai.data.build_datalist`), so the phantom exercises the
    same code path. Returns the datalist and prints its per-class, per-split count table.

    Every argument (``fractions`` included) is checked before anything is written or deleted. A rerun with the same
    settings resumes an interrupted one. An ``output_dir`` that holds a phantom data set of other settings is refused
    (its files would mix with the new ones) unless ``overwrite`` is set, which first deletes the files that set's
    record (``phantom_files.json``) lists, and nothing else; files the phantom did not write are never deleted (a
    folder holding any is refused). ``min_patients_per_class=3`` gives every class (that has 3 exams) a patient in
    each of the three splits. See :func:`write_phantom_dataset`.
    """
    out = Path(output_dir)
    fractions = _check_fractions(fractions)
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
        overwrite=overwrite,
        also_writes=("datalist.json",),
        min_patients_per_class=min_patients_per_class,
    )
    class_order = list(classes) if classes else list(config.classes)  # the phantom's order, not alphabetical
    record = _read_record(out) or {"files": {}}
    _mark_pending(out, record, ("datalist.json",))
    datalist = build_datalist(
        out / "images",
        output=out / "datalist.json",
        classes=class_order,
        fractions=tuple(fractions),
        seed=seed,
        strict=True,
        name="medicraft OCT phantom",
    )
    record["files"]["datalist.json"] = file_sha256(out / "datalist.json")
    write_json_atomic(out / PHANTOM_RECORD, record, indent=1)
    print(count_table(datalist))
    return datalist
