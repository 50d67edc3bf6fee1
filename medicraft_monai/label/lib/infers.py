"""MONAI Label infer tasks: ``synthesize`` (class-conditioned generation into the datastore) and ``classify``.

Both are :class:`~monailabel.tasks.infer.basic_infer.BasicInferTask` subclasses (MONAI Label's own bundle task needs
torchvision, which cannot be used with the CPU build of torch here). Parameter errors answer HTTP 422 (the server's
default for an exception would be 500).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from medicraft_monai.engines.records import GeneratorError
from medicraft_monai.networks.bundle import bundle_preprocessing, load_bundle_network
from medicraft_monai.synthesis.generator import DiffusionGenerator
from medicraft_monai.synthesis.job import SynthesisJob
from medicraft_monai.synthesis.plan import ImageTask, safe_class_name

logger = logging.getLogger(__name__)

__all__ = ["ClassifyTask", "SynthesizeTask", "current_generator_ckpt", "synthetic_image_id"]

CURRENT_GENERATOR = ".medicraft/generator_current.json"
"""File in the studies folder naming the generator weights to use (written by the fine-tuning train task)."""


def _unprocessable(detail: str) -> HTTPException:
    return HTTPException(status_code=422, detail=detail)


def _int_param(params: Mapping[str, Any], key: str, default: int | None, low: int, high: int) -> int | None:
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _unprocessable(f"{key!r} must be an integer in [{low}, {high}], got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise _unprocessable(f"{key!r} must be an integer in [{low}, {high}], got {value!r}") from None
    if not math.isfinite(number) or number != int(number) or not low <= int(number) <= high:
        raise _unprocessable(f"{key!r} must be an integer in [{low}, {high}], got {value!r}")
    return int(number)


def _float_param(params: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = params.get(key)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _unprocessable(f"{key!r} must be a number in [{low}, {high}], got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or not low <= number <= high:
        raise _unprocessable(f"{key!r} must be a number in [{low}, {high}], got {value!r}")
    return number


def synthetic_image_id(class_name: str, seed: int, model_sha256: str, steps: int, guidance: float, sampler: str) -> str:
    """The datastore id of a synthetic image: the same model, class, seed and settings give the same image and id."""
    key = json.dumps([model_sha256, class_name, int(seed), int(steps), float(guidance), sampler])
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"synthetic_{safe_class_name(class_name)}_s{int(seed)}_{digest}"


def current_generator_ckpt(studies: str | os.PathLike) -> Path | None:
    """The weights the fine-tuning task published for this studies folder (None: use the bundle's own)."""
    pointer = Path(studies) / CURRENT_GENERATOR
    if not pointer.is_file():
        return None
    try:
        ckpt = Path(json.loads(pointer.read_text())["ckpt"])
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("%s: unreadable, using the bundle's generator weights", pointer)
        return None
    return ckpt if ckpt.is_file() else None


class SynthesizeTask(BasicInferTask):
    """Generate class-conditioned synthetic B-scans and register them as unreviewed images in the datastore.

    Request ``params``: ``class`` (name or index, required), ``count`` (1..``max_count``, default 1), ``seed``
    (default: random; image ``i`` uses ``seed + i``), ``guidance_scale``, ``steps``. The response carries the first
    image (PNG) and JSON with every new image id and its provenance. The ``image`` argument MONAI Label's ``/infer``
    requires is ignored (pass any placeholder, e.g. ``new``).

    Args:
        bundle_root: the generator bundle (see :class:`~medicraft_monai.synthesis.generator.DiffusionGenerator`).
        datastore: where new images go (the app's :class:`ReviewDatastore`).
        ckpt_path: weights (default: the bundle's ``ckpt_path``); weights published by fine-tuning win.
        device: where to sample.
        max_count: most images per request.
        max_steps: most sampling steps per request.
        overrides: generator config overrides (e.g. ``{"num_inference_steps": 10}``).
        on_registered: called with the ids of the images each request added to the datastore (the app scores
            them: :class:`~medicraft_monai.label.lib.scoring.ScoreSynthetic`).
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike,
        datastore: Any,
        ckpt_path: str | os.PathLike | None = None,
        device: str = "cpu",
        max_count: int = 16,
        max_steps: int = 1000,
        overrides: Mapping[str, Any] | None = None,
        on_registered: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.bundle_root = Path(bundle_root).resolve()
        self.datastore = datastore
        self.ckpt_path = None if ckpt_path is None else Path(ckpt_path).resolve()
        self.device = device
        self.max_count = int(max_count)
        self.max_steps = int(max_steps)
        self.overrides = dict(overrides or {})
        self.on_registered = on_registered
        self._lock = threading.Lock()
        self._loaded_ckpt: Path | None = None
        self.generator = self._load(self._wanted_ckpt())
        super().__init__(
            path=None,
            network=self.generator.network,
            type=InferType.OTHERS,
            labels=list(self.generator.class_names),
            dimension=2,
            description=f"Class-conditioned synthetic OCT B-scans from the {self.bundle_root.name} bundle "
            "(params: class, count, seed, guidance_scale, steps); new images are stored unreviewed",
            config={  # request defaults (MONAI Label clients show them as options); class and seed have none
                "count": 1,
                "guidance_scale": self.generator.guidance_scale,
                "steps": self.generator.num_inference_steps,
            },
        )
        self._config["device"] = [device]

    # ------------------------------------------------------------------------------------------------- model
    def _wanted_ckpt(self) -> Path | None:
        published = current_generator_ckpt(self.datastore.studies_path())
        return published or self.ckpt_path

    def _load(self, ckpt: Path | None) -> DiffusionGenerator:
        gen = DiffusionGenerator.from_bundle(
            self.bundle_root, ckpt_path=ckpt, device=self.device, overrides=self.overrides
        )
        self._loaded_ckpt = ckpt
        logger.info("generator %s loaded (sha256 %s)", ckpt or self.bundle_root, gen.checksum[:12])
        return gen

    def _current(self) -> DiffusionGenerator:
        wanted = self._wanted_ckpt()
        if wanted != self._loaded_ckpt:
            self.generator = self._load(wanted)
            self.network = self.generator.network
        return self.generator

    def is_valid(self) -> bool:
        return self.generator is not None

    # ------------------------------------------------------------------------------------------------- steps
    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        return []

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        return []

    def _params(self, data: Mapping[str, Any], gen: DiffusionGenerator) -> dict[str, Any]:
        name = data.get("class", data.get("class_name"))
        if name is None or name == "":
            raise _unprocessable(f"'class' is required: one of {gen.class_names}")
        try:
            index = gen.class_index(int(name) if isinstance(name, int) and not isinstance(name, bool) else str(name))
        except GeneratorError:
            raise _unprocessable(f"unknown class {name!r}; this generator knows {gen.class_names}") from None
        count = _int_param(data, "count", 1, 1, self.max_count)
        seed = _int_param(data, "seed", None, 0, 2**31 - 1 - self.max_count)
        steps = _int_param(data, "steps", gen.num_inference_steps, 1, self.max_steps)
        guidance = _float_param(data, "guidance_scale", 0.0, 100.0)
        return {
            "class_name": gen.class_names[index],
            "count": count,
            "seed": secrets.randbelow(2**31 - 1 - self.max_count) if seed is None else seed,
            "steps": steps,
            "guidance_scale": gen.guidance_scale if guidance is None else guidance,
        }

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu") -> dict[str, Any]:
        """Sample and write the requested images into a temporary folder with the one synthesis job (one batch)."""
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with self._lock:
            gen = self._current()
            p = self._params(data, gen)
            seeds = [p["seed"] + i for i in range(p["count"])]
            label = gen.class_names.index(p["class_name"])
            folder = Path(tempfile.mkdtemp(prefix="medicraft_synth_"))
            job = SynthesisJob(
                gen,
                folder,
                steps=p["steps"],
                guidance_scale=p["guidance_scale"],
                job_seed=p["seed"],
                batch_size=len(seeds),
                name="medicraft-label",
                provenance_extra={
                    "class_names": list(gen.class_names),
                    "label": label,
                    "bundle_root": str(gen.bundle_root),
                    "created": created,
                },
                progress=False,
            )
            tasks = [
                ImageTask(
                    p["class_name"],
                    label,
                    i,
                    seed,
                    f"{synthetic_image_id(p['class_name'], seed, gen.checksum, job.steps, job.guidance_scale, gen.sampler)}.png",
                )  # fmt: skip
                for i, seed in enumerate(seeds)
            ]
            try:
                data["records"] = job.write_batch(tasks)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            data["folder"] = str(folder)
            data["provenance"] = [job.provenance(t) for t in tasks]
            data["synthesis"] = {**p, "seeds": seeds}
        return data

    def writer(self, data: Mapping[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[str, dict]:
        """Register the written images as unreviewed images of the datastore; answer the first one's PNG."""
        folder = Path(data["folder"])
        ids, added, records, result_file = [], [], [], None
        try:
            for rec, prov in zip(data["records"], data["provenance"]):
                path = folder / rec["path"]
                image_id = path.name[: -len(".png")]
                info = {
                    "synthetic": True,
                    "class_name": prov["class_name"],
                    "label": prov["label"],
                    "provenance": prov,
                    "sha256": rec["sha256"],
                    "height": rec["height"],
                    "width": rec["width"],
                }
                if self.datastore.has_image(image_id):
                    logger.info("%s exists already (same model, class, seed and settings): kept", image_id)
                else:
                    self.datastore.add_image(image_id, str(path), info)
                    added.append(image_id)
                ids.append(image_id)
                records.append({"image": image_id, **info})
                if result_file is None:
                    fd, result_file = tempfile.mkstemp(suffix=".png", prefix="synthetic_")
                    os.close(fd)
                    shutil.copyfile(path, result_file)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if added and self.on_registered is not None:
            self.on_registered(added)
        return result_file, {"images": ids, "image": ids[0], "records": records, **data["synthesis"]}


class ClassifyTask(BasicInferTask):
    """Classify any image of the datastore with a classifier bundle (``oct_classifier``).

    The bundle's ``configs/inference.json`` defines ``network_def``, ``class_names``, ``ckpt_path`` and
    ``preprocessing`` (applied to ``{"image": path}``). The result JSON: ``prediction`` (class name),
    ``class_index`` and ``probabilities`` per class.

    Args:
        bundle_root: the classifier bundle.
        ckpt_path: weights (default: the bundle's ``ckpt_path``).
        device: where to run.
        overrides: config overrides (e.g. ``{"class_names": [...]}`` or ``{"datalist": path}``).
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike,
        ckpt_path: str | os.PathLike | None = None,
        device: str = "cpu",
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            loaded = load_bundle_network(
                Path(bundle_root).resolve(), ckpt_path, overrides=overrides, device=device, what="classifier bundle"
            )
        except FileNotFoundError as err:
            raise GeneratorError(f"{err}; give classifier_bundle and classifier_ckpt") from None
        for key in ("class_names", "preprocessing"):
            if key not in loaded.parser:
                raise GeneratorError(f"{loaded.config_path}: the classifier config has no {key!r} key")
        self.class_names = [str(c) for c in loaded.parser.get_parsed_content("class_names")]
        self.preprocessing = bundle_preprocessing(loaded.parser)
        self.checksum = loaded.checksum
        self.bundle_root = loaded.bundle_root
        super().__init__(
            path=None,  # the weights are already in the network (the one checkpoint loader read them)
            network=loaded.network,
            type=InferType.CLASSIFICATION,
            labels=self.class_names,
            dimension=2,
            description=f"Classify an OCT B-scan with the {self.bundle_root.name} bundle ({', '.join(self.class_names)})",
            load_strict=True,
        )
        self._config["device"] = [device]

    def _preprocess(self, data: dict[str, Any]) -> dict[str, Any]:
        out = self.preprocessing({"image": data["image"]})
        data["image"] = out["image"]
        return data

    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        return [self._preprocess]

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        return []

    def writer(self, data: Mapping[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[None, dict]:
        logits = torch.as_tensor(data["pred"]).float().reshape(-1)
        probs = torch.softmax(logits, dim=0).tolist()
        index = int(np.argmax(probs))
        return None, {
            "prediction": self.class_names[index],
            "class_index": index,
            "probabilities": {c: round(float(p), 6) for c, p in zip(self.class_names, probs)},
            "model_sha256": self.checksum,
            "bundle": self.bundle_root.name,
        }
