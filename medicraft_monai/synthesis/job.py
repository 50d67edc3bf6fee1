"""The one synthesis job: sample planned images from a generator, shard, journal and resume, record, finalise.

``medicraft multiply`` (:mod:`~medicraft_monai.synthesis.multiply`), the MONAI Deploy ``synthesize`` app
(:mod:`medicraft_monai.deploy.synthesis`) and the MONAI Label ``synthesize`` task all run a :class:`SynthesisJob` on
a list of :class:`~medicraft_monai.synthesis.plan.ImageTask` (one per image: class, seed, file). Under the output
folder a job writes::

    <task.relpath>                                  one file per image (PNG, NIfTI or DICOM), marked synthetic
    job.json                                        what identifies the job (a rerun must be the same job)
    .manifest_parts/part-w<world>-r<rank>.jsonl     each process's journal: one record per image, batch by batch
    manifest.jsonl, manifest.csv                    the merged records of the planned images (:meth:`finalize`)

Every image is sampled in a batch of exactly ``batch_size`` (a short last batch is padded with repeats of its last
task, whose outputs are dropped), so an image's floating-point result does not depend on where an interrupted run
resumed. Files are written under a temporary name and renamed into place; each finished batch is appended to the
journal (flushed and fsynced); a rerun removes temporary leftovers, records the files a crash left unjournaled, and
samples only what is missing.

Launched with several processes (``torchrun``), :func:`distributed` initialises ``ignite.distributed`` and
:meth:`SynthesisJob.run` shards the tasks: rank ``r`` of ``N`` takes tasks ``r, r + N, r + 2N, ...``; after a
barrier rank 0 merges the journals (:meth:`SynthesisJob.finalize`).

:func:`synthetic_datalist_item` is the one form of a synthetic image in a datalist (multiply's datalists, the expert
review export).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from tqdm import tqdm

from medicraft_monai.data.datalist import SHA256_KEY
from medicraft_monai.data.errors import OCTDataError
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.utils import file_sha256, fsync_dir, write_csv_atomic, write_text_atomic

from .generator import DiffusionGenerator
from .plan import IMAGES_DIR, ImageTask, safe_class_name
from .writers import check_format, final_name_of_tmp, write_synthetic_image

__all__ = [
    "JOB_JSON",
    "MANIFEST_CSV",
    "MANIFEST_FIELDS",
    "MANIFEST_JSONL",
    "PARTS_DIR",
    "SynthesisJob",
    "check_output_dir",
    "distributed",
    "synthetic_datalist",
    "synthetic_datalist_item",
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
    "synthetic",
)
"""Columns of ``manifest.csv`` (and keys of each ``manifest.jsonl`` record); ``path`` is relative to the output."""

PARTS_DIR = ".manifest_parts"
MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_CSV = "manifest.csv"
JOB_JSON = "job.json"
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
# processes
# --------------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def distributed(device: str | torch.device | None = None) -> Iterator[None]:
    """Initialise ``ignite.distributed`` when ``torchrun`` launched several processes and none is set up yet
    (NCCL for CUDA devices, else gloo), and finalise it on leaving; a no-op in a single process."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not launched or idist.get_world_size() > 1 or not torch.distributed.is_available():
        yield
        return
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    idist.initialize("nccl" if cuda and torch.distributed.is_nccl_available() else "gloo")
    try:
        yield
    finally:
        idist.finalize()


def check_output_dir(out: str | PathLike, *, create: bool = True) -> None:
    """Make the output folder, or fail (``OCTDataError``) when it is a file or cannot be written.

    With ``create=False`` a missing folder is not made: it is enough that its nearest existing parent is a folder
    that can be written (a job checks its output this way before its other inputs, and makes it only after them).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OCTDataError(out, "output_dir exists and is not a folder")
    if not create and not out.exists():
        parent = out.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise OCTDataError(out, f"output folder cannot be made: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OCTDataError(out, f"output folder cannot be made: {parent} is not writable")
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-", delete=True) as f:
            f.write(b"ok")
            f.flush()
    except OSError as e:
        raise OCTDataError(out, f"output folder is not writable ({e.strerror or e})") from None


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


# --------------------------------------------------------------------------------------------------------------------
# datalist items
# --------------------------------------------------------------------------------------------------------------------
def synthetic_datalist_item(
    image: str | PathLike,
    label: int,
    class_name: str,
    item_id: str,
    sha256: str = "",
    seed: int | None = None,
    model_sha256: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """A synthetic image as a datalist item: marked ``synthetic``, its own patient and exam (``item_id``), no plane
    angle or laterality, with its file checksum, seed and model checksum (``extra`` keys are added as given)."""
    return {
        OCTKeys.IMAGE: str(image),
        OCTKeys.LABEL: int(label),
        OCTKeys.CLASS_NAME: class_name,
        OCTKeys.PATIENT_ID: item_id,
        OCTKeys.EXAM_ID: item_id,
        OCTKeys.PLANE_ANGLE: None,
        OCTKeys.LATERALITY: "",
        OCTKeys.FRAME: 0,
        OCTKeys.SYNTHETIC: True,
        SHA256_KEY: sha256 or "",
        "seed": seed,
        "model_sha256": model_sha256 or "",
        **extra,
    }


def synthetic_datalist(
    items: Sequence[Mapping[str, Any]],
    name: str,
    description: str,
    synthetic: Mapping[str, Any],
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A datalist of synthetic training images only: ``base``'s keys (labels, class names...) with ``items`` as the
    training split, empty validation and test splits, and a ``synthetic`` block saying how the images were made."""
    return {
        **dict(base or {}),
        "name": name,
        "description": description,
        "numTraining": len(items),
        "numValidation": 0,
        "numTest": 0,
        "training": list(items),
        "validation": [],
        "test": [],
        "synthetic": dict(synthetic),
    }


# --------------------------------------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class SynthesisJob:
    """Sample :class:`~medicraft_monai.synthesis.plan.ImageTask` images from a generator into a folder.

    Attributes:
        generator: the loaded generator.
        output_dir: where files, journals and the manifest go.
        steps: sampling steps (default: the generator's).
        guidance_scale: classifier-free guidance weight (default: the generator's).
        fmt: "png", "nifti" or "dicom"; ``bit_depth``: 8 or 16.
        job_seed: the job's seed (recorded; the tasks carry their own seeds).
        batch_size: images sampled together; every batch has this shape (a short one is padded).
        name: the job's name: the DICOM UID namespace and the progress bar's label.
        provenance_extra: further keys of every image's provenance (e.g. the app that made it).
        progress: show a progress bar.
    """

    generator: DiffusionGenerator
    output_dir: Path
    steps: int | None = None
    guidance_scale: float | None = None
    fmt: str = "png"
    bit_depth: int = 8
    job_seed: int = 0
    batch_size: int = 16
    name: str = "medicraft-multiply"
    provenance_extra: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.fmt, self.bit_depth = check_format(self.fmt, self.bit_depth)
        if isinstance(self.batch_size, bool) or int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        self.batch_size = int(self.batch_size)
        gen = self.generator
        self.steps = int(self.steps or gen.num_inference_steps)
        if self.steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.steps!r}")
        self.guidance_scale = float(gen.guidance_scale if self.guidance_scale is None else self.guidance_scale)
        self.job_seed = int(self.job_seed)

    # ---------------------------------------------------------------------------------------------- checks
    def identity(self) -> dict[str, Any]:
        """What makes two runs the same job (their images may share a folder)."""
        gen = self.generator
        return {
            "model_sha256": gen.checksum,
            "job_seed": self.job_seed,
            "sampler": gen.sampler,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "format": self.fmt,
            "bit_depth": self.bit_depth,
            "image_shape": [int(s) for s in gen.image_shape],
        }

    def check_job(self, extra: Mapping[str, Any] | None = None) -> None:
        """Record the job in ``job.json``, or make sure the images already there come from the same job."""
        out, identity = self.output_dir, self.identity()
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
                    out,
                    f"holds synthetic images of a different job ({listed}); use another output_dir to start a new job",
                )
            return
        record = {**identity, "bundle_root": str(Path(self.generator.bundle_root).resolve()), **dict(extra or {})}
        write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")

    def summary(self, count: int) -> dict[str, Any]:
        """How the job's ``count`` images were made: the ``synthetic`` block of its datalists."""
        gen = self.generator
        return {
            "count": int(count),
            "model_sha256": gen.checksum,
            "bundle": Path(gen.bundle_root).resolve().name,
            "sampler": gen.sampler,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "format": self.fmt,
            "bit_depth": self.bit_depth,
            "seed": self.job_seed,
            "manifest": MANIFEST_JSONL,
            # further weights the images depend on (a latent generator's autoencoder, a fine-tuned one's parent)
            **{f"{k}_sha256": v for k, v in sorted(gen.component_checksums.items())},
        }

    # ---------------------------------------------------------------------------------------------- records
    def record(self, task: ImageTask, sha256: str) -> dict[str, Any]:
        """The manifest record of a written image (keys :data:`MANIFEST_FIELDS`)."""
        gen = self.generator
        return {
            "path": task.relpath,
            "class_name": task.class_name,
            "label": task.label,
            "index": task.index,
            "seed": task.seed,
            "sampler": gen.sampler,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "model_sha256": gen.checksum,
            "format": self.fmt,
            "bit_depth": self.bit_depth,
            "height": int(gen.image_shape[1]),
            "width": int(gen.image_shape[2]),
            "sha256": sha256,
            "bundle": Path(gen.bundle_root).resolve().name,
            "job_seed": self.job_seed,
            "synthetic": True,
        }

    def provenance(self, task: ImageTask) -> dict[str, Any]:
        """What the image file itself records about how it was made."""
        return {
            **self.generator.provenance(task.class_name, task.seed, self.steps, self.guidance_scale),
            "synthetic": True,
            "index": task.index,
            "job_seed": self.job_seed,
            "file": Path(task.relpath).name,
            **self.provenance_extra,
        }

    def dicom_uids(self, task: ImageTask) -> dict[str, str]:
        """Deterministic UIDs (one study per job, one series per class), so a rerun writes the same identifiers."""
        from pydicom.uid import generate_uid

        job = [self.generator.checksum, str(self.job_seed), self.name]
        return {
            "study": generate_uid(entropy_srcs=[*job, "study"]),
            "series": generate_uid(entropy_srcs=[*job, "series", task.class_name]),
            "sop": generate_uid(entropy_srcs=[*job, "sop", task.class_name, str(task.index), str(task.seed)]),
        }

    # ---------------------------------------------------------------------------------------------- sampling
    def sample_batch(self, batch: Sequence[ImageTask]) -> np.ndarray:
        """Sample the images of one batch: float32 (len(batch), C, H, W) in [0, 1].

        The batch is padded to ``batch_size`` with repeats of its last task (their outputs are dropped), so every
        batch has the same shape and an image's floating-point result does not depend on where a rerun resumed or
        on how many images were asked for.
        """
        padded = list(batch) + [batch[-1]] * (self.batch_size - len(batch))
        with torch.no_grad():
            images = self.generator.generate(
                [t.class_name for t in padded], [t.seed for t in padded], self.steps, self.guidance_scale
            )
        return images[: len(batch)]

    def write_batch(self, batch: Sequence[ImageTask], count: int | None = None) -> list[dict[str, Any]]:
        """Sample one batch (:meth:`sample_batch`), write its files (only the first ``count`` when given: the others
        are sampled only so that the batch is the same) and return their records."""
        out = self.output_dir
        images = self.sample_batch(batch)
        records, folders = [], set()
        for t, image in list(zip(batch, images))[:count]:
            path = out / t.relpath
            write_synthetic_image(
                path,
                image,
                self.fmt,
                self.bit_depth,
                provenance=self.provenance(t),
                class_name=t.class_name,
                uids=self.dicom_uids(t) if self.fmt == "dicom" else None,
                instance_number=t.index + 1,
            )
            folders.add(path.parent)
            records.append(self.record(t, file_sha256(path)))
        for folder in folders:
            fsync_dir(folder)
        return records

    def _run_shard(self, tasks: Sequence[ImageTask], journal: _Journal, rank: int, world: int) -> dict[str, int]:
        """Make this process's images: skip those on disk (recording any the journal lacks), sample the rest."""
        out = self.output_dir
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
                    recovered.append(self.record(t, file_sha256(path)))
            else:
                pending.append(t)
        journal.append(recovered)
        del known
        desc = self.name if world == 1 else f"{self.name} (rank {rank}/{world})"
        bar = tqdm(
            total=len(pending), desc=desc, unit="img", disable=not self.progress, position=rank if world > 1 else None
        )
        try:
            for start in range(0, len(pending), self.batch_size):
                batch = pending[start : start + self.batch_size]
                journal.append(self.write_batch(batch))
                bar.update(len(batch))
        finally:
            bar.close()
        return {"generated": len(pending), "skipped": len(tasks) - len(pending), "recovered": len(recovered)}

    def run(self, tasks: Sequence[ImageTask]) -> dict[str, int]:
        """Make the images of ``tasks`` that are not on disk yet, sharded over the processes of
        ``ignite.distributed``; returns ``{"generated", "skipped", "recovered", "world_size"}`` summed over all
        processes, after every process finished (a barrier)."""
        rank, world = idist.get_rank(), idist.get_world_size()
        journal = _Journal(self.output_dir / PARTS_DIR / f"part-w{world}-r{rank}.jsonl")
        try:
            stats = self._run_shard(tasks[rank::world], journal, rank, world)
        finally:
            journal.close()
        every = idist.all_gather(stats) if world > 1 else [stats]
        idist.barrier()
        summed = {k: sum(int(s[k]) for s in every) for k in ("generated", "skipped", "recovered")}
        return {**summed, "world_size": world}

    # ---------------------------------------------------------------------------------------------- finalising
    def finalize(self, tasks: Sequence[ImageTask]) -> list[dict[str, Any]]:
        """Merge the journals into ``manifest.jsonl`` and ``manifest.csv`` (the planned images, in plan order) and
        return their records; run it in one process (rank 0) after :meth:`run`.

        Raises:
            OCTDataError: a planned image is missing.
        """
        out = self.output_dir
        _remove_tmp_leftovers(out, None)
        known = _known_records(out)
        records = []
        for t in tasks:
            path = out / t.relpath
            if not path.is_file():
                raise OCTDataError(path, "planned synthetic image is missing after all processes finished")
            records.append({**(known.get(t.relpath) or self.record(t, file_sha256(path))), "synthetic": True})
        planned = {t.relpath for t in tasks}
        extra = sorted(p for p in known if p not in planned and (out / p).is_file())
        if extra:
            logger.warning(
                "%s: %d synthetic file(s) from an earlier, larger request are not part of this plan; they stay on "
                "disk but are not in the manifest (e.g. %s)",
                out,
                len(extra),
                extra[0],
            )
        write_text_atomic(out / MANIFEST_JSONL, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        write_csv_atomic(out / MANIFEST_CSV, records, MANIFEST_FIELDS)
        return records

    def datalist_item(self, task: ImageTask, record: Mapping[str, Any]) -> dict[str, Any]:
        """The datalist item of a finished task (absolute path, its own synthetic patient)."""
        return synthetic_datalist_item(
            (self.output_dir / task.relpath).resolve(),
            task.label,
            task.class_name,
            f"synthetic-{safe_class_name(task.class_name)}-{task.index:06d}",
            sha256=record.get("sha256") or "",
            seed=task.seed,
            model_sha256=record.get("model_sha256", ""),
        )
