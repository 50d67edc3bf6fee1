"""Datalists (decathlon-style JSON) and patient-level splits for OCT B-scans.

A datalist is what :func:`monai.data.load_decathlon_datalist` reads::

    {
      "name": "oct2017", "description": "...",
      "labels": {"0": "CNV", "1": "DME", ...}, "num_classes": 4,
      "seed": 0, "fractions": {"training": 0.7, "validation": 0.15, "test": 0.15},
      "training": [item, ...], "validation": [...], "test": [...],
      "excluded": [{"image": "CNV/bad.jpeg", "reason": "...", "error": "CorruptImageError"}, ...],
      "duplicates": [["CNV/a.jpeg", "DME/b.jpeg"], ...]
    }

Each item carries the keys of :class:`~medicraft_monai.data.keys.OCTKeys` plus ``sha256`` (of the file's bytes),
and image paths in the file are relative to the datalist's folder. In memory (what :func:`build_datalist` and
:func:`load_datalist` return) image paths are absolute.

Entry point: :func:`build_datalist` (a folder of class folders, a CSV file or a DICOM folder). Building blocks:
:func:`split_by_patient`, :func:`check_splits`, :func:`count_table`, :func:`class_weights`,
:func:`write_datalist`, :func:`load_datalist`. See ``docs/datalists.md`` for the rules.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medicraft_monai.utils import file_sha256, write_text_atomic

from .errors import (
    CorruptImageError,
    DataProblems,
    EmptyDatasetError,
    OCTDataError,
    SplitLeakError,
    UnknownLabelError,
    UnsupportedFormatError,
)
from .keys import OCTKeys, normalise_laterality

__all__ = [
    "DEFAULT_CSV_COLUMNS",
    "DEFAULT_PATIENT_REGEX",
    "SHA256_KEY",
    "SPLITS",
    "build_datalist",
    "check_splits",
    "class_weights",
    "count_table",
    "datalist_class_names",
    "detect_source_kind",
    "load_datalist",
    "read_datalist_json",
    "split_by_patient",
    "subsample_classes",
    "subsample_datalist",
    "write_datalist",
]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, str, str] = ("training", "validation", "test")
"""Names of the three splits, in the order of ``fractions``."""

SHA256_KEY = "sha256"
"""Item key holding the sha256 of the image file's bytes (used to find identical images)."""

DEFAULT_PATIENT_REGEX = r"^[A-Za-z]+-(?P<patient>\d+)-\d+"
"""Kermany OCT2017 naming, ``CLASS-PATIENT-IMAGE`` (for example ``CNV-13823-1.jpeg``)."""

MANIFEST_NAME = "manifest.csv"
"""A CSV with this name at the root of a class-folder tree gives per-file patient ids (and other fields)."""

DEFAULT_CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    OCTKeys.IMAGE: ("image", "file", "path", "filename", "file_name"),
    OCTKeys.LABEL: ("label", "class", "class_name", "diagnosis"),
    OCTKeys.PATIENT_ID: ("patient_id", "patient", "subject_id", "subject", "PatientID"),
    OCTKeys.EXAM_ID: ("exam_id", "exam"),
    OCTKeys.PLANE_ANGLE: ("plane_angle", "angle"),
    OCTKeys.LATERALITY: ("laterality", "eye", "ImageLaterality"),
    OCTKeys.FRAME: ("frame",),
}
"""Column names tried, in order, for each item key when reading a CSV (override with ``csv_columns``)."""

_STUDY_COLUMNS = ("study_uid", "study_instance_uid", "StudyInstanceUID")
_PROGRESS_MIN = 100  # show a progress bar from this many files on


# --------------------------------------------------------------------------------------------------------------------
# candidates: one (file, frame) before validation
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class _Candidate:
    """One B-scan found in a source, before its file is validated."""

    path: Path
    label: str | None = None  # class name (or an integer index as text, from a CSV)
    patient_id: str = ""
    exam_id: str = ""
    plane_angle: float | None = None
    laterality: str = ""
    frame: int | None = None  # None: every frame of the file (expanded after probing)
    synthetic: bool = False
    dicom: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # study_uid, series_uid from DICOM
    problem: OCTDataError | None = None


def _natural_key(text: str) -> tuple:
    """Sort key putting "P2" before "P10" (ties between spellings such as "01" and "1" broken by the text)."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)), text


def _file_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _parse_angle(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        angle = float(value)
    except (TypeError, ValueError):
        raise OCTDataError(where, f"plane angle {value!r} is not a number (degrees in [0, 360))") from None
    if not math.isfinite(angle):
        raise OCTDataError(where, f"plane angle {value!r} is not finite")
    return angle % 360.0


def _parse_laterality(value: Any, where: str) -> str:
    try:
        return normalise_laterality(value)
    except ValueError as e:
        raise OCTDataError(where, str(e)) from None


def _default_exam_id(patient_id: str, laterality: str) -> str:
    return f"{patient_id}_{laterality}" if laterality else patient_id


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _image_format(path: Path) -> str | None:
    """The reader format of ``path`` (``"dicom"``, ``"jpeg"``, ...), or None when it is not supported."""
    from .io import image_format

    try:
        return image_format(path)
    except UnsupportedFormatError:
        return None


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file (``utf-8-sig``, so Excel's byte order mark is fine)."""
    if not path.is_file():
        raise OCTDataError(path, "CSV file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if any((v or "").strip() for v in r.values() if isinstance(v, str))]
        header = list(reader.fieldnames or [])
    return header, rows


def _resolve_columns(
    header: Sequence[str], csv_columns: Mapping[str, str] | None, source: Path, required: Iterable[str]
) -> dict[str, str]:
    """Map item keys to the CSV's column names (user-given names first, then :data:`DEFAULT_CSV_COLUMNS`)."""
    csv_columns = dict(csv_columns or {})
    unknown = set(csv_columns) - set(DEFAULT_CSV_COLUMNS)
    if unknown:
        raise ValueError(f"csv_columns: unknown key(s) {sorted(unknown)}; use {sorted(DEFAULT_CSV_COLUMNS)}")
    lower = {h.strip().lower(): h for h in header}
    resolved: dict[str, str] = {}
    for key, names in DEFAULT_CSV_COLUMNS.items():
        if key in csv_columns:
            name = csv_columns[key]
            if name not in header:
                raise OCTDataError(source, f"column {name!r} (given for {key!r}) is not in the header {list(header)}")
            resolved[key] = name
            continue
        for name in names:
            if name.lower() in lower:
                resolved[key] = lower[name.lower()]
                break
    for key in required:
        if key not in resolved:
            raise OCTDataError(
                source,
                f"no {key!r} column: looked for {list(DEFAULT_CSV_COLUMNS[key])} in the header {list(header)}; "
                f"name it with csv_columns={{{key!r}: 'COLUMN'}}",
            )
    return resolved


def _fill_from_row(cand: _Candidate, row: Mapping[str, str], columns: Mapping[str, str], where: str) -> None:
    """Copy a CSV row's fields (those present and non-empty) into a candidate; bad values set ``cand.problem``."""

    def get(key: str) -> str:
        col = columns.get(key)
        return (row.get(col) or "").strip() if col else ""

    try:
        if get(OCTKeys.LABEL):
            cand.label = get(OCTKeys.LABEL)
        if get(OCTKeys.PATIENT_ID):
            cand.patient_id = get(OCTKeys.PATIENT_ID)
        if get(OCTKeys.EXAM_ID):
            cand.exam_id = get(OCTKeys.EXAM_ID)
        if get(OCTKeys.LATERALITY):
            cand.laterality = _parse_laterality(get(OCTKeys.LATERALITY), where)
        if get(OCTKeys.PLANE_ANGLE):
            cand.plane_angle = _parse_angle(get(OCTKeys.PLANE_ANGLE), where)
        if get(OCTKeys.FRAME):
            try:
                frame = int(get(OCTKeys.FRAME))
            except ValueError:
                raise OCTDataError(where, f"frame {get(OCTKeys.FRAME)!r} is not an integer") from None
            if frame < 0:
                raise OCTDataError(where, f"frame {frame} is negative")
            cand.frame = frame
    except OCTDataError as e:
        cand.problem = e


# --------------------------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------------------------
def _dicom_items(folder: Path) -> tuple[list[dict[str, Any]], list[OCTDataError]]:
    """Per-frame items of every DICOM file under ``folder`` (recursively) and the problems of unusable ones."""
    from .dicom import dicom_folder_items

    try:
        items, problems = dicom_folder_items(folder, return_problems=True)
    except DataProblems as e:  # no usable file at all: every file's problem is listed
        return [], list(e.problems)
    except EmptyDatasetError:
        return [], []
    return list(items), list(problems)


def _top_folders(folders: Iterable[Path]) -> list[Path]:
    """The folders that are not inside another one of ``folders`` (a recursive scan of them covers all)."""
    top: list[Path] = []
    for folder in sorted(set(folders), key=lambda p: len(p.parts)):
        if not any(folder.is_relative_to(t) for t in top):
            top.append(folder)
    return sorted(top)


def _candidate_from_dicom_item(item: Mapping[str, Any], base: Path) -> _Candidate:
    path = Path(item[OCTKeys.IMAGE])
    if not path.is_absolute():
        path = base / path
    cand = _Candidate(path=path.resolve(), dicom=True, frame=int(item.get(OCTKeys.FRAME) or 0))
    cand.patient_id = str(item.get(OCTKeys.PATIENT_ID) or "")
    cand.exam_id = str(item.get(OCTKeys.EXAM_ID) or "")
    cand.laterality = normalise_laterality(item.get(OCTKeys.LATERALITY) or "")
    angle = item.get(OCTKeys.PLANE_ANGLE)
    cand.plane_angle = None if angle is None else float(angle) % 360.0
    cand.synthetic = bool(item.get(OCTKeys.SYNTHETIC, False))
    cand.extra = {k: item[k] for k in ("study_uid", "series_uid") if item.get(k)}
    return cand


def _attach_dicom(cands: list[_Candidate]) -> list[_Candidate]:
    """Replace each DICOM-file candidate by one candidate per frame, with the file's own metadata.

    Fields the source already gave (label; patient, exam, laterality, plane angle from a CSV row) win over the
    DICOM header's.
    """
    dicom_cands = [c for c in cands if c.problem is None and _image_format(c.path) == "dicom"]
    dicom_ids = {id(c) for c in dicom_cands}
    if not dicom_cands:
        return cands
    per_file: dict[Path, list[_Candidate]] = defaultdict(list)
    read_problems: dict[Path, OCTDataError] = {}
    for folder in _top_folders(c.path.parent for c in dicom_cands):
        items, folder_problems = _dicom_items(folder)
        for item in items:
            frame_cand = _candidate_from_dicom_item(item, folder)
            per_file[frame_cand.path].append(frame_cand)
        for p in folder_problems:
            if p.path is not None:
                read_problems[Path(p.path).resolve()] = p
    out: list[_Candidate] = []
    for cand in cands:
        if id(cand) not in dicom_ids:
            out.append(cand)
            continue
        frames = sorted(per_file.get(cand.path, []), key=lambda c: c.frame or 0)
        if cand.frame is not None:
            frames = [f for f in frames if f.frame == cand.frame]
        if not frames:
            err = read_problems.get(cand.path) or CorruptImageError(
                cand.path, "DICOM file gave no B-scan frames (not an OCT image, or the frame is out of range)"
            )
            cand.problem = err
            out.append(cand)
            continue
        for f in frames:
            f.label = cand.label
            f.patient_id = cand.patient_id or f.patient_id
            f.exam_id = cand.exam_id or f.exam_id
            f.laterality = cand.laterality or f.laterality
            f.plane_angle = cand.plane_angle if cand.plane_angle is not None else f.plane_angle
            f.problem = cand.problem
            out.append(f)
    return out


# --------------------------------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------------------------------
def _list_files(root: Path) -> tuple[list[Path], list[OCTDataError]]:
    """The non-hidden files under ``root`` (recursively, sorted) and a problem for each sub-folder that cannot be
    read (``Path.rglob`` skips those silently, so their images would vanish from the datalist unnoticed).

    Raises:
        OCTDataError: ``root`` itself cannot be read.
    """
    files: list[Path] = []
    unreadable: list[OCTDataError] = []

    def visit(folder: Path) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            reason = f"cannot read the folder ({err.strerror or err}); its images are left out"
            if folder == root:
                raise OCTDataError(folder, f"cannot read the datalist source folder ({err.strerror or err})") from None
            unreadable.append(OCTDataError(folder, reason))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = folder / entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    visit(path)
                elif entry.is_file():
                    files.append(path)
                elif entry.is_symlink() and not path.exists():
                    unreadable.append(OCTDataError(path, "is a broken symbolic link (its target does not exist)"))
                elif not entry.is_dir():
                    unreadable.append(OCTDataError(path, "is not a regular file (a pipe, socket or device)"))
            except OSError as err:
                unreadable.append(OCTDataError(path, f"cannot be read ({err.strerror or err})"))

    visit(root)
    return sorted(files), unreadable


def detect_source_kind(source: str | os.PathLike) -> str:
    """``"csv"`` for a CSV file, ``"dicom"`` for a folder whose images are all DICOM, else ``"folder"``.

    Raises:
        OCTDataError: the source does not exist or is neither a folder nor a ``.csv`` file.
        EmptyDatasetError: the folder holds no image files.
    """
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise OCTDataError(path, "a datalist source must be a folder (of class folders or DICOM files) or a .csv file")
    if not path.is_dir():
        raise OCTDataError(path, "datalist source not found")
    formats = set()
    files, unreadable = _list_files(path)  # unreadable sub-folders are reported by the scan itself
    for p in files:
        fmt = _image_format(p)
        if fmt is not None:
            formats.add(fmt)
    if not formats and unreadable:
        raise OCTDataError(
            path, f"no readable image files: {len(unreadable)} folder(s) cannot be read, first {unreadable[0]}"
        )
    if not formats:
        raise EmptyDatasetError(path, "no image files found (looked for PNG, JPEG, TIFF, NIfTI and DICOM files)")
    return "dicom" if formats == {"dicom"} else "folder"


def _scan_folder(
    root: Path,
    csv_columns: Mapping[str, str] | None,
    labels_csv: Path | None,
) -> tuple[list[_Candidate], list[OCTDataError]]:
    """Candidates of a folder of class folders (or a DICOM folder), with the root's manifest.csv if present.

    Every non-hidden file inside a sub-folder is a candidate (an unsupported one is reported); files at the root
    are candidates only when they are images (a README or the manifest itself is not data).
    """
    problems: list[OCTDataError] = []
    skip = {(root / MANIFEST_NAME).resolve()}
    if labels_csv is not None:
        skip.add(labels_csv.resolve())
    cands: list[_Candidate] = []
    files, unreadable = _list_files(root)
    problems += unreadable
    for p in files:
        rel = p.relative_to(root)
        if p.resolve() in skip:
            continue
        fmt = _image_format(p)
        if fmt is None:
            if len(rel.parts) > 1:
                problems.append(
                    UnsupportedFormatError(p, f"unsupported file type {p.suffix or '(no suffix)'!r} in a class folder")
                )
            continue
        cand = _Candidate(path=p.resolve())
        if len(rel.parts) > 1:
            cand.label = rel.parts[0]
        cands.append(cand)

    manifest = root / MANIFEST_NAME
    if manifest.is_file():
        header, rows = _read_csv(manifest)
        columns = _resolve_columns(header, csv_columns, manifest, required=(OCTKeys.IMAGE,))
        by_path = {c.path: c for c in cands}
        for i, row in enumerate(rows, start=2):
            value = (row.get(columns[OCTKeys.IMAGE]) or "").strip()
            if not value:
                continue
            path = (root / value).resolve()
            cand = by_path.get(path)
            if cand is None:
                if not path.exists():
                    problems.append(OCTDataError(root / value, f"listed in {MANIFEST_NAME} (line {i}) but not found"))
                continue
            folder_label = cand.label
            _fill_from_row(cand, row, columns, f"{manifest}:{i}")
            if folder_label is not None and cand.label != folder_label and cand.problem is None:
                cand.problem = UnknownLabelError(
                    path,
                    f"{MANIFEST_NAME} line {i} says label {cand.label!r} but the file is in class folder {folder_label!r}",
                )
    return cands, problems


def _scan_csv(csv_path: Path, csv_columns: Mapping[str, str] | None) -> tuple[list[_Candidate], list[OCTDataError]]:
    """Candidates of a CSV file (image paths relative to the CSV's folder, or absolute)."""
    header, rows = _read_csv(csv_path)
    if not rows:
        raise EmptyDatasetError(csv_path, "the CSV has no rows")
    columns = _resolve_columns(header, csv_columns, csv_path, required=(OCTKeys.IMAGE, OCTKeys.LABEL))
    base = csv_path.resolve().parent
    cands: list[_Candidate] = []
    problems: list[OCTDataError] = []
    for i, row in enumerate(rows, start=2):
        where = f"{csv_path}:{i}"
        value = (row.get(columns[OCTKeys.IMAGE]) or "").strip()
        if not value:
            problems.append(OCTDataError(where, "empty image path"))
            continue
        path = Path(value) if Path(value).is_absolute() else base / value
        path = path.resolve()
        if not path.is_file():
            problems.append(OCTDataError(path, f"file not found (listed in {csv_path.name} line {i})"))
            continue
        if _image_format(path) is None:
            problems.append(UnsupportedFormatError(path, f"unsupported file type {path.suffix or '(no suffix)'!r}"))
            continue
        cand = _Candidate(path=path)
        _fill_from_row(cand, row, columns, where)
        if cand.label is None and cand.problem is None:
            cand.problem = UnknownLabelError(path, f"no label in {csv_path.name} line {i}")
        cands.append(cand)
    return cands, problems


def _apply_labels_csv(cands: list[_Candidate], labels_csv: Path, csv_columns: Mapping[str, str] | None) -> None:
    """Label candidates from a CSV mapping ``study_uid`` (first) or ``patient_id`` to a class name."""
    header, rows = _read_csv(labels_csv)
    if not rows:
        raise EmptyDatasetError(labels_csv, "the labels CSV has no rows")
    columns = _resolve_columns(header, csv_columns, labels_csv, required=(OCTKeys.LABEL,))
    lower = {h.strip().lower(): h for h in header}
    study_col = next((lower[c.lower()] for c in _STUDY_COLUMNS if c.lower() in lower), None)
    patient_col = columns.get(OCTKeys.PATIENT_ID)
    if study_col is None and patient_col is None:
        raise OCTDataError(labels_csv, f"needs a patient_id or study_uid column; the header is {header}")
    by_study: dict[str, str] = {}
    by_patient: dict[str, str] = {}
    for row in rows:
        label = (row.get(columns[OCTKeys.LABEL]) or "").strip()
        if study_col and (row.get(study_col) or "").strip():
            by_study[row[study_col].strip()] = label
        elif patient_col and (row.get(patient_col) or "").strip():
            by_patient[row[patient_col].strip()] = label
    for cand in cands:
        study = str(cand.extra.get("study_uid") or "")
        label = by_study.get(study) or by_patient.get(cand.patient_id)
        if label:
            cand.label = label
        elif cand.problem is None:
            cand.problem = UnknownLabelError(
                cand.path,
                f"no row in {labels_csv.name} for study {study or '?'} or patient {cand.patient_id or '?'}",
            )


def _assign_patients(cands: list[_Candidate], patient_regex: str | None) -> set[Path]:
    """Fill missing patient ids from the file name (regex), else the file stem; returns the files that fell to the
    stem."""
    pattern = re.compile(patient_regex or DEFAULT_PATIENT_REGEX)
    fallbacks: set[Path] = set()
    for cand in cands:
        if cand.problem is not None:
            continue
        if not cand.patient_id:
            stem = _file_stem(cand.path)
            match = pattern.search(stem)
            if match:
                if "patient" in pattern.groupindex:
                    cand.patient_id = match.group("patient")
                elif pattern.groups:
                    cand.patient_id = match.group(1)
                else:
                    cand.patient_id = match.group(0)
            if not cand.patient_id:
                cand.patient_id = stem
                fallbacks.add(cand.path)
        if not cand.exam_id:
            cand.exam_id = _default_exam_id(cand.patient_id, cand.laterality)
    return fallbacks


def _resolve_classes(cands: list[_Candidate], classes: Sequence[str] | None) -> list[str]:
    """The class list (given, or the names found, sorted); a label outside it becomes an UnknownLabelError."""
    names_found = {c.label for c in cands if c.problem is None and c.label is not None}
    if classes is None:
        class_list = sorted(names_found, key=_natural_key)
    else:
        if isinstance(classes, str):  # "CNV,DME,DRUSEN,NORMAL" from a command line
            classes = [c.strip() for c in classes.split(",") if c.strip()]
        class_list = [str(c) for c in classes]
        if len(set(class_list)) != len(class_list):
            raise ValueError(f"classes has duplicates: {class_list}")
    index = {name: i for i, name in enumerate(class_list)}
    for cand in cands:
        if cand.problem is not None or cand.label is None:
            continue
        if cand.label in index:
            continue
        # a CSV may give the class index instead of its name
        if classes is not None and cand.label.isdigit() and int(cand.label) < len(class_list):
            cand.label = class_list[int(cand.label)]
            continue
        cand.problem = UnknownLabelError(cand.path, f"label {cand.label!r} is not one of the classes {class_list}")
    return class_list


def _warn_about_classes(src: Path, items: Sequence[Mapping[str, Any]], class_list: Sequence[str], pinned: bool) -> None:
    """Warn about a class without images, and (classes not pinned) about a class of one image whose name looks like
    a typo of another class (a CSV label such as ``CNVV`` silently becomes a class of its own)."""
    import difflib

    files: dict[int, set[str]] = defaultdict(set)
    for it in items:
        files[int(it[OCTKeys.LABEL])].add(it[OCTKeys.IMAGE])
    for c, cname in enumerate(class_list):
        if not files.get(c):
            logger.warning("%s: class %r has no images", src, cname)
        elif not pinned and len(files[c]) == 1 and len(class_list) > 1:
            others = [o for o in class_list if o != cname and len(files.get(class_list.index(o), ())) > 1]
            close = difflib.get_close_matches(cname, others, n=1, cutoff=0.6)
            like = f" (a typo of {close[0]!r}?)" if close else ""
            logger.warning(
                "%s: class %r has a single image, %s%s; if it is a typo, fix the label, and pin the class list with "
                "--classes %s so that an unknown label is left out instead of making a new class",
                src,
                cname,
                next(iter(files[c])),
                like,
                ",".join(o for o in class_list if o != cname) if close else ",".join(class_list),
            )


def _warn_about_empty_splits(
    src: Path, splits: Mapping[str, Sequence[Mapping[str, Any]]], class_list: Sequence[str], fractions: Sequence[float]
) -> None:
    """Warn about each class that has no image in the validation or test split (while that split is asked for)."""
    for name, fraction in zip(SPLITS[1:], fractions[1:]):
        if fraction <= 0:
            continue
        present = {int(it[OCTKeys.LABEL]) for it in splits.get(name) or []}
        missing = [c for i, c in enumerate(class_list) if i not in present]
        if missing:
            logger.warning(
                "%s: class(es) %s have no image in the %s split (too few patients for --fractions %s); "
                "their %s scores cannot be measured",
                src,
                ", ".join(repr(c) for c in missing),
                name,
                ",".join(f"{f:g}" for f in fractions),
                name,
            )


def _validate_files(
    cands: list[_Candidate], check_images: bool
) -> tuple[list[_Candidate], dict[Path, str], list[OCTDataError]]:
    """Probe each file once (zero bytes, decodability, shape), hash it, and expand multi-frame files.

    Returns the valid candidates (one per B-scan), sha256 per file and the problems of the bad files.
    """
    from .io import probe_image

    paths = sorted({c.path for c in cands if c.problem is None})
    shapes: dict[Path, tuple[int, ...]] = {}
    hashes: dict[Path, str] = {}
    bad: dict[Path, OCTDataError] = {}
    desc = "checking images" if check_images else "hashing images"
    with tqdm(paths, desc=desc, unit="file", disable=len(paths) < _PROGRESS_MIN) as bar:
        for path in bar:
            try:
                if not path.is_file():
                    raise OCTDataError(path, "file not found")
                if path.stat().st_size == 0:
                    raise CorruptImageError(path, "empty file (0 bytes)")
                if check_images:
                    info = probe_image(path)
                    shapes[path] = tuple(int(s) for s in info["shape"])
                hashes[path] = file_sha256(path)
            except OCTDataError as e:
                bad[path] = e
            except Exception as e:  # a reader failing in an unexpected way is still a bad file, not a crash
                bad[path] = CorruptImageError(path, f"cannot be read ({type(e).__name__}: {e})")

    valid: list[_Candidate] = []
    for cand in cands:
        if cand.problem is not None or cand.path in bad:
            continue
        frames = shapes.get(cand.path, (1,))[0] if cand.path in shapes else None
        if cand.frame is None:
            if frames is not None and frames > 1:
                for f in range(frames):
                    c = copy.copy(cand)
                    c.frame = f
                    valid.append(c)
                continue
            cand.frame = 0
        elif frames is not None and cand.frame >= frames:
            cand.problem = OCTDataError(cand.path, f"frame {cand.frame} is out of range (the file has {frames})")
            continue
        valid.append(cand)
    problems = [bad[p] for p in sorted(bad)]
    problems += [c.problem for c in cands if c.problem is not None]
    return valid, hashes, problems


def _make_item(cand: _Candidate, class_index: Mapping[str, int], sha: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        OCTKeys.IMAGE: str(cand.path),
        OCTKeys.LABEL: class_index[cand.label],  # type: ignore[index]
        OCTKeys.CLASS_NAME: cand.label,
        OCTKeys.PATIENT_ID: cand.patient_id,
        OCTKeys.EXAM_ID: cand.exam_id,
        OCTKeys.PLANE_ANGLE: cand.plane_angle,
        OCTKeys.LATERALITY: cand.laterality,
        OCTKeys.FRAME: int(cand.frame or 0),
        OCTKeys.SYNTHETIC: bool(cand.synthetic),
        SHA256_KEY: sha,
    }
    item.update(cand.extra)
    return item


def _find_duplicates(items: list[dict[str, Any]]) -> tuple[list[list[str]], list[OCTDataError]]:
    """Groups of distinct files with identical bytes; problems for those that span patients or labels."""
    by_sha: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for item in items:
        by_sha[item[SHA256_KEY]].setdefault(item[OCTKeys.IMAGE], item)
    groups: list[list[str]] = []
    problems: list[OCTDataError] = []
    for files in by_sha.values():
        if len(files) < 2:
            continue
        paths = sorted(files)
        groups.append(paths)
        patients = sorted({files[p][OCTKeys.PATIENT_ID] for p in paths})
        labels = sorted({files[p][OCTKeys.CLASS_NAME] for p in paths})
        detail = f"identical bytes in {len(paths)} files: {', '.join(paths)}"
        if len(patients) > 1:
            problems.append(
                SplitLeakError(paths[1], f"{detail} under patients {patients}; they are kept in the same split")
            )
        if len(labels) > 1:
            problems.append(UnknownLabelError(paths[1], f"{detail} with different labels {labels}"))
        if len(patients) == 1 and len(labels) == 1:
            logger.warning("duplicate image: %s", detail)
    return sorted(groups), problems


# --------------------------------------------------------------------------------------------------------------------
# splitting
# --------------------------------------------------------------------------------------------------------------------
class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _check_fractions(fractions: Sequence[float] | Mapping[str, float]) -> tuple[float, float, float]:
    if isinstance(fractions, str):  # "0.8,0.1,0.1" from a command line
        fractions = [float(f) for f in fractions.replace(" ", "").strip("()[]").split(",") if f]
    if isinstance(fractions, Mapping):
        fractions = [float(fractions.get(s, 0.0)) for s in SPLITS]
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(f < 0 or not math.isfinite(f) for f in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative numbers (training, validation, test) summing to 1, got {fractions}"
        )
    return values  # type: ignore[return-value]


def _sort_key(item: Mapping[str, Any]) -> tuple:
    return (
        _natural_key(str(item.get(OCTKeys.PATIENT_ID, ""))),
        str(item.get(OCTKeys.IMAGE)),
        item.get(OCTKeys.FRAME) or 0,
    )


def split_by_patient(
    items: Sequence[Mapping[str, Any]],
    fractions: Sequence[float] | Mapping[str, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Split items into ``training``, ``validation`` and ``test``, keeping every patient in one split.

    Units are patient groups: all items of a patient, joined with the patients of any identical image (same
    ``sha256`` under two patient ids, which is most likely one person under two ids). Groups are stratified by
    class with iterative stratification (Sechidis et al., 2011) at the group level: classes are taken from the
    rarest (fewest groups) to the most common, and each still unassigned group holding the class goes to the
    split that most lacks that class relative to its fraction. A patient with images of several classes (the
    OCT2017 sample has some) therefore counts toward each of them and is placed by its rarest class. A class with
    at least as many groups as there are splits with a non-zero fraction gets at least one group in each of them.
    The result depends only on the items (not their order) and ``seed``.

    Args:
        items: datalist items with at least ``label`` and ``patient_id`` (``sha256`` to group identical images).
        fractions: (training, validation, test) fractions of patients, summing to 1 (a split may be 0).
        seed: seed of the random tie-breaking and group order.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` with copies of the items.
    """
    fr = _check_fractions(fractions)
    items = [dict(it) for it in items]
    if not items:
        raise EmptyDatasetError(None, "no items to split")
    uf = _UnionFind()
    by_sha: dict[str, set[str]] = defaultdict(set)
    for it in items:
        pid = str(it[OCTKeys.PATIENT_ID])
        uf.find(pid)
        if it.get(SHA256_KEY):
            by_sha[it[SHA256_KEY]].add(pid)
    for pids in by_sha.values():
        first, *rest = sorted(pids)
        for other in rest:
            uf.union(first, other)
    members: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        members[uf.find(str(it[OCTKeys.PATIENT_ID]))].append(it)
    keys = sorted(members, key=_natural_key)
    rng = np.random.default_rng(seed)
    order = [keys[i] for i in rng.permutation(len(keys))]
    labels = {g: {int(it[OCTKeys.LABEL]) for it in members[g]} for g in keys}
    size = {g: len({str(it[OCTKeys.PATIENT_ID]) for it in members[g]}) for g in keys}

    active = [s for s in range(3) if fr[s] > 0]
    n_class = Counter(c for g in keys for c in labels[g])
    n_patients = Counter()
    for g in keys:
        for c in labels[g]:
            n_patients[c] += size[g]
    total = sum(size.values())
    desired = {s: {c: fr[s] * n_patients[c] for c in n_class} for s in range(3)}
    desired_total = {s: fr[s] * total for s in range(3)}
    have = {s: Counter() for s in range(3)}
    assigned: dict[str, int] = {}

    while len(assigned) < len(keys):
        remaining = Counter(c for g in keys if g not in assigned for c in labels[g])
        c = min(remaining, key=lambda k: (remaining[k], k))
        spread = n_class[c] >= len(active)
        for g in order:
            if g in assigned or c not in labels[g]:
                continue
            noise = rng.random(3)
            s = max(
                active,
                key=lambda s: (spread and have[s][c] == 0, desired[s][c], desired_total[s], noise[s]),
            )
            assigned[g] = s
            for lab in labels[g]:
                desired[s][lab] -= size[g]
                have[s][lab] += 1
            desired_total[s] -= size[g]

    # repair: a class with enough groups must reach every active split (rare after the pass above)
    for c in sorted(n_class):
        if n_class[c] < len(active):
            continue
        for s in active:
            if have[s][c] > 0:
                continue
            movable = []
            for g in order:
                d = assigned[g]
                if d == s or c not in labels[g] or have[d][c] < 2:
                    continue
                breaks = sum(1 for lab in labels[g] if have[d][lab] < 2 and n_class[lab] >= len(active))
                movable.append((breaks, size[g], order.index(g), g))
            if not movable:
                logger.warning("class %s could not be placed in split %s", c, SPLITS[s])
                continue
            g = min(movable)[3]
            d = assigned[g]
            assigned[g] = s
            for lab in labels[g]:
                have[d][lab] -= 1
                have[s][lab] += 1

    out: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for g, s in assigned.items():
        out[SPLITS[s]].extend(members[g])
    for name in SPLITS:
        out[name].sort(key=_sort_key)
    return out


def _split_items(datalist: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name in SPLITS:
        values = datalist.get(name) or []
        out[name] = [{OCTKeys.IMAGE: v} if isinstance(v, str) else v for v in values]
    return out


def check_splits(datalist: Mapping[str, Any], *, hash_files: bool = True) -> None:
    """Raise :class:`SplitLeakError` when a patient, a file or identical image bytes occur in two splits.

    Identical images are found by the items' ``sha256``; an item without one is hashed from its file when
    ``hash_files`` is True and the (absolute) path exists.

    Raises:
        SplitLeakError: naming the first offending image; its reason lists every leak found.
    """
    splits = _split_items(datalist)
    leaks: list[tuple[str, str]] = []  # (image, message)
    by_patient: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    by_image: dict[tuple[str, int], set[str]] = defaultdict(set)
    by_sha: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    hash_cache: dict[str, str] = {}
    for name, items in splits.items():
        for item in items:
            image = item.get(OCTKeys.IMAGE)
            image_key = str(image)
            pid = item.get(OCTKeys.PATIENT_ID)
            if pid not in (None, ""):
                by_patient[str(pid)][name].append(image_key)
            by_image[(image_key, int(item.get(OCTKeys.FRAME) or 0))].add(name)
            sha = item.get(SHA256_KEY)
            if not sha and hash_files and isinstance(image, str) and os.path.isabs(image) and os.path.isfile(image):
                if image not in hash_cache:
                    hash_cache[image] = file_sha256(image)
                sha = hash_cache[image]
            if sha:
                if image_key not in by_sha[sha][name]:
                    by_sha[sha][name].append(image_key)
    for pid, where in sorted(by_patient.items()):
        if len(where) > 1:
            parts = [f"{s} ({len(v)} image(s), e.g. {v[0]})" for s, v in where.items()]
            leaks.append((next(iter(where.values()))[0], f"patient {pid!r} is in {' and '.join(parts)}"))
    for (image, frame), where in sorted(by_image.items()):
        if len(where) > 1:
            leaks.append((image, f"image {image} (frame {frame}) is in {' and '.join(sorted(where))}"))
    for sha, where in sorted(by_sha.items()):
        if len(where) > 1:
            parts = [f"{s}: {', '.join(v)}" for s, v in where.items()]
            leaks.append(
                (next(iter(where.values()))[0], f"identical image (sha256 {sha[:12]}...) in {'; '.join(parts)}")
            )
    if leaks:
        head = leaks[0][0]
        lines = "; ".join(m for _, m in leaks[:20])
        more = f" (and {len(leaks) - 20} more)" if len(leaks) > 20 else ""
        err = SplitLeakError(head, f"{len(leaks)} split leak(s): {lines}{more}")
        err.leaks = [m for _, m in leaks]  # type: ignore[attr-defined]
        raise err


# --------------------------------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------------------------------
def count_table(datalist: Mapping[str, Any]) -> str:
    """A plain-text table of image and patient counts per class (rows) and split (columns), with totals.

    A patient with images of two classes counts once in each class row; the ``total`` row counts each patient
    once per split, and the ``total`` column counts each patient once per class.
    """
    found = sorted({int(it[OCTKeys.LABEL]) for items in _split_items(datalist).values() for it in items})
    names = datalist_class_names(datalist, default=[str(i) for i in range(found[-1] + 1)] if found else [])
    splits = _split_items(datalist)
    columns = [*SPLITS, "total"]
    images: dict[tuple[str, str], int] = Counter()
    patients: dict[tuple[str, str], set[str]] = defaultdict(set)
    for split, items in splits.items():
        for it in items:
            cls = names[int(it[OCTKeys.LABEL])]
            pid = str(it.get(OCTKeys.PATIENT_ID, ""))
            for row in (cls, "total"):
                for col in (split, "total"):
                    images[row, col] += 1
                    patients[row, col].add(pid)
    rows = [*names, "total"]
    name_w = max(len("class"), *(len(r) for r in rows))
    cells = {(r, c): (str(images[r, c]), str(len(patients[r, c]))) for r in rows for c in columns}
    num_w = max(len("patients"), *(len(v) for pair in cells.values() for v in pair))
    col_w = 2 * num_w + 1

    def line(first: str, parts: list[str]) -> str:
        return (first.ljust(name_w) + "  " + "  ".join(parts)).rstrip()

    out = [
        line("class", [c.ljust(col_w) for c in columns]),
        line("", [f"{'images'.rjust(num_w)} {'patients'.rjust(num_w)}" for _ in columns]),
        "-" * (name_w + 2 + len(columns) * (col_w + 2) - 2),
    ]
    for r in rows:
        if r == "total":
            out.append("-" * len(out[2]))
        out.append(line(r, [f"{cells[r, c][0].rjust(num_w)} {cells[r, c][1].rjust(num_w)}" for c in columns]))
    excluded = datalist.get("excluded") or []
    if excluded:
        out.append(f'excluded: {len(excluded)} file(s) (see the datalist\'s "excluded" list)')
    return "\n".join(out)


def class_weights(
    items_or_datalist: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    mode: str = "inverse",
    *,
    beta: float = 0.999,
    num_classes: int | None = None,
) -> list[float]:
    """Per-class loss weights from the class counts, normalised to a mean of 1 over the classes present.

    Args:
        items_or_datalist: items, or a datalist (its ``training`` split is counted).
        mode: ``"inverse"`` (1 / n), ``"effective"`` (Cui et al., CVPR 2019: (1 - beta) / (1 - beta**n)) or
            ``"none"`` (all 1).
        beta: the effective-number parameter, in [0, 1).
        num_classes: number of classes (default: the datalist's ``num_classes``, else the largest label + 1).

    Returns:
        one weight per class; a class without items gets 0.
    """
    if isinstance(items_or_datalist, Mapping):
        items = items_or_datalist.get("training") or []
        if num_classes is None:
            num_classes = items_or_datalist.get("num_classes") or len(items_or_datalist.get("labels") or {}) or None
    else:
        items = list(items_or_datalist)
    if not items:
        raise EmptyDatasetError(None, "class_weights: no items")
    counts = Counter(int(it[OCTKeys.LABEL]) for it in items)
    n = int(num_classes) if num_classes is not None else max(counts) + 1
    if max(counts) >= n:
        raise ValueError(f"label {max(counts)} is out of range for {n} classes")
    n_c = np.array([counts.get(c, 0) for c in range(n)], dtype=float)
    present = n_c > 0
    w = np.zeros(n)
    if mode == "inverse":
        w[present] = 1.0 / n_c[present]
    elif mode == "effective":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        w[present] = (1.0 - beta) / (1.0 - np.power(beta, n_c[present]))
    elif mode == "none":
        w[present] = 1.0
    else:
        raise ValueError(f"mode must be 'inverse', 'effective' or 'none', got {mode!r}")
    w[present] /= w[present].mean()
    return [float(v) for v in w]


# --------------------------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------------------------
def _map_images(datalist: Mapping[str, Any], fn) -> dict[str, Any]:
    out = copy.deepcopy(dict(datalist))
    for name in SPLITS:
        if name in out:
            out[name] = [{**it, OCTKeys.IMAGE: fn(it[OCTKeys.IMAGE])} for it in _split_items(out)[name]]
    for it in out.get("excluded") or []:
        if it.get(OCTKeys.IMAGE):
            it[OCTKeys.IMAGE] = fn(it[OCTKeys.IMAGE])
    if out.get("duplicates"):
        out["duplicates"] = [[fn(p) for p in group] for group in out["duplicates"]]
    return out


def write_datalist(path: str | os.PathLike, datalist: Mapping[str, Any]) -> Path:
    """Write ``datalist`` as JSON, image paths relative to the file's folder (as decathlon datalists are).

    Paths in memory are absolute (or relative to the working directory). Logs a warning when another string in
    an item (for example a class name) names an existing path next to the file, because
    :func:`monai.data.load_decathlon_datalist` would then turn it into a path; :func:`load_datalist` does not.
    """
    path = Path(path)
    base = path.resolve().parent
    base.mkdir(parents=True, exist_ok=True)

    def rel(p: Any) -> Any:
        if isinstance(p, list):
            return [rel(v) for v in p]
        if not isinstance(p, str):
            return p
        return Path(os.path.relpath(Path(p).resolve(), base)).as_posix()

    out = _map_images(datalist, rel)
    clashes = set()
    for name in SPLITS:
        for it in out.get(name) or []:
            for k, v in it.items():
                if k != OCTKeys.IMAGE and isinstance(v, str) and v and (base / v).exists():
                    clashes.add((k, v))
    if clashes:
        k, v = sorted(clashes)[0]
        logger.warning(
            "%s: item value %s=%r (and %d more) is also a path in the datalist's folder; "
            "monai.data.load_decathlon_datalist would turn it into a path (medicraft's load_datalist does not). "
            "Write the datalist to another folder to avoid this.",
            path,
            k,
            v,
            len(clashes) - 1,
        )
    return write_text_atomic(path, json.dumps(out, indent=2) + "\n")


def read_datalist_json(path: str | os.PathLike) -> dict[str, Any]:
    """A datalist JSON file as read (relative paths untouched), with errors that name the file and the problem.

    Raises:
        OCTDataError: a missing, unreadable or non-JSON file, or JSON that is not an object.
    """
    path = Path(path)
    if path.is_dir():
        raise OCTDataError(path, "is a folder, not a datalist JSON file (build one with `medicraft datalist`)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise OCTDataError(path, "datalist file not found (set --datalist to your datalist JSON)") from None
    except json.JSONDecodeError as err:
        raise OCTDataError(path, f"not valid JSON ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise OCTDataError(path, f"cannot read the datalist: {err}") from None
    if not isinstance(data, dict):
        raise OCTDataError(path, "a datalist must be a JSON object with 'labels' and training/validation/test lists")
    return data


def datalist_class_names(
    datalist: str | os.PathLike | Mapping[str, Any] | None, default: Sequence[str] | None = None
) -> list[str]:
    """The class names of a datalist in label order, from its ``labels`` mapping (index -> class name).

    Args:
        datalist: a datalist, or the path of its JSON file.
        default: the classes to use when there is no datalist file or it has no ``labels`` mapping (a bundle's
            ``class_names`` key defaults to the datalist's classes this way); ``None``: that is an error.

    Raises:
        OCTDataError: no labels (and no ``default``), labels not numbered ``0..n-1``, or an unreadable file.
    """
    where: str | None = None
    if datalist is None or (not isinstance(datalist, Mapping) and not Path(datalist).exists()):
        if default is not None:
            return [str(c) for c in default]
        if datalist is None:
            raise OCTDataError(None, "no datalist given to take the class names from")
    if not isinstance(datalist, Mapping):
        where = str(datalist)
        datalist = read_datalist_json(datalist)
    labels = datalist.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        if default is not None:
            return [str(c) for c in default]
        raise OCTDataError(
            where, "the datalist has no 'labels' mapping {index: class name}; rebuild it with `medicraft datalist`"
        )
    try:
        keys = sorted(labels, key=int)
    except (TypeError, ValueError):
        raise OCTDataError(where, f"the datalist's 'labels' keys must be integers, got {sorted(labels)}") from None
    if [int(k) for k in keys] != list(range(len(keys))):
        raise OCTDataError(where, f"the datalist's 'labels' must be numbered 0..{len(keys) - 1}, got {keys}")
    return [str(labels[k]) for k in keys]


def load_datalist(
    path: str | os.PathLike, split: str | None = None, *, check: bool = True
) -> dict[str, Any] | list[dict[str, Any]]:
    """Read a datalist JSON file with absolute image paths (as :func:`monai.data.load_decathlon_datalist` gives).

    Args:
        path: the JSON file.
        split: ``"training"``, ``"validation"`` or ``"test"`` to get that split's items; None for the whole datalist.
        check: run :func:`check_splits` (a leak raises :class:`SplitLeakError`).
    """
    path = Path(path)
    data = read_datalist_json(path)
    base = path.resolve().parent

    def absolute(p: Any) -> Any:
        if isinstance(p, list):
            return [absolute(v) for v in p]
        if not isinstance(p, str):
            return p
        return os.path.normpath(os.path.join(base, p))

    data = _map_images(data, absolute)
    if check:
        check_splits(data)
    if split is None:
        return data
    if split not in data:
        raise ValueError(f"{path}: no {split!r} list (has {[k for k in data if isinstance(data[k], list)]})")
    return data[split]


def subsample_classes(
    items: Sequence[dict[str, Any]], imbalance: Mapping[str, float], class_names: Sequence[str], seed: int
) -> list[dict[str, Any]]:
    """Keep ``round(fraction * n)`` (at least 1) of each named class's items, chosen with ``seed``; others all.

    Items carry integer labels (``label``: the index into ``class_names``). This is the subset the utility study's
    imbalance experiments train on (for ``seed``); :func:`subsample_datalist` (``medicraft subsample``) writes it as
    a datalist, so a generator can be fine-tuned on exactly what those classifiers see.
    """
    unknown = set(imbalance) - set(class_names)
    if unknown:
        raise ValueError(f"imbalance names unknown classes {sorted(unknown)}; classes are {list(class_names)}")
    rng = np.random.default_rng([int(seed), 0x1B])
    out: list[dict[str, Any]] = []
    for c, name in enumerate(class_names):
        members = [it for it in items if it[OCTKeys.LABEL] == c]
        if name in imbalance and members:
            frac = float(imbalance[name])
            if not 0.0 < frac <= 1.0:
                raise ValueError(f"imbalance[{name!r}] must be in (0, 1], got {frac}")
            keep = max(1, round(frac * len(members)))
            idx = sorted(rng.choice(len(members), size=keep, replace=False).tolist())
            members = [members[i] for i in idx]
        out.extend(members)
    return out


def subsample_datalist(
    datalist: str | os.PathLike,
    output: str | os.PathLike,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    drop: Sequence[str] = (),
) -> dict[str, Any]:
    """Write a copy of a datalist whose training split keeps only a fraction of some classes (a deliberate
    imbalance), or without some classes at all; the patient-level splits are otherwise unchanged.

    The subset is :func:`subsample_classes` with ``seed``: the one the utility study's imbalance experiments use with
    ``imbalance_seed=seed``, so a generator fine-tuned on this datalist has seen exactly the real images those
    classifiers see. ``drop`` removes classes from every split and renumbers the labels (for example the parent of a
    study that must never see the class the study cuts; a new split would move patients between splits). The copy
    records ``subsampled``: the source file and its SHA-256, the fractions, the seed and the dropped classes.

    Args:
        datalist: the source datalist JSON (patient-level splits, ``labels``).
        output: the new datalist JSON (a ``.json`` file; never the source).
        fractions: class name -> fraction of its training images kept, in (0, 1].
        seed: the seed of the choice.
        overwrite: replace an existing ``output``.
        drop: class names removed from every split.

    Raises:
        OCTDataError: ``output`` is the source or not a ``.json`` file, exists (without ``overwrite``), nothing is
            asked, ``fractions`` or ``drop`` names a class the datalist does not have, a fraction is outside (0, 1],
            a class is both cut and dropped, or every class is dropped; nothing is written.
    """
    src, out = Path(datalist), Path(output)
    fractions, drop = dict(fractions or {}), [str(c) for c in drop]
    if out.suffix.lower() != ".json":
        raise OCTDataError(out, f"the subsampled datalist must be a .json file, not {out.suffix or '(no suffix)'!r}")
    if out.resolve() == src.resolve():
        raise OCTDataError(out, "is the source datalist; write the subsampled copy to a new file")
    if out.exists() and not overwrite:
        raise OCTDataError(out, "exists; pass overwrite=True (--overwrite) to replace it")
    data = load_datalist(src)
    names = datalist_class_names(data)
    if not fractions and not drop:
        raise OCTDataError(src, "nothing to do: give fractions such as {'DRUSEN': 0.1} or classes to drop")
    unknown = sorted(set(drop) - set(names))
    if unknown:
        raise OCTDataError(src, f"cannot drop unknown classes {unknown}; classes are {names}")
    if set(drop) & set(fractions):
        raise OCTDataError(src, f"classes {sorted(set(drop) & set(fractions))} are both cut and dropped")
    keep = [n for n in names if n not in drop]
    if not keep:
        raise OCTDataError(src, "every class would be dropped")
    try:
        data["training"] = subsample_classes(data.get("training") or [], fractions, names, int(seed))
    except ValueError as err:
        raise OCTDataError(src, str(err)) from None
    index = {names.index(n): k for k, n in enumerate(keep)}
    for split in SPLITS:
        items = [it for it in data.get(split) or [] if it[OCTKeys.LABEL] in index]
        data[split] = [{**it, OCTKeys.LABEL: index[it[OCTKeys.LABEL]]} for it in items]
        data["num" + split.capitalize()] = len(data[split])
    if drop:
        data["labels"] = {str(k): n for k, n in enumerate(keep)}
        data["num_classes"] = len(keep)
    data["subsampled"] = {
        "source": str(src.resolve()),
        "source_sha256": file_sha256(src),
        "fractions": {str(k): float(v) for k, v in fractions.items()},
        "seed": int(seed),
        "dropped": drop,
    }
    write_datalist(out, data)
    return data


# --------------------------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------------------------
def _output_file(output: str | os.PathLike) -> Path:
    """The datalist file that ``output`` names (a folder, or a new name without suffix: its ``datalist.json``)."""
    out = Path(output)
    if out.is_dir() or (not out.suffix and not out.exists()):
        out = out / "datalist.json"
    return out


def _check_output(out: Path, src: Path, kind: str, labels_csv: Path | None) -> None:
    """Refuse, before anything is read or written, an output file that is one of the inputs (the source CSV, the
    labels CSV, the manifest), lies inside a folder that the scan reads (a class folder of a folder source), or
    does not end in ``.json`` (so that a typo cannot replace an image or a CSV)."""
    target, root = out.resolve(), src.resolve()
    named = {root: "the source CSV" if kind == "csv" else "the source"}
    if labels_csv is not None:
        named[labels_csv.resolve()] = "the labels CSV (--labels_csv)"
    if kind != "csv":
        named[(src / MANIFEST_NAME).resolve()] = f"the source's {MANIFEST_NAME}"
    what = named.get(target)
    if what is None and kind != "csv" and target.is_relative_to(root):
        rel = target.relative_to(root)
        if len(rel.parts) > 1 and not _is_hidden(rel):
            what = f"inside the source's class folder {rel.parts[0]!r}, which the scan reads"
    if what is not None:
        raise OCTDataError(out, f"the datalist output (--output) is {what}; write it to a new .json file elsewhere")
    if out.suffix.lower() != ".json":
        raise OCTDataError(
            out, f"the datalist output (--output) must be a .json file, not {out.suffix or '(no suffix)'!r}"
        )


def build_datalist(
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    classes: Sequence[str] | None = None,
    fractions: Sequence[float] | Mapping[str, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    strict: bool = False,
    check_images: bool = True,
    csv_columns: Mapping[str, str] | None = None,
    patient_regex: str | None = None,
    labels_csv: str | os.PathLike | None = None,
    kind: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Build, validate, split and check a datalist; write it to ``output`` when given.

    Args:
        source: a folder of class folders (``root/<class>/**/<image>``, with an optional ``manifest.csv`` at the
            root giving ``file``, ``patient_id``, ...), a CSV file (image paths relative to its folder) or a DICOM
            folder (labels from ``labels_csv``, else from the first sub-folder under the root).
        output: the JSON file to write (a folder: ``<folder>/datalist.json``).
        classes: class names in label order; default: the names found, sorted. Another name is an
            :class:`UnknownLabelError` for its items.
        fractions: (training, validation, test) fractions of patients.
        seed: seed of the split.
        strict: raise :class:`DataProblems` listing every problem instead of excluding the bad items.
        check_images: decode each file's header (:func:`medicraft_monai.data.io.probe_image`) to find corrupt,
            unsupported and wrongly shaped images; without it only empty and missing files are caught.
        csv_columns: column names for ``image``, ``label``, ``patient_id``, ``exam_id``, ``plane_angle``,
            ``laterality``, ``frame`` (in the source CSV or the manifest), where they differ from the defaults.
        patient_regex: regular expression finding the patient id in a file name (without suffix) when no CSV
            gives it: the group named ``patient``, else group 1. Default: Kermany ``CLASS-PATIENT-IMAGE``.
        labels_csv: a CSV mapping ``study_uid`` or ``patient_id`` to ``label``, for folders whose sub-folders are
            not classes (typically DICOM).
        kind: ``"folder"``, ``"dicom"`` or ``"csv"`` to skip detection.
        name: the datalist's name (default: the source's name).

    Returns:
        the datalist, with absolute image paths.

    Raises:
        EmptyDatasetError: nothing usable was found.
        DataProblems: with ``strict=True``, when any file was bad.
        SplitLeakError: never for a datalist built here (the split is checked before it is returned).
    """
    src = Path(source)
    labels_path = Path(labels_csv).resolve() if labels_csv is not None else None
    fr = _check_fractions(fractions)
    out = None if output is None else _output_file(output)
    kind = kind or detect_source_kind(src)
    if kind not in ("folder", "dicom", "csv"):
        raise ValueError(f"kind must be 'folder', 'dicom' or 'csv', got {kind!r}")
    if out is not None:
        _check_output(out, src, kind, labels_path)
    context = f"building datalist from {src}"
    if kind == "csv":
        cands, problems = _scan_csv(src, csv_columns)
    else:
        if not src.is_dir():
            raise OCTDataError(src, "not a folder")
        cands, problems = _scan_folder(src, csv_columns, labels_path)
    if not cands and not problems:
        raise EmptyDatasetError(src, "no image files found (looked for PNG, JPEG, TIFF, NIfTI and DICOM files)")
    cands = _attach_dicom(cands)
    if labels_path is not None:
        _apply_labels_csv(cands, labels_path, csv_columns)
    for cand in cands:
        if cand.label is None and cand.problem is None:
            cand.problem = UnknownLabelError(
                cand.path, "no label: the file is not inside a class folder and no manifest or labels CSV names one"
            )
    fallbacks = _assign_patients(cands, patient_regex)
    class_list = _resolve_classes(cands, classes)
    valid, hashes, file_problems = _validate_files(cands, check_images)
    problems = problems + file_problems
    seen: set[tuple[Path, int]] = set()
    unique = []
    for cand in valid:
        key = (cand.path, int(cand.frame or 0))
        if key in seen:
            problems.append(
                OCTDataError(cand.path, f"frame {key[1]} is listed more than once (the first entry is kept)")
            )
            continue
        seen.add(key)
        unique.append(cand)
    valid = unique
    class_index = {c: i for i, c in enumerate(class_list)}
    items = [_make_item(c, class_index, hashes[c.path]) for c in valid]
    duplicates, dup_problems = _find_duplicates(items)
    if strict and (problems or dup_problems):
        raise DataProblems(problems + dup_problems, context)
    for p in problems:
        logger.warning("excluded %s", p)
    for p in dup_problems:
        logger.warning("%s", p)
    if not items:
        listed = "; ".join(str(p) for p in problems[:5])
        raise EmptyDatasetError(src, f"no usable images ({len(problems)} excluded: {listed})")
    kept_fallbacks = {c.path for c in valid} & fallbacks  # files left out are not counted
    if kept_fallbacks:
        logger.warning(
            "%s: %d file(s) have no patient id (no CSV column, and the file name does not match %r); each is "
            "treated as its own patient, so the split cannot be patient-safe. Give a manifest.csv or --patient_regex.",
            src,
            len(kept_fallbacks),
            patient_regex or DEFAULT_PATIENT_REGEX,
        )
    _warn_about_classes(src, items, class_list, pinned=classes is not None)

    splits = split_by_patient(items, fr, seed)
    _warn_about_empty_splits(src, splits, class_list, fr)
    datalist: dict[str, Any] = {
        "name": name or (src.stem if kind == "csv" else src.resolve().name),
        "description": f"OCT B-scans from {src.name} ({kind}), split by patient with seed {seed} (medicraft_monai)",
        "source_kind": kind,
        "labels": {str(i): c for i, c in enumerate(class_list)},
        "num_classes": len(class_list),
        "seed": int(seed),
        "fractions": dict(zip(SPLITS, fr)),
        "numTraining": len(splits["training"]),
        "numValidation": len(splits["validation"]),
        "numTest": len(splits["test"]),
        **splits,
        "excluded": [
            {OCTKeys.IMAGE: p.path or str(src), "reason": p.reason, "error": type(p).__name__} for p in problems
        ],
        "duplicates": duplicates,
    }
    check_splits(datalist)
    if out is not None:
        write_datalist(out, datalist)
        logger.info("wrote %s", out)
    return datalist
