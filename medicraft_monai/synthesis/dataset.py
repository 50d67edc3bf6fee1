"""A MONAI dataset of synthetic B-scans made on demand by a generator bundle and kept in a bounded on-disk cache.

:class:`SyntheticDataset` lists ``counts[c]`` synthetic images of each class ``c``; an image is sampled the first
time it is read and read from the cache after that, so a training run mixes real and synthetic data without a
separate multiplication step::

    from monai.data import DataLoader
    from medicraft_monai.synthesis import SyntheticDataset

    synthetic = SyntheticDataset("oct_ldm", {"DME": 200, "DRUSEN": 200}, cache_dir="synthetic_cache", seed=0)
    item = synthetic[0]       # {"image": MetaTensor (1, 64, 128) in [0, 1], "label": 0, "class_name": "DME", ...}
    loader = DataLoader(synthetic, batch_size=16, shuffle=True, num_workers=2)

How it stays deterministic, resumable and safe to share:

- **Seeds and blocks.** Image ``i`` of class ``c`` has multiplication's seed and file name
  (:func:`~medicraft_monai.synthesis.plan.plan_tasks`). Images are sampled in blocks of ``batch_size`` consecutive
  indices of one class, always the whole block (indices beyond the count asked for are sampled, not written), so an
  image is the same whichever worker, rank or run makes it and however many images are asked for: image ``i`` equals ``generate(bundle, class_name=c, num_samples=n, seed=seed,
  batch_size=batch_size)[i]`` for any ``n`` that is a multiple of ``batch_size`` above ``i``.
- **The cache.** ``cache_dir/<bundle>-<key>/`` holds ``images/<class>/synthetic_<class>_<index>_s<seed>.png`` (8-bit
  PNG with the provenance, written atomically: a reader never sees half a file), ``cache.json`` (what the key
  stands for: model checksums, sampler, steps, guidance, seed, block size) and ``blocks.jsonl`` (one line per block
  sampled: which process made it). Other weights or settings get another key folder. A rerun (or a run after a
  kill) reuses every file there and samples only what is missing; leftover temporary files of dead processes are
  removed.
- **Workers and ranks.** A block is sampled under an exclusive file lock (``fcntl.flock`` on
  ``.locks/<class>-<block>.lock``), so DataLoader workers and DDP ranks on one machine never sample the same block
  twice; a process waiting for the lock then reads the files the other wrote. Per-image file names and atomic
  renames keep the cache correct even where locks do not hold (several machines sharing one folder): at worst a
  block is sampled twice, to the same images.
- **Bounded.** With ``cache_size`` the folder keeps at most that many images: after a block is written, the least
  recently used images (file modification time, refreshed on every read) are removed, under a lock. An image that
  was removed is sampled again when read (the same image: see above).

A generator loaded on CUDA cannot sample inside DataLoader workers forked after CUDA started (a PyTorch rule): give
``device="cpu"``, ``num_workers=0`` or ``DataLoader(..., multiprocessing_context="spawn")``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from monai.data import Dataset
from monai.transforms import Compose, apply_transform

from medicraft_monai.data.errors import OCTDataError
from medicraft_monai.data.io import LoadOCTImaged
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.engines.records import GeneratorError
from medicraft_monai.transforms import ScaleOCTIntensityd
from medicraft_monai.utils import fsync_dir, write_json_atomic

from .generation import load_generator
from .generator import DiffusionGenerator
from .job import SynthesisJob, synthetic_datalist_item
from .plan import IMAGES_DIR, ImageTask, plan_tasks, safe_class_name

__all__ = ["CACHE_RECORD", "SyntheticDataset", "synthetic_counts", "synthetic_training_dataset"]

logger = logging.getLogger(__name__)

CACHE_RECORD = "cache.json"
BLOCKS_JOURNAL = "blocks.jsonl"
LOCKS_DIR = ".locks"
_TMP_PID = re.compile(r"^\..+\.tmp(?P<pid>\d+)\.")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (made when missing), released on leaving or when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_transform() -> Compose:
    """What an item goes through when no transform is given: the B-scan read as a (1, H, W) MetaTensor (with the
    provenance in its meta) and scaled to [0, 1]."""
    return Compose([LoadOCTImaged(keys=OCTKeys.IMAGE), ScaleOCTIntensityd(keys=OCTKeys.IMAGE)])


class SyntheticDataset(Dataset):
    """Synthetic B-scans with labels, sampled on demand by a generator bundle and cached on disk (see the module).

    Args:
        bundle: a shipped generator bundle's name, a bundle folder, a release archive, or a loaded
            :class:`~medicraft_monai.synthesis.generator.DiffusionGenerator`.
        counts: images per class name (``{"DME": 200}``), or one number for every class of ``class_names``.
        cache_dir: the cache folder (made); the images live in a sub-folder per generator and settings.
        class_names: the label order of the items (a classifier's classes); default: the generator's. Every class
            with images must be one the generator knows.
        seed: the seed images derive from (as ``medicraft multiply --seed``).
        steps: sampling steps (default: the bundle's); ``guidance_scale``: classifier-free guidance (default: the
            bundle's).
        batch_size: the block size: images sampled together.
        cache_size: at most this many images on disk (least recently used removed first; at least ``batch_size``);
            None: no bound.
        transform: applied to each item ``{"image": path, "label", "class_name", "synthetic": True, "seed", ...}``
            once its file exists; default: :func:`default_transform`.
        device: where to sample (default: CUDA when available, else CPU).
        overrides: bundle config overrides.

    Raises:
        GeneratorError: a missing bundle or weights, a class the generator does not know.
        ValueError: a negative count, a bad ``batch_size`` or a ``cache_size`` below it.
    """

    def __init__(
        self,
        bundle: str | PathLike | DiffusionGenerator,
        counts: Mapping[str, int] | int,
        cache_dir: str | PathLike,
        class_names: Sequence[str] | None = None,
        seed: int = 0,
        steps: int | None = None,
        guidance_scale: float | None = None,
        batch_size: int = 8,
        cache_size: int | None = None,
        transform: Callable | None = None,
        device: str | torch.device | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if cache_size is not None and int(cache_size) < int(batch_size):
            raise ValueError(f"cache_size ({cache_size}) must hold at least one block of batch_size ({batch_size})")
        self.generator = load_generator(bundle, device=device, overrides=overrides)
        names = [str(c) for c in (class_names or self.generator.class_names)]
        wanted = {c: int(counts) for c in names} if isinstance(counts, (int, float)) else dict(counts)
        for name, n in wanted.items():
            if name not in names:
                raise GeneratorError(f"class {name!r} is not one of the dataset's class_names {names}")
            if isinstance(n, bool) or int(n) < 0 or int(n) != n:
                raise ValueError(f"count for class {name!r} must be a whole number >= 0, got {n!r}")
            if int(n) > 0:
                self.generator.class_index(name)  # a class the generator does not know: GeneratorError
        self.class_names = names
        self.counts = {c: int(wanted.get(c, 0)) for c in names}
        self.batch_size = int(batch_size)
        self.cache_size = None if cache_size is None else int(cache_size)
        self.seed = int(seed)
        self.job = SynthesisJob(
            self.generator,
            Path(cache_dir),
            steps=steps,
            guidance_scale=guidance_scale,
            job_seed=self.seed,
            batch_size=self.batch_size,
            name="medicraft-synthetic-dataset",
            progress=False,
        )
        self.root = Path(cache_dir) / f"{safe_class_name(Path(self.generator.bundle_root).name)}-{self.key()[:16]}"
        self.job.output_dir = self.root
        self.tasks = plan_tasks(self.counts, names, self.seed, "png")
        self.stats = {"generated": 0, "reused": 0}
        self._prepare_cache()
        items = [self._item(t) for t in self.tasks]
        super().__init__(items, transform=transform if transform is not None else default_transform())

    # ---------------------------------------------------------------------------------------------- the cache
    def identity(self) -> dict[str, Any]:
        """What the cached images depend on (the cache key is its SHA-256)."""
        gen = self.generator
        return {
            **self.job.identity(),
            "component_sha256": dict(sorted(gen.component_checksums.items())),
            "block_size": self.batch_size,
        }

    def key(self) -> str:
        """The SHA-256 of :meth:`identity`: the name of this dataset's cache folder."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()

    def _prepare_cache(self) -> None:
        """Make the cache folder and its record; remove temporary files that dead processes left."""
        record = self.root / CACHE_RECORD
        if not record.is_file():
            write_json_atomic(record, {**self.identity(), "bundle_root": self.generator.bundle_root}, sort_keys=True)
        images = self.root / IMAGES_DIR
        for folder in [p for p in images.glob("*") if p.is_dir()]:
            for leftover in folder.glob(".*.tmp*"):
                match = _TMP_PID.match(leftover.name)
                if match and not _alive(int(match["pid"])):
                    leftover.unlink(missing_ok=True)

    def _item(self, task: ImageTask) -> dict[str, Any]:
        """The datalist item of a task, less the fields it leaves empty (None does not collate into a batch)."""
        item = synthetic_datalist_item(
            str(self.root / task.relpath),
            task.label,
            task.class_name,
            f"synthetic-{safe_class_name(task.class_name)}-{task.index:06d}",
            seed=task.seed,
            model_sha256=self.generator.checksum,
        )
        return {k: v for k, v in item.items() if v is not None and v != ""}

    def _block(self, task: ImageTask) -> tuple[list[ImageTask], int]:
        """The whole block of ``batch_size`` consecutive indices of the task's class that holds it, and how many of
        them the dataset lists (the others are sampled, not written: the block's images stay the same whatever the
        count asked for)."""
        first = task.index // self.batch_size * self.batch_size
        tasks = plan_tasks({task.class_name: first + self.batch_size}, self.class_names, self.seed, "png")
        return tasks[first:], min(self.batch_size, self.counts[task.class_name] - first)

    def ensure(self, index: int) -> Path:
        """The file of item ``index``: read from the cache (its use recorded) or sampled with its block."""
        task = self.tasks[index]
        path = self.root / task.relpath
        if path.is_file():
            evicted = False
            try:
                os.utime(path)  # its last use, for the eviction of the least recently used
            except FileNotFoundError:  # removed by another process's eviction just now: sample it again
                evicted = True
            except OSError:  # a cache that cannot be written (read-only): read it as it is
                pass
            if not evicted:
                self.stats["reused"] += 1
                return path
        block, listed = self._block(task)
        lock = self.root / LOCKS_DIR / f"{safe_class_name(task.class_name)}-{task.index // self.batch_size}.lock"
        with _locked(lock):
            if not all((self.root / t.relpath).is_file() for t in block[:listed]):  # else another process made it
                self._sample(block, listed)
                self.stats["generated"] += 1
        self._evict(keep={self.root / t.relpath for t in block[:listed]})
        return path

    def _sample(self, block: Sequence[ImageTask], listed: int) -> None:
        gen = self.generator
        if gen.device.type == "cuda" and getattr(torch.cuda, "_is_in_bad_fork", lambda: False)():
            raise GeneratorError(
                f"{self.root}: a generator on {gen.device} cannot sample in a DataLoader worker forked after CUDA "
                "started; give the dataset device='cpu', num_workers=0, or multiprocessing_context='spawn'"
            )
        started = time.perf_counter()
        self.job.write_batch(block, count=listed)
        line = {
            "class_name": block[0].class_name,
            "block": block[0].index // self.batch_size,
            "indices": [block[0].index, block[listed - 1].index],
            "pid": os.getpid(),
            "rank": int(os.environ.get("RANK", "0")),
            "seconds": round(time.perf_counter() - started, 4),
        }
        fd = os.open(self.root / BLOCKS_JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())  # one write: lines never interleave
        finally:
            os.close(fd)

    def _evict(self, keep: set[Path]) -> None:
        """Remove the least recently used images beyond ``cache_size`` (never those in ``keep``)."""
        if self.cache_size is None:
            return
        with _locked(self.root / LOCKS_DIR / "evict.lock"):
            files = []
            for folder in [p for p in (self.root / IMAGES_DIR).glob("*") if p.is_dir()]:
                with os.scandir(folder) as entries:
                    for e in entries:
                        if e.is_file() and not e.name.startswith("."):
                            with contextlib.suppress(FileNotFoundError):
                                files.append((e.stat().st_mtime_ns, Path(e.path)))
            excess = len(files) - self.cache_size
            if excess <= 0:
                return
            files.sort()
            removed = [p for _, p in files if p not in keep][:excess]
            for p in removed:
                p.unlink(missing_ok=True)
            for folder in {p.parent for p in removed}:
                fsync_dir(folder)

    def blocks(self) -> list[dict[str, Any]]:
        """The blocks sampled into this cache so far (``blocks.jsonl``), by every process."""
        path = self.root / BLOCKS_JOURNAL
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # ---------------------------------------------------------------------------------------------- Dataset
    def _transform(self, index: int) -> Any:
        item = self.data[index]
        for _ in range(3):
            path = self.ensure(index)
            try:
                return apply_transform(self.transform, dict(item)) if self.transform is not None else dict(item)
            except (RuntimeError, OCTDataError, FileNotFoundError):
                if path.is_file():
                    raise
                # evicted between sampling and reading (a cache smaller than what the workers hold): sample again
        raise OCTDataError(path, "evicted from the synthetic cache three times while being read; raise cache_size")


def synthetic_counts(
    real_items: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    ratio: float | Mapping[str, float] = 0.0,
    counts: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Synthetic images per class for a training split: ``counts[c]`` where given, else ``ratio`` (one number or
    one per class) times the class's real images, rounded half up.

    Raises:
        ValueError: a negative or non-finite ratio or count, or a class that is not in ``class_names``.
    """
    names = [str(c) for c in class_names]
    real = {c: 0 for c in names}
    for item in real_items:
        if not item.get(OCTKeys.SYNTHETIC):
            real[names[int(item[OCTKeys.LABEL])]] += 1
    ratios = {c: ratio for c in names} if isinstance(ratio, (int, float)) else dict(ratio or {})
    given = dict(counts or {})
    for what, mapping in (("synthetic_ratio", ratios), ("synthetic_counts", given)):
        for name, value in mapping.items():
            if name not in real:
                raise ValueError(f"{what}: class {name!r} is not one of the class_names {names}")
            if isinstance(value, bool) or not math.isfinite(float(value)) or float(value) < 0:
                raise ValueError(f"{what}: the value for class {name!r} must be a number >= 0, got {value!r}")
    return {
        c: int(given[c]) if c in given else int(math.floor(float(ratios.get(c, 0.0)) * real[c] + 0.5)) for c in names
    }


def synthetic_training_dataset(
    bundle: str | PathLike | None,
    real_items: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    cache_dir: str | PathLike,
    ratio: float | Mapping[str, float] = 0.0,
    counts: Mapping[str, int] | None = None,
    **options: Any,
) -> SyntheticDataset | None:
    """The synthetic part of a training set (what a classifier bundle's ``synthetic_*`` keys build), or None when
    no bundle is given or no image is asked for. ``options`` go to :class:`SyntheticDataset` (``seed``, ``steps``,
    ``guidance_scale``, ``batch_size``, ``cache_size``, ``transform``, ``device``)."""
    if not bundle:
        return None
    wanted = synthetic_counts(real_items, class_names, ratio, counts)
    if not any(wanted.values()):
        logger.warning("synthetic_bundle %s is set but synthetic_ratio and synthetic_counts ask for no image", bundle)
        return None
    dataset = SyntheticDataset(bundle, wanted, cache_dir, class_names=class_names, **options)
    logger.info("synthetic training images from %s: %s (cache %s)", bundle, wanted, dataset.root)
    return dataset
