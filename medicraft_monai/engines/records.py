"""Training records written next to the weights, and their checks: one base writer for the sidecar JSON files.

Weights alone do not say how to sample them. Training therefore writes, when it starts, a small JSON record next to
``model.pt`` with an ignite handler of the :class:`TrainingRecordWriter` family:

- :class:`DiffusionSettingsWriter` writes ``diffusion.json`` (prediction type, noise schedule, timesteps, classes,
  image size), which :func:`check_diffusion_settings` compares with the settings a config samples (or resumes
  training) with;
- :class:`LatentInfoWriter` writes ``latent.json`` (the latent scale factor and the autoencoder's checksum), which
  :func:`read_latent_info` reads back for latent sampling.

Whoever loads the weights (the generator in :mod:`medicraft_monai.synthesis`, a resumed training run) checks these
records and raises :class:`GeneratorError` when they do not fit.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medicraft_monai.data.latent_cache import LatentCache
from medicraft_monai.utils import file_sha256, to_jsonable, write_json_atomic

__all__ = [
    "DIFFUSION_SETTINGS_FILE",
    "LATENT_INFO_FILE",
    "DiffusionSettingsWriter",
    "GeneratorError",
    "LatentInfoWriter",
    "TrainingRecordWriter",
    "check_diffusion_settings",
    "read_latent_info",
]

logger = logging.getLogger(__name__)

#: the file diffusion training writes next to its weights (:class:`DiffusionSettingsWriter`)
DIFFUSION_SETTINGS_FILE = "diffusion.json"
#: the file latent diffusion training writes next to its weights (:class:`LatentInfoWriter`)
LATENT_INFO_FILE = "latent.json"


class GeneratorError(ValueError):
    """A generator bundle, checkpoint or training record that cannot be used (missing, mismatched or malformed).

    Raised where weights are loaded for sampling (:class:`~medicraft_monai.synthesis.DiffusionGenerator`) and where
    their training records are checked (here, also when a training run resumes).
    """


class TrainingRecordWriter:
    """Base of the training-record handlers: write a JSON record next to the weights when training starts.

    Subclasses say what the record holds (:meth:`record`) and may check an existing record first
    (:meth:`check_existing`); this base attaches to ``Events.STARTED``, writes the file atomically
    (:func:`~medicraft_monai.utils.write_json_atomic`) and logs it.

    Args:
        path: the JSON file (``models/<name>.json``).
    """

    #: what the record is, for the log
    description = "training record"

    def __init__(self, path: str | PathLike) -> None:
        self.path = Path(path)

    def record(self) -> dict[str, Any]:
        """The JSON-able record to write."""
        raise NotImplementedError

    def check_existing(self) -> None:
        """Called before writing when the file exists (default: nothing to check)."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if self.path.is_file():
            self.check_existing()
        write_json_atomic(self.path, self.record())
        logger.info("%s written to %s", self.description, self.path)


class DiffusionSettingsWriter(TrainingRecordWriter):
    """Write the settings a diffusion model is trained with (``diffusion.json``) when training starts.

    Weights sampled with another prediction type, noise schedule, number of training timesteps or class list than
    they were trained with give pure noise without any error; sampling therefore reads this file back
    (:func:`check_diffusion_settings`) and refuses a config that differs. Write it next to ``model.pt`` (the
    bundles' ``@ckpt_dir``). The file is replaced atomically.

    Args:
        path: the JSON file (``models/diffusion.json``).
        settings: JSON-able values (tuples are written as lists), e.g. ``{"prediction_type": "v_prediction",
            "noise_schedule": "linear_beta", "num_train_timesteps": 1000, "class_names": [...], "image_size":
            [128, 256]}``.
        resume: the run resumes from a checkpoint (the bundles' ``resume`` key). Then a ``diffusion.json``
            already there must hold the same settings: resuming weights trained with another prediction type,
            schedule or class list would mix two trainings and overwrite the record of the first, so training
            stops before the first iteration with an error that names the differing keys.

    Raises:
        TypeError: a setting that cannot be written as JSON.
        GeneratorError: (when training starts) resuming with settings other than the recorded ones.
    """

    description = "diffusion settings"

    def __init__(self, path: str | PathLike, settings: Mapping[str, Any], resume: bool = False) -> None:
        super().__init__(path)
        self.resume = bool(resume)
        # fails when the config is parsed, not when training starts
        self.settings = to_jsonable(dict(settings), where="settings")
        json.dumps(self.settings)

    def record(self) -> dict[str, Any]:
        return self.settings

    def check_existing(self) -> None:
        if self.resume:
            check_diffusion_settings(
                self.path.parent, self.settings, use="resumes training with", settings_file=self.path
            )


class LatentInfoWriter(TrainingRecordWriter):
    """Write ``latent.json`` (scale factor, autoencoder checksum, latent shape) when training starts.

    Inference reads it (:func:`read_latent_info`), so sampling divides by the same scale factor the diffusion model
    was trained with, and refuses an autoencoder other than the one that encoded the training latents.

    Args:
        path: the JSON file (``models/latent.json``).
        cache: the training split's :class:`~medicraft_monai.data.latent_cache.LatentCache`.
        scale_factor: the scale factor the diffusion model is trained with (default: the cache's own; a fine-tuning
            run keeps its parent's, :meth:`~medicraft_monai.engines.finetune.ParentGenerator.latent_info`).
    """

    description = "latent scale factor"

    def __init__(self, path: str | PathLike, cache: LatentCache, scale_factor: float | None = None) -> None:
        super().__init__(path)
        self.cache = cache
        self.scale_factor = None if scale_factor is None else float(scale_factor)

    def info(self) -> dict[str, Any]:
        return {
            "scale_factor": self.cache.scale_factor if self.scale_factor is None else self.scale_factor,
            "autoencoder_sha256": self.cache.autoencoder_sha256,
            "latent_shape": [int(s) for s in self.cache.mu.shape[2:]],
            "num_training_images": len(self.cache),
            "latent_cache": self.cache.path.name,
        }

    def record(self) -> dict[str, Any]:
        return self.info()


_warned_unchecked: set[str] = set()


def _comparable(key: str, value: Any) -> Any:
    """A setting in the form it is compared in: class names as str, the image size as int, numbers as float."""
    if key == "class_names":
        return [str(c) for c in value]
    if key == "image_size":
        return [int(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float, np.number)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _comparable("", v) for k, v in value.items()}
    if isinstance(value, (Sequence, np.ndarray, torch.Tensor)):
        return [_comparable("", v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _cli_value(value: Any) -> str:
    """How a value is given on the ``monai.bundle run`` command line."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return f'"{value!r}"'
    return repr(value)


def check_diffusion_settings(
    ckpt_path: str | PathLike,
    expected: Mapping[str, Any],
    use: str = "samples with",
    settings_file: str | PathLike | None = None,
) -> dict[str, Any] | None:
    """Check that weights were trained with the settings a config samples with.

    Reads ``diffusion.json`` in the checkpoint's folder (written by
    :class:`DiffusionSettingsWriter` when training starts) and compares every key present
    both there and in ``expected``: ``class_names`` as lists of str, ``image_size`` as lists of int, numbers as
    float. Weights sampled with another prediction type, noise schedule, number of training timesteps or class list
    give pure noise without any other error, hence the check.

    Args:
        ckpt_path: the weights (``models/model.pt``).
        expected: the config's settings (its ``diffusion_settings``).
        use: what the config does with the weights, for the message ("samples with", "resumes training with").
        settings_file: the settings file (default: ``diffusion.json`` in the checkpoint's folder).

    Returns:
        the recorded settings, or ``None`` when there is no ``diffusion.json`` (weights trained before it existed:
        a warning, once per folder, says they cannot be checked).

    Raises:
        GeneratorError: a malformed ``diffusion.json``, or a setting that differs (the message names every differing
            key with both values and the override that fixes it).
    """
    ckpt = Path(ckpt_path)
    path = Path(settings_file) if settings_file is not None else ckpt.parent / DIFFUSION_SETTINGS_FILE
    if not path.is_file():
        if str(path.parent) not in _warned_unchecked:
            _warned_unchecked.add(str(path.parent))
            logger.warning(
                "%s: no %s next to the weights (trained before it existed?): the prediction type, noise schedule, "
                "timesteps and classes they were trained with cannot be checked",
                ckpt,
                DIFFUSION_SETTINGS_FILE,
            )
        return None
    try:
        recorded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise GeneratorError(f"{path}: malformed {DIFFUSION_SETTINGS_FILE} ({err})") from None
    if not isinstance(recorded, dict):
        raise GeneratorError(
            f"{path}: malformed {DIFFUSION_SETTINGS_FILE} (expected a JSON object, got {type(recorded).__name__})"
        )
    differing = []
    for key, want in expected.items():
        if key not in recorded:
            continue
        try:
            trained, sampled = _comparable(key, recorded[key]), _comparable(key, want)
        except (TypeError, ValueError) as err:
            raise GeneratorError(
                f"{path}: malformed {DIFFUSION_SETTINGS_FILE}: {key!r} is {recorded[key]!r} ({err})"
            ) from None
        if not _same(trained, sampled):
            differing.append(key)
    if differing:
        if len(differing) == 1:
            key = differing[0]
            trained_txt = f"{key}={recorded[key]!r}"
            sampled_txt = repr(to_jsonable(expected[key]))
        else:
            trained_txt = ", ".join(f"{k}={recorded[k]!r}" for k in differing)
            sampled_txt = ", ".join(f"{k}={to_jsonable(expected[k])!r}" for k in differing)
        fix = " ".join(f"--{k} {_cli_value(recorded[k])}" for k in differing)
        raise GeneratorError(
            f"{ckpt}: these weights were trained with {trained_txt} (see {path}) but the config {use} "
            f"{sampled_txt}; override {fix}"
        )
    return recorded


def read_latent_info(path: str | PathLike, autoencoder_ckpt_path: str | PathLike | None = None) -> dict[str, Any]:
    """Read ``latent.json`` written by diffusion training, checking it belongs to the given autoencoder.

    Raises:
        GeneratorError: the file is missing or malformed, or the autoencoder checkpoint is not the one the
            diffusion model was trained on.
    """
    p = Path(path)
    if not p.is_file():
        raise GeneratorError(
            f"{p}: latent.json not found (it holds the latent scale factor); train the diffusion stage first "
            "(configs/train.json) or set --latent_info_path"
        )
    try:
        info = json.loads(p.read_text())
        scale = float(info["scale_factor"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise GeneratorError(f"{p}: malformed {LATENT_INFO_FILE} ({err})") from None
    if not scale > 0:
        raise GeneratorError(f"{p}: the scale factor must be positive, got {scale}")
    if autoencoder_ckpt_path is not None:
        ae = Path(autoencoder_ckpt_path)
        if not ae.is_file():
            raise GeneratorError(
                f"{ae}: autoencoder checkpoint not found (train stage 1 or set --autoencoder_ckpt_path)"
            )
        sha = file_sha256(ae)
        if info.get("autoencoder_sha256") and info["autoencoder_sha256"] != sha:
            raise GeneratorError(
                f"{ae}: this autoencoder is not the one the diffusion model was trained with "
                f"(sha256 {sha[:12]}..., {p.name} expects {str(info['autoencoder_sha256'])[:12]}...)"
            )
    return info
