"""Dataset multiplication: sample the synthetic images a target asks for and write them, a manifest and datalists.

``multiply(datalist, output_dir, bundle_root, target="balance")`` plans how many images each class needs
(:func:`~medicraft_monai.synthesis.plan.plan_counts`), samples them in batches from a generator bundle
(:class:`~medicraft_monai.synthesis.generator.DiffusionGenerator`) and writes, under ``output_dir``::

    images/<class>/synthetic_<class>_<index>_s<seed>.png   one file per image (or .nii.gz / .dcm)
    manifest.jsonl, manifest.csv                           one record per file: how it was made
    datalist_synthetic.json                                the synthetic images alone (training split)
    datalist_real_synthetic.json                           the real datalist plus the synthetic training images
    counts.txt                                             count tables before and after
    job.json                                               what identifies the job (for safe resuming)
    .manifest_parts/part-w<world>-r<rank>.jsonl            the per-process journals the manifest is merged from

Image ``index`` of class ``c`` always gets the seed ``image_seed(seed, c, index)``, so the same job always yields
the same images, a larger target only adds images, and a rerun after a crash skips what exists: every file is
written under a temporary name and renamed into place, and each finished batch is appended to a journal (flushed
and fsynced). Sampling streams batch by batch, so memory does not grow with the number of images.

Launched with ``torchrun --nproc_per_node=N -m medicraft_monai.synthesis.multiply ...`` the same job shards
across processes: rank ``r`` of ``N`` takes the planned images ``r, r + N, r + 2N, ...``, writes its own files
and journal, and after a barrier rank 0 merges the journals into one manifest and writes the datalists.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from medicraft_monai.data.datalist import (
    SHA256_KEY,
    check_splits,
    count_table,
    datalist_class_names,
    load_datalist,
    write_datalist,
)
from medicraft_monai.data.errors import OCTDataError
from medicraft_monai.data.keys import OCTKeys

from .generator import DiffusionGenerator, file_sha256
from .plan import parse_target, plan_counts, real_counts
from .writers import (
    FORMATS,
    check_format,
    final_name_of_tmp,
    fsync_dir,
    write_atomic,
    write_synthetic_image,
)

__all__ = [
    "MANIFEST_FIELDS",
    "ImageTask",
    "image_seed",
    "main",
    "multiply",
    "plan_tasks",
    "safe_class_name",
]

logger = logging.getLogger(__name__)

MANIFEST_FIELDS: tuple[str, ...] = (
    "path",
    "class_name",
    "label",
    "index",
    "seed",
    "sampler",
    "steps",
    "guidance_scale",
    "model_sha256",
    "format",
    "bit_depth",
    "height",
    "width",
    "sha256",
    "bundle",
    "job_seed",
)
"""Columns of ``manifest.csv`` (and keys of each ``manifest.jsonl`` record); ``path`` is relative to the output."""

IMAGES_DIR = "images"
PARTS_DIR = ".manifest_parts"
MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_CSV = "manifest.csv"
DATALIST_SYNTHETIC = "datalist_synthetic.json"
DATALIST_COMBINED = "datalist_real_synthetic.json"
COUNTS_TXT = "counts.txt"
JOB_JSON = "job.json"
SEED_RANGE = 2**53  # seeds stay exact in JSON readers that use doubles
_IDENTITY_KEYS = (
    "model_sha256",
    "job_seed",
    "sampler",
    "steps",
    "guidance_scale",
    "format",
    "bit_depth",
    "image_shape",
)


# --------------------------------------------------------------------------------------------------------------------
# the plan: one task per image
# --------------------------------------------------------------------------------------------------------------------
def safe_class_name(name: str) -> str:
    """A class name as it appears in folder and file names (letters, digits, ``_`` and ``-``)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", str(name)).strip("-")
    return safe or "class"


def image_seed(base_seed: int, class_name: str, index: int, attempt: int = 0) -> int:
    """The seed of image ``index`` of ``class_name`` in a job with seed ``base_seed`` (in [0, 2**53))."""
    text = f"medicraft-multiply:{int(base_seed)}:{class_name}:{int(index)}"
    if attempt:
        text += f":{attempt}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % SEED_RANGE


@dataclass(frozen=True)
class ImageTask:
    """One synthetic image to make.

    Attributes:
        class_name: the class.
        label: its index in the real datalist's label order.
        index: the image's number within its class (0, 1, ...).
        seed: its sampling seed.
        relpath: where it goes, relative to the output folder (posix).
    """

    class_name: str
    label: int
    index: int
    seed: int
    relpath: str


def plan_tasks(
    plan: Mapping[str, int], class_names: Sequence[str], base_seed: int = 0, fmt: str = "png"
) -> list[ImageTask]:
    """The images a plan asks for, in label order then index order (the same plan always gives the same list).

    Args:
        plan: images to make per class (from :func:`plan_counts`).
        class_names: the real datalist's class names in label order (give each task its label).
        base_seed: the job's seed.
        fmt: output format (decides the suffix).
    """
    suffix = FORMATS[check_format(fmt, 8)[0]]
    safe = {c: safe_class_name(c) for c in class_names}
    clash = [c for c in class_names if list(safe.values()).count(safe[c]) > 1]
    if clash:
        raise ValueError(f"class names {clash} give the same file name; rename the classes")
    tasks: list[ImageTask] = []
    for label, name in enumerate(class_names):
        seen: set[int] = set()
        for index in range(int(plan.get(name, 0))):
            attempt, seed = 0, image_seed(base_seed, name, index)
            while seed in seen:  # never two images of a class from the same seed
                attempt += 1
                seed = image_seed(base_seed, name, index, attempt)
            seen.add(seed)
            stem = f"synthetic_{safe[name]}_{index:06d}_s{seed}"
            tasks.append(ImageTask(name, label, index, seed, f"{IMAGES_DIR}/{safe[name]}/{stem}{suffix}"))
    return tasks


# --------------------------------------------------------------------------------------------------------------------
# journals (append-only JSON lines) and the manifest
# --------------------------------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file; a line cut short by a crash (or otherwise unreadable) is skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    logger.info("%s: skipping an unreadable (partly written) record", path)
                    continue
                if isinstance(record, dict) and "path" in record:
                    yield record
    except FileNotFoundError:
        return


def _known_records(out: Path) -> dict[str, dict[str, Any]]:
    """Every record found in the merged manifest and the journals, by path (journals win, later lines win)."""
    records: dict[str, dict[str, Any]] = {}
    sources = [out / MANIFEST_JSONL, *sorted((out / PARTS_DIR).glob("part-*.jsonl"))]
    for src in sources:
        for rec in _read_jsonl(src):
            records[str(rec["path"])] = rec
    return records


class _Journal:
    """An append-only JSON-lines file; each :meth:`append` is one write, flushed and fsynced.

    A last line cut short by a crash is truncated away on opening, so new records never join a broken line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size:
            data = path.read_bytes()
            if not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                with open(path, "r+b") as f:
                    f.truncate(keep)
                    f.flush()
                    os.fsync(f.fileno())
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        text = "".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in records)
        if text:
            self._file.write(text)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _manifest_csv(records: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: rec.get(k, "") for k in MANIFEST_FIELDS})
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------------
# checks before any work
# --------------------------------------------------------------------------------------------------------------------
def _check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OCTDataError(out, "output_dir exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-", delete=True) as f:
            f.write(b"ok")
            f.flush()
    except OSError as e:
        raise OCTDataError(out, f"output folder is not writable ({e.strerror or e})") from None


def _job_identity(gen: DiffusionGenerator, seed: int, steps: int, guidance: float, fmt: str, bits: int) -> dict:
    return {
        "model_sha256": gen.checksum,
        "job_seed": int(seed),
        "sampler": gen.sampler,
        "steps": int(steps),
        "guidance_scale": float(guidance),
        "format": fmt,
        "bit_depth": int(bits),
        "image_shape": [int(s) for s in gen.image_shape],
    }


def _check_job(out: Path, identity: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    """Record the job in ``job.json``, or make sure the images already there come from the same job."""
    path = out / JOB_JSON
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise OCTDataError(
                path, f"unreadable job record ({e}); remove it only if the folder holds no images"
            ) from None
        diff = {k: (old.get(k), identity[k]) for k in _IDENTITY_KEYS if old.get(k) != identity[k]}
        if diff:
            listed = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise OCTDataError(
                out, f"holds synthetic images of a different job ({listed}); use another output_dir to start a new job"
            )
        return
    _write_text_atomic(path, json.dumps({**identity, **extra}, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------------------------
# distributed helpers
# --------------------------------------------------------------------------------------------------------------------
def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from an initialised process group, else from torchrun's variables."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _init_dist(world: int, device: torch.device) -> bool:
    """Initialise the default process group when torchrun launched several processes; True if done here."""
    if world <= 1 or not torch.distributed.is_available() or torch.distributed.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" and torch.distributed.is_nccl_available() else "gloo"
    torch.distributed.init_process_group(backend=backend)
    return True


def _barrier(world: int) -> None:
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _gather(obj: Any, world: int) -> list[Any]:
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * world
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


# --------------------------------------------------------------------------------------------------------------------
# sampling one shard
# --------------------------------------------------------------------------------------------------------------------
def _record(
    task: ImageTask, gen: DiffusionGenerator, steps: int, guidance: float, fmt: str, bits: int, job_seed: int, sha: str
) -> dict:
    return {
        "path": task.relpath,
        "class_name": task.class_name,
        "label": task.label,
        "index": task.index,
        "seed": task.seed,
        "sampler": gen.sampler,
        "steps": int(steps),
        "guidance_scale": float(guidance),
        "model_sha256": gen.checksum,
        "format": fmt,
        "bit_depth": int(bits),
        "height": int(gen.image_shape[1]),
        "width": int(gen.image_shape[2]),
        "sha256": sha,
        "bundle": Path(gen.bundle_root).resolve().name,
        "job_seed": int(job_seed),
    }


def _dicom_uids(gen: DiffusionGenerator, task: ImageTask, job_seed: int) -> dict[str, str]:
    """Deterministic UIDs (one study per job, one series per class), so a rerun writes the same identifiers."""
    from pydicom.uid import generate_uid

    job = [gen.checksum, str(job_seed), "medicraft-multiply"]
    return {
        "study": generate_uid(entropy_srcs=[*job, "study"]),
        "series": generate_uid(entropy_srcs=[*job, "series", task.class_name]),
        "sop": generate_uid(entropy_srcs=[*job, "sop", task.class_name, str(task.index), str(task.seed)]),
    }


def _remove_tmp_leftovers(out: Path, names: set[str] | None) -> int:
    """Remove temporary files left by a crash whose final name is in ``names`` (all of them when None)."""
    removed = 0
    folders = [out, *(p for p in (out / IMAGES_DIR).glob("*") if p.is_dir())]
    for folder in folders:
        for p in folder.glob(".*.tmp*"):
            final = final_name_of_tmp(p.name)
            if final is None or not p.is_file():
                continue
            if names is None or final in names:
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def _run_shard(
    tasks: Sequence[ImageTask],
    gen: DiffusionGenerator,
    out: Path,
    journal: _Journal,
    *,
    steps: int,
    guidance: float,
    fmt: str,
    bits: int,
    job_seed: int,
    batch_size: int,
    progress: bool,
    rank: int,
    world: int,
) -> dict[str, int]:
    """Make this process's images: skip those on disk (recording any the journal lacks), sample the rest."""
    removed = _remove_tmp_leftovers(out, {Path(t.relpath).name for t in tasks})
    if removed:
        logger.info("rank %d: removed %d temporary file(s) left by an interrupted run", rank, removed)
    known = _known_records(out)
    pending: list[ImageTask] = []
    recovered = []
    for t in tasks:
        path = out / t.relpath
        if path.is_file():
            if t.relpath not in known:  # written, then interrupted before its batch was journaled
                recovered.append(_record(t, gen, steps, guidance, fmt, bits, job_seed, file_sha256(path)))
        else:
            pending.append(t)
    journal.append(recovered)
    del known
    desc = "multiply" if world == 1 else f"multiply (rank {rank}/{world})"
    bar = tqdm(total=len(pending), desc=desc, unit="img", disable=not progress, position=rank if world > 1 else None)
    try:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            # always the same batch shape: a short batch is padded with repeats of its last image (their outputs
            # are dropped), so an image's floating-point result does not depend on where a rerun resumed
            padded = batch + [batch[-1]] * (batch_size - len(batch))
            images = gen.generate([t.class_name for t in padded], [t.seed for t in padded], steps, guidance)
            records = []
            folders = set()
            for t, image in zip(batch, images):
                path = out / t.relpath
                provenance = {
                    **gen.provenance(t.class_name, t.seed, steps, guidance),
                    "synthetic": True,
                    "index": t.index,
                    "job_seed": int(job_seed),
                    "file": path.name,
                }
                write_synthetic_image(
                    path,
                    image,
                    fmt,
                    bits,
                    provenance=provenance,
                    class_name=t.class_name,
                    uids=_dicom_uids(gen, t, job_seed) if fmt == "dicom" else None,
                    instance_number=t.index + 1,
                )
                folders.add(path.parent)
                records.append(_record(t, gen, steps, guidance, fmt, bits, job_seed, file_sha256(path)))
            del images
            for folder in folders:
                fsync_dir(folder)
            journal.append(records)
            bar.update(len(batch))
    finally:
        bar.close()
    return {"generated": len(pending), "skipped": len(tasks) - len(pending), "recovered": len(recovered)}


# --------------------------------------------------------------------------------------------------------------------
# merging: manifest, datalists, count tables (rank 0)
# --------------------------------------------------------------------------------------------------------------------
def _synthetic_item(task: ImageTask, out: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    pid = f"synthetic-{safe_class_name(task.class_name)}-{task.index:06d}"
    return {
        OCTKeys.IMAGE: str((out / task.relpath).resolve()),
        OCTKeys.LABEL: task.label,
        OCTKeys.CLASS_NAME: task.class_name,
        OCTKeys.PATIENT_ID: pid,
        OCTKeys.EXAM_ID: pid,
        OCTKeys.PLANE_ANGLE: None,
        OCTKeys.LATERALITY: "",
        OCTKeys.FRAME: 0,
        OCTKeys.SYNTHETIC: True,
        SHA256_KEY: record.get("sha256") or "",
        "seed": task.seed,
        "model_sha256": record.get("model_sha256", ""),
    }


def _finalize(
    tasks: Sequence[ImageTask],
    real: Mapping[str, Any],
    datalist_path: Path,
    gen: DiffusionGenerator,
    out: Path,
    *,
    plan: Mapping[str, int],
    target: str,
    split: str,
    steps: int,
    guidance: float,
    fmt: str,
    bits: int,
    job_seed: int,
    progress: bool,
) -> dict[str, str]:
    _remove_tmp_leftovers(out, None)
    known = _known_records(out)
    records, items = [], []
    for t in tasks:
        path = out / t.relpath
        if not path.is_file():
            raise OCTDataError(path, "planned synthetic image is missing after all processes finished")
        rec = known.get(t.relpath) or _record(t, gen, steps, guidance, fmt, bits, job_seed, file_sha256(path))
        records.append(rec)
        items.append(_synthetic_item(t, out, rec))
    planned = {t.relpath for t in tasks}
    extra = sorted(p for p in known if p not in planned and (out / p).is_file())
    if extra:
        logger.warning(
            "%s: %d synthetic file(s) from an earlier, larger target are not part of this plan; they stay on disk "
            "but are not in the manifest or datalists (e.g. %s)",
            out,
            len(extra),
            extra[0],
        )
    _write_text_atomic(out / MANIFEST_JSONL, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    _write_text_atomic(out / MANIFEST_CSV, _manifest_csv(records))

    info = {
        "count": len(items),
        "planned": dict(plan),
        "target": target,
        "counted_split": split,
        "model_sha256": gen.checksum,
        "bundle": Path(gen.bundle_root).resolve().name,
        "sampler": gen.sampler,
        "steps": int(steps),
        "guidance_scale": float(guidance),
        "format": fmt,
        "bit_depth": int(bits),
        "seed": int(job_seed),
        "manifest": MANIFEST_JSONL,
        "real_datalist": str(datalist_path.resolve()),
    }
    base = {k: v for k, v in real.items() if k not in ("training", "validation", "test", "excluded", "duplicates")}
    name = str(real.get("name") or datalist_path.stem)
    synthetic = {
        **base,
        "name": f"{name}-synthetic",
        "description": f"synthetic images only ({target}), made by medicraft_monai multiply",
        "numTraining": len(items),
        "numValidation": 0,
        "numTest": 0,
        "training": items,
        "validation": [],
        "test": [],
        "synthetic": info,
    }
    combined = {
        **dict(real),
        "name": f"{name}+synthetic",
        "description": f"{real.get('description', name)}; plus {len(items)} synthetic training images ({target})",
        "training": [*(real.get("training") or []), *items],
        "numTraining": len(real.get("training") or []) + len(items),
        "synthetic": info,
    }
    check_splits(combined, hash_files=False)
    write_datalist(out / DATALIST_SYNTHETIC, synthetic)
    write_datalist(out / DATALIST_COMBINED, combined)

    before, after = count_table(real), count_table(combined)
    plan_lines = "\n".join(f"  {c}: +{n}" for c, n in plan.items())
    text = (
        f"medicraft multiply: target {target}, counted on the {split!r} split\n"
        f"synthetic images added to training:\n{plan_lines}\n\n"
        f"before (real datalist {datalist_path}):\n{before}\n\n"
        f"after (real + synthetic, {out / DATALIST_COMBINED}):\n{after}\n"
    )
    _write_text_atomic(out / COUNTS_TXT, text)
    if progress:
        print(text, flush=True)
    logger.info("multiply: wrote %d synthetic images to %s", len(items), out)
    return {
        "manifest": str(out / MANIFEST_JSONL),
        "manifest_csv": str(out / MANIFEST_CSV),
        "datalist_synthetic": str(out / DATALIST_SYNTHETIC),
        "datalist_combined": str(out / DATALIST_COMBINED),
        "counts": str(out / COUNTS_TXT),
    }


# --------------------------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------------------------
def multiply(
    datalist: str | PathLike,
    output_dir: str | PathLike,
    bundle_root: str | PathLike | None = None,
    target: str | float | int | Mapping[str, int] = "balance",
    split: str = "training",
    fmt: str = "png",
    bit_depth: int = 8,
    batch_size: int = 16,
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    ckpt_path: str | PathLike | None = None,
    config_file: str | Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    generator: DiffusionGenerator | None = None,
) -> dict[str, Any]:
    """Multiply a real data set with a class-conditioned generator: sample, write files, manifest and datalists.

    Everything is checked before any image is sampled: the datalist, the target against its classes and the
    generator's, the output folder, the bundle and its checkpoint, and (on a rerun) that the output folder holds
    the same job. A rerun of an interrupted job skips the images on disk and finishes it; under ``torchrun`` the
    job shards across the processes.

    Args:
        datalist: the real datalist JSON (``medicraft datalist`` / :func:`~medicraft_monai.data.build_datalist`).
        output_dir: folder for the images, manifest, datalists and count tables (created).
        bundle_root: the generator bundle (with ``configs/inference.json`` and trained weights); not needed when
            ``generator`` is given.
        target: ``"balance"`` (every class up to the largest class), ``"multiply:N"`` or the number ``N`` (every
            class to N times its count, N >= 1, may be a float), or images to add per class as a mapping or JSON
            text (``{"melanoma": 200}``).
        split: the split whose real images are counted (synthetic images always go to the training split).
        fmt: "png" (default), "nifti" (``.nii.gz``) or "dicom" (single-frame Ophthalmic Tomography, marked
            synthetic: ImageType DERIVED\\SECONDARY, series description "SYNTHETIC ...", no patient identity).
        bit_depth: 8 (default) or 16 bits per pixel.
        batch_size: images sampled together (at most the number planned). Every batch has this shape (a short
            last batch is padded), so a resumed job computes each image exactly as an uninterrupted one would.
        seed: the job's seed; image ``i`` of class ``c`` is sampled with ``image_seed(seed, c, i)``.
        num_inference_steps: sampling steps (default: the bundle's ``num_inference_steps``).
        guidance_scale: classifier-free guidance weight (default: the bundle's ``guidance_scale``).
        ckpt_path: weights to load (default: the bundle's ``ckpt_path``).
        config_file: the bundle's inference config(s), relative to ``bundle_root`` (default
            ``configs/inference.json``).
        overrides: bundle config overrides, e.g. ``{"sampler": "ddpm"}`` for a bundle whose sampling scheduler
            follows its ``sampler`` key, or ``{"image_size": [256, 512]}``.
        device: where to sample (default: CUDA when available, else CPU; under torchrun ``cuda:LOCAL_RANK``).
        progress: show a progress bar and print the count tables.
        generator: an already loaded :class:`DiffusionGenerator` (instead of ``bundle_root``).

    Returns:
        ``{"output_dir", "planned": {class: n}, "counts_before": {class: n}, "total", "generated", "skipped",
        "recovered", "world_size", "manifest", "manifest_csv", "datalist_synthetic", "datalist_combined",
        "counts"}`` (paths as text; ``generated``/``skipped``/``recovered`` summed over all processes).

    Raises:
        ValueError: unknown format, bad bit depth or batch size, or a bad target (factor < 1, negative count).
        OCTDataError: a missing or invalid datalist, an output folder that cannot be written or that holds
            another job's images; :class:`~medicraft_monai.data.UnknownLabelError` for an unknown class name.
        GeneratorError: a missing bundle or checkpoint, or a checkpoint that does not fit the network.
    """
    fmt, bits = check_format(fmt, bit_depth)
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    tgt = parse_target(target)
    datalist_path = Path(datalist)
    real = load_datalist(datalist_path)
    class_names = datalist_class_names(real)
    plan_counts(real, tgt, split=split)  # unknown class names and empty splits fail before the model loads
    out = Path(output_dir)
    _check_output_dir(out)

    rank, world, local_rank = _dist_env()
    if generator is None:
        if bundle_root is None:
            raise ValueError("give bundle_root (a generator bundle) or generator")
        if device is None and world > 1 and torch.cuda.is_available():
            device = f"cuda:{local_rank}"
        generator = DiffusionGenerator.from_bundle(
            Path(bundle_root).resolve(),
            ckpt_path=ckpt_path,
            config_file=config_file,
            device=device,
            overrides=overrides,
        )
    gen = generator
    plan = plan_counts(real, tgt, split=split, class_names=gen.class_names)
    steps = int(num_inference_steps or gen.num_inference_steps)
    guidance = float(gen.guidance_scale if guidance_scale is None else guidance_scale)
    if steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps!r}")
    identity = _job_identity(gen, seed, steps, guidance, fmt, bits)
    _check_job(out, identity, {"bundle_root": str(Path(gen.bundle_root).resolve()), "class_names": gen.class_names})
    tasks = plan_tasks(plan, class_names, seed, fmt)

    created = _init_dist(world, gen.device)
    try:
        journal = _Journal(out / PARTS_DIR / f"part-w{world}-r{rank}.jsonl")
        try:
            stats = _run_shard(
                tasks[rank::world],
                gen,
                out,
                journal,
                steps=steps,
                guidance=guidance,
                fmt=fmt,
                bits=bits,
                job_seed=seed,
                batch_size=min(batch_size, max(1, len(tasks))),
                progress=progress,
                rank=rank,
                world=world,
            )
        finally:
            journal.close()
        all_stats = _gather(stats, world)
        _barrier(world)
        paths: dict[str, str] = {}
        if rank == 0:
            paths = _finalize(
                tasks,
                real,
                datalist_path,
                gen,
                out,
                plan=plan,
                target=tgt.describe(),
                split=split,
                steps=steps,
                guidance=guidance,
                fmt=fmt,
                bits=bits,
                job_seed=seed,
                progress=progress,
            )
        _barrier(world)
    finally:
        if created:
            torch.distributed.destroy_process_group()
    if not paths:
        paths = {
            "manifest": str(out / MANIFEST_JSONL),
            "manifest_csv": str(out / MANIFEST_CSV),
            "datalist_synthetic": str(out / DATALIST_SYNTHETIC),
            "datalist_combined": str(out / DATALIST_COMBINED),
            "counts": str(out / COUNTS_TXT),
        }
    return {
        "output_dir": str(out),
        "planned": dict(plan),
        "counts_before": real_counts(real, split),
        "total": len(tasks),
        "generated": sum(s["generated"] for s in all_stats),
        "skipped": sum(s["skipped"] for s in all_stats),
        "recovered": sum(s["recovered"] for s in all_stats),
        "world_size": world,
        **paths,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry (``python -m medicraft_monai.synthesis.multiply --datalist ... --output_dir ...``).

    Takes :func:`multiply`'s arguments as ``--name value``; works under ``torchrun``. Prints the summary as JSON
    (rank 0 only).
    """
    import fire

    rank = _dist_env()[0]
    fire.Fire(
        multiply,
        command=None if argv is None else list(argv),
        name="multiply",
        serialize=lambda result: json.dumps(result, indent=2) if rank == 0 else None,
    )


if __name__ == "__main__":
    main()
