"""MONAI Label train task ``finetune``: fine-tune the generator bundle on real plus expert-accepted images.

Runs the generator bundle's own fine-tuning route (``configs/common.json`` + ``configs/train.json`` +
``configs/finetune.json``) with ``python -m monai.bundle run`` in a subprocess (its log next to the run), with the
weights in use as the parent (``parent_ckpt_path``) and the run's ``models/`` folder as ``ckpt_dir``, and publishes
the result for the ``synthesize`` task. The new weights' ``diffusion.json`` records the parent's checksum
(``parent.model_sha256``); the task's answer and the published pointer carry it as ``parent_sha256``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.train import TrainTask

from medicraft_monai.bundles import config_files
from medicraft_monai.engines.finetune import ParentGenerator
from medicraft_monai.engines.records import DIFFUSION_SETTINGS_FILE, GeneratorError
from medicraft_monai.label.export import accepted_items, load_reviews
from medicraft_monai.label.finetune import build_finetune_datalist, finetune_command
from medicraft_monai.label.lib.infers import CURRENT_GENERATOR, current_generator_ckpt
from medicraft_monai.utils import file_sha256, write_json_atomic

logger = logging.getLogger(__name__)

__all__ = ["FinetuneGenerator"]

_SCALARS = (str, int, float, bool)
#: config keys the task sets itself (a request may not give them)
_TASK_KEYS = ("datalist", "ckpt_dir", "log_dir", "parent_ckpt_path", "bundle_root", "class_names")


class FinetuneGenerator(TrainTask):
    """Fine-tune the generator on real + accepted images and publish the new weights.

    Request params (``POST /train/finetune`` JSON body): ``real_datalist`` (a datalist of real images in the
    project's format; default: the app's ``real_datalist`` conf), ``rule`` (how reviewers combine), ``publish``
    (default true: later ``synthesize`` calls use the new weights), ``timeout_s`` (the run is killed after it),
    and any train.json or finetune.json key with a scalar value, e.g. ``max_epochs``, ``max_minutes`` (a clean
    stop with the weights saved), ``learning_rate`` (finetune.json's default 1e-4), ``freeze_encoder_epochs``,
    ``batch_size`` (passed as ``--key value``), or ``overrides`` (a mapping of further keys). The task sets
    ``datalist``, ``parent_ckpt_path`` (the weights in use), ``ckpt_dir``, ``log_dir`` and ``class_names`` (the
    generator's: the run fine-tunes on the same classes) itself; a request giving one of them gets HTTP 422.

    Args:
        bundle_root: the generator bundle.
        studies: the studies folder (reviews, and ``.medicraft/finetune/<time>/`` for each run).
        class_names: the generator's classes in label order.
        ckpt_path: the weights used until a fine-tuned model is published (a ``diffusion.json`` must be beside
            them, as training writes it).
        real_datalist: default datalist of real images.
        bundle_overrides: config overrides of every run (the app's ``generator_overrides``: the network
            settings that match the weights).
        defaults: default request params (e.g. ``{"max_epochs": 20}``).
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike,
        studies: str | os.PathLike,
        class_names: list[str],
        ckpt_path: str | os.PathLike | None,
        real_datalist: str | os.PathLike | None = None,
        bundle_overrides: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__("Fine-tune the generator bundle on real plus expert-accepted synthetic images")
        self.bundle_root = Path(bundle_root).resolve()
        self.studies = Path(studies).resolve()
        self.class_names = list(class_names)
        self.ckpt_path = None if ckpt_path is None else Path(ckpt_path).resolve()
        self.real_datalist = real_datalist
        self.defaults = dict(defaults or {})
        self.bundle_overrides = dict(bundle_overrides or {})
        self._last: dict[str, Any] = {}
        self._lock = threading.Lock()

    def config(self) -> dict[str, Any]:
        return {"max_epochs": 10, "max_minutes": 0, "rule": "unanimous", "publish": True, **self.defaults}

    def stats(self) -> dict[str, Any]:
        return dict(self._last)

    def _start_ckpt(self) -> Path:
        ckpt = current_generator_ckpt(self.studies) or self.ckpt_path
        if ckpt is None:
            from monai.bundle import ConfigParser

            parser = ConfigParser()
            parser.read_config([str(p) for p in config_files(self.bundle_root, "inference.json")])
            parser["bundle_root"] = str(self.bundle_root)
            ckpt = Path(parser.get_parsed_content("ckpt_path"))
        return Path(ckpt)

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any]:
        if not self._lock.acquire(blocking=False):
            raise HTTPException(status_code=409, detail="a fine-tuning run is already in progress")
        try:
            return self._run(request)
        finally:
            self._lock.release()

    def _run(self, request: Mapping[str, Any]) -> dict[str, Any]:
        params = {**self.config(), **{k: v for k, v in request.items() if v is not None}}
        rule = str(params.pop("rule", "unanimous"))
        publish = str(params.pop("publish", True)).lower() not in ("false", "0", "no")
        timeout = float(params.pop("timeout_s", 24 * 3600))
        real = params.pop("real_datalist", None) or self.real_datalist
        extra = dict(params.pop("overrides", None) or {})
        for key in ("model", "device", "bundle_path", "client_id", "name"):
            params.pop(key, None)
        given = sorted(k for k in (*params, *extra) if k in _TASK_KEYS)
        if given:
            raise HTTPException(status_code=422, detail=f"{given}: set by the finetune task itself, not by a request")
        overrides = dict(self.bundle_overrides)
        overrides.update({k: v for k, v in params.items() if isinstance(v, _SCALARS)})
        overrides.update(extra)

        start = self._start_ckpt()
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        run_dir = self.studies / ".medicraft" / "finetune" / stamp
        try:  # what finetune.json refuses (no diffusion.json beside the weights...), answered before any work
            parent = ParentGenerator(start, run_dir / "models")
        except GeneratorError as err:
            raise HTTPException(status_code=422, detail=f"cannot fine-tune the weights in use: {err}") from None
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            items, _ = accepted_items(load_reviews(self.studies, rule), self.class_names)
            datalist, counts = build_finetune_datalist(real, items, self.class_names, run_dir / "datalist.json")
        except ValueError as err:  # OCTDataError, UnknownLabelError
            raise HTTPException(status_code=422, detail=str(err)) from None
        overrides.update(datalist=str(datalist), log_dir=str(run_dir / "logs"), class_names=list(self.class_names))
        cmd = finetune_command(self.bundle_root, start, run_dir / "models", overrides)
        log_path = run_dir / "train.log"
        logger.info("fine-tuning: %s", " ".join(cmd))
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                code = -9
        model = run_dir / "models" / "model.pt"
        result = {
            "run_dir": str(run_dir),
            "log": str(log_path),
            "started_from": str(start),
            "started_from_sha256": parent.sha256,
            "returncode": code,
            **counts,
        }
        if code != 0 or not model.is_file():
            tail = log_path.read_text()[-3000:]
            self._last = {**result, "status": "failed"}
            raise HTTPException(status_code=500, detail=f"fine-tuning failed (exit {code}), see {log_path}:\n{tail}")
        result.update(
            model=str(model),
            model_sha256=file_sha256(model),
            parent_sha256=_recorded_parent_sha256(model.parent / DIFFUSION_SETTINGS_FILE),
            published=publish,
            status="done",
        )
        if publish:
            pointer = self.studies / CURRENT_GENERATOR
            record = {"ckpt": str(model), "sha256": result["model_sha256"], "parent_sha256": result["parent_sha256"]}
            write_json_atomic(pointer, {**record, "run": stamp}, indent=None)
        self._last = result
        logger.info("fine-tuning done: %s", result)
        return result


def _recorded_parent_sha256(settings_file: Path) -> str | None:
    """The parent checksum the fine-tuned weights' ``diffusion.json`` records (``parent.model_sha256``)."""
    try:
        parent = json.loads(settings_file.read_text()).get("parent")
    except (OSError, ValueError, AttributeError):
        return None
    return parent.get("model_sha256") if isinstance(parent, dict) else None
