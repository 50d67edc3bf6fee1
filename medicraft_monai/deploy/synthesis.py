"""The work of the ``synthesize`` app: N synthetic B-scans per class from a generator bundle, marked and recorded.

The generator is loaded with :meth:`~medicraft_monai.synthesis.generator.DiffusionGenerator.from_bundle` (the one
code path every sampler in medicraft_monai uses); the images are planned with
:func:`~medicraft_monai.synthesis.plan.plan_tasks` and made by the one synthesis job that ``medicraft multiply``
runs (:class:`~medicraft_monai.synthesis.job.SynthesisJob`: padded batches, journal and resume, PNG with provenance
text, NIfTI, or DICOM with ImageType DERIVED\\SECONDARY and a SYNTHETIC series description). Under the output
folder::

    images/<class>/synthetic_<class>_<index>_s<seed>.png   one file per image
    manifest.jsonl, manifest.csv                           one record per image (and the same as a table)
    job.json, .manifest_parts/                             the job's identity and journal (for resuming)
    synthesis.json                                         the request, the model, counts per class

A rerun of the same job (model, seed, steps, guidance, format) skips the images already there and makes the same
images an uninterrupted run makes; a larger ``num_images_per_class`` only adds images.

The request (:class:`SynthesisRequest`) comes from, lowest priority first: the defaults, ``MEDICRAFT_SYNTH_*``
environment variables (e.g. ``MEDICRAFT_SYNTH_NUM_IMAGES_PER_CLASS=8``), and a ``synthesis_request.json`` in the
input folder (or the input file itself, when it is a JSON file).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path
from typing import Any

from medicraft_monai.engines.records import GeneratorError
from medicraft_monai.schedulers import SAMPLERS
from medicraft_monai.synthesis.generator import DiffusionGenerator
from medicraft_monai.synthesis.job import MANIFEST_CSV, MANIFEST_JSONL, SynthesisJob, check_output_dir
from medicraft_monai.synthesis.plan import IMAGES_DIR, plan_tasks
from medicraft_monai.synthesis.writers import check_format
from medicraft_monai.utils import write_json_atomic

__all__ = [
    "ENV_PREFIX",
    "REQUEST_FILE",
    "SynthesisRequest",
    "load_generator",
    "resolve_bundle",
    "synthesize",
]

logger = logging.getLogger(__name__)

REQUEST_FILE = "synthesis_request.json"
ENV_PREFIX = "MEDICRAFT_SYNTH_"
APP_NAME = "medicraft_monai.deploy.synthesize"


@dataclass
class SynthesisRequest:
    """What to synthesise.

    Attributes:
        num_images_per_class: images per class (N).
        classes: class names (default: all the generator's classes).
        seed: the job's seed (image ``i`` of class ``c`` gets ``image_seed(seed, c, i)``, as in ``medicraft multiply``).
        num_inference_steps: sampling steps (default: the bundle's; with ``sampler``, that sampler's default).
        sampler: a name of :data:`~medicraft_monai.schedulers.SAMPLERS` (default: the bundle's), e.g. "distilled"
            for the distilled few-step student of a bundle that ships one.
        guidance_scale: classifier-free guidance weight (default: the bundle's).
        format: "png", "nifti" or "dicom".
        bit_depth: 8 or 16.
        batch_size: images sampled together (memory only; images do not depend on it).
    """

    num_images_per_class: int = 4
    classes: list[str] | None = None
    seed: int = 0
    num_inference_steps: int | None = None
    sampler: str | None = None
    guidance_scale: float | None = None
    format: str = "png"
    bit_depth: int = 8
    batch_size: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.classes, str):
            self.classes = [c.strip() for c in self.classes.split(",") if c.strip()]
        self.num_images_per_class = int(self.num_images_per_class)
        self.seed = int(self.seed)
        self.batch_size = int(self.batch_size)
        if self.num_inference_steps is not None:
            self.num_inference_steps = int(self.num_inference_steps)
        if self.guidance_scale is not None:
            self.guidance_scale = float(self.guidance_scale)
        if self.sampler in ("", None):
            self.sampler = None
        elif str(self.sampler) not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; known: {sorted(SAMPLERS)}")
        else:
            self.sampler = str(self.sampler)
        self.format, self.bit_depth = check_format(self.format, int(self.bit_depth))
        if self.num_images_per_class < 0:
            raise ValueError(f"num_images_per_class must be >= 0, got {self.num_images_per_class}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")

    @classmethod
    def from_sources(
        cls, input_path: str | PathLike | None = None, environ: Mapping[str, str] | None = None
    ) -> SynthesisRequest:
        """The request from the environment (``MEDICRAFT_SYNTH_<FIELD>``) and a request JSON in the input, which wins.

        Raises:
            ValueError: an unknown key, a bad value, or a request file that is not a JSON object (named).
        """
        env = os.environ if environ is None else environ
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for name in names:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw not in (None, ""):
                values[name] = raw
        request_file = _request_file(input_path)
        if request_file is not None:
            try:
                data = json.loads(request_file.read_text())
            except ValueError as err:
                raise ValueError(f"{request_file}: not valid JSON ({err})") from err
            if not isinstance(data, dict):
                raise ValueError(f"{request_file}: a request must be a JSON object with keys {sorted(names)}")
            unknown = sorted(set(data) - names)
            if unknown:
                raise ValueError(f"{request_file}: unknown request key(s) {unknown}; known: {sorted(names)}")
            values.update(data)
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            where = request_file or "MEDICRAFT_SYNTH_* environment"
            raise ValueError(f"{where}: {err}") from err


def _request_file(input_path: str | PathLike | None) -> Path | None:
    if input_path is None:
        return None
    path = Path(input_path)
    if path.is_file() and path.suffix.lower() == ".json":
        return path
    if path.is_dir() and (path / REQUEST_FILE).is_file():
        return path / REQUEST_FILE
    return None


def resolve_bundle(model_path: str | PathLike) -> Path:
    """The generator bundle behind ``model_path``: the folder itself when it holds ``configs/inference.json``, or the
    one sub-folder that does (a MAP's model folder).

    Raises:
        GeneratorError: no bundle, or several, found.
    """
    path = Path(model_path)
    if (path / "configs" / "inference.json").is_file():
        return path
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if (p / "configs" / "inference.json").is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise GeneratorError(f"{path}: holds {len(found)} bundles ({[p.name for p in found]}); give one with -m")
    raise GeneratorError(f"{path}: not a generator bundle (no configs/inference.json here or in one sub-folder)")


def load_generator(
    model_path: str | PathLike, request: SynthesisRequest, device: str | None = None
) -> DiffusionGenerator:
    """The generator of the bundle behind ``model_path`` (:func:`resolve_bundle`), with the request's sampler.

    A bundle's ``inference.json`` picks the weights and the step count that go with its sampler (``sampler:
    distilled`` loads the distilled student's weights and its steps); weights made for one sampler refuse another.

    Raises:
        GeneratorError: no bundle, missing weights, or weights that refuse the requested sampler (the message names
            the file and the override that fixes it).
    """
    overrides = {"sampler": request.sampler} if request.sampler else None
    return DiffusionGenerator.from_bundle(resolve_bundle(model_path), device=device, overrides=overrides)


def synthesize(
    generator: DiffusionGenerator, request: SynthesisRequest, output_dir: str | PathLike, progress: bool = True
) -> dict[str, Any]:
    """Sample and write the images ``request`` asks for, with a manifest and a summary.

    Returns:
        the summary written to ``synthesis.json`` (``request``, ``model``, ``counts``, ``generated``, ``skipped``,
        ``manifest``, ``manifest_csv``, ``images``), with ``records`` (the manifest's records) added.

    Raises:
        GeneratorError: an unknown class.
        OCTDataError: an output folder that cannot be written or that holds another job's images.
    """
    out = Path(output_dir)
    classes = [generator.class_names[generator.class_index(c)] for c in (request.classes or generator.class_names)]
    check_output_dir(out)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    job = SynthesisJob(
        generator,
        out,
        steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        fmt=request.format,
        bit_depth=request.bit_depth,
        job_seed=request.seed,
        batch_size=request.batch_size,
        name=APP_NAME,
        provenance_extra={"app": APP_NAME, "created": created},
        progress=progress,
    )
    job.check_job({"class_names": list(generator.class_names), "app": APP_NAME})
    tasks = plan_tasks(
        dict.fromkeys(classes, request.num_images_per_class), generator.class_names, request.seed, job.fmt
    )
    stats = job.run(tasks)
    records = job.finalize(tasks)
    counts = {c: sum(1 for r in records if r["class_name"] == c) for c in classes}
    summary = {
        "app": APP_NAME,
        "synthetic": True,
        "created": created,
        "request": asdict(request),
        "model": {
            "bundle": Path(generator.bundle_root).resolve().name,
            "bundle_root": generator.bundle_root,
            "sha256": generator.checksum,
            "class_names": list(generator.class_names),
            "sampler": generator.sampler,
            "steps": job.steps,
            "guidance_scale": job.guidance_scale,
            "image_shape": list(generator.image_shape),
        },
        "counts": counts,
        "total": len(records),
        "generated": stats["generated"],
        "skipped": stats["skipped"],
        "images": IMAGES_DIR,
        "manifest": MANIFEST_JSONL,
        "manifest_csv": MANIFEST_CSV,
    }
    write_json_atomic(out / "synthesis.json", summary)
    logger.info(
        "synthesised %d image(s) (%d already there) of %s under %s", stats["generated"], stats["skipped"], counts, out
    )
    return {**summary, "records": records}
