"""The classifier of the ``classify`` app: a TorchScript export of a classifier bundle, with its own preprocessing.

The model is the file ``python -m monai.bundle ckpt_export network_def --filepath model.ts --ckpt_file model.pt
--meta_file configs/metadata.json --config_file configs/inference.json`` writes: the scripted network plus the
bundle's ``metadata.json`` and ``inference.json`` as extra files. Everything the app needs comes from those:

- ``preprocessing`` (inference.json): the bundle's own transform chain, run exactly as ``monai.bundle run`` runs it.
  A dictionary chain that loads the file itself (``LoadOCTImaged``/``LoadImaged``) gets ``{"image": path,
  "frame": k}``; any other chain gets ``{"image": MetaTensor (1, H, W)}`` holding the B-scan as stored (array
  transforms get the tensor). Without a ``preprocessing`` key the B-scan is scaled to [0, 1]
  (:class:`~medicraft_monai.transforms.ScaleOCTIntensity`) and resized to ``image_size``
  (:class:`~medicraft_monai.transforms.OCTResize`).
- class names, in this order: ``$MEDICRAFT_CLASS_NAMES`` (comma-separated, a deployment override), inference.json's
  ``class_names`` when it is a literal list (or an expression that evaluates without the training data),
  metadata.json's ``network_data_format.outputs.pred.channel_def``; names whose count does not match the network's
  outputs are dropped for ``class_0``, ``class_1``, ...
- the network outputs logits; probabilities are their softmax (they sum to 1).

``class_names`` and ``preprocessing`` are read from the embedded config the way every user of the classifier bundle
reads them (:func:`~medicraft_monai.networks.bundle.configured_class_names`,
:func:`~medicraft_monai.networks.bundle.bundle_preprocessing`); the MONAI Label app and the metrics load the bundle's
network and weights with :func:`~medicraft_monai.networks.bundle.load_bundle_network`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.data.torchscript_utils import load_net_with_metadata
from monai.transforms import Compose, LoadImaged, MapTransform

from medicraft_monai.data.dicom import collate_safe_meta
from medicraft_monai.data.io import LoadOCTImaged
from medicraft_monai.data.keys import OCTMetaKeys
from medicraft_monai.networks.bundle import bundle_preprocessing, configured_class_names
from medicraft_monai.utils import file_sha256

from . import resolve_device
from .inputs import InputFrame

__all__ = [
    "CLASS_NAMES_ENV",
    "ClassifierModelError",
    "TorchScriptClassifier",
    "classify_frames",
    "prediction_fields",
    "resolve_torchscript",
]

logger = logging.getLogger(__name__)

CLASS_NAMES_ENV = "MEDICRAFT_CLASS_NAMES"
"""Environment variable with comma-separated class names that override the model's own."""

CONFIG_EXTRA = "inference.json"
COMMON_EXTRA = "common.json"
"""The bundle config ``inference.json`` is layered on (``ckpt_export --config_file "['configs/common.json', ...]"``)."""
MODEL_SUFFIXES = (".ts", ".pt", ".pth", ".zip")


class ClassifierModelError(ValueError):
    """A classifier model that cannot be found or used (message ``"path: reason"``)."""


def resolve_torchscript(model_path: str | PathLike) -> Path:
    """The TorchScript file behind ``model_path``: the file itself, or the one model file in a folder.

    A folder may be a bundle (``models/model.ts``) or a MAP model folder (one sub-folder holding the file).

    Raises:
        ClassifierModelError: nothing, or more than one candidate, found.
    """
    path = Path(model_path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ClassifierModelError(f"{path}: model file or folder not found")
    if (path / "models" / "model.ts").is_file():
        return path / "models" / "model.ts"
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)
    scripted = [p for p in found if p.suffix.lower() == ".ts"] or found
    if len(scripted) != 1:
        what = "no" if not scripted else f"{len(scripted)}"
        raise ClassifierModelError(
            f"{path}: found {what} TorchScript model file(s) ({', '.join(p.name for p in scripted[:5])}); "
            "give the model file itself with -m"
        )
    return scripted[0]


def _channel_def_names(metadata: Mapping[str, Any]) -> list[str] | None:
    try:
        channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
        return [str(channel_def[k]) for k in sorted(channel_def, key=lambda k: int(k))]
    except (KeyError, TypeError, ValueError):
        return None


def _uses_loader(transform: Any) -> bool:
    transforms = transform.transforms if isinstance(transform, Compose) else [transform]
    return any(isinstance(t, (LoadOCTImaged, LoadImaged)) for t in transforms)


def _is_dictionary(transform: Any) -> bool:
    transforms = transform.transforms if isinstance(transform, Compose) else [transform]
    return any(isinstance(t, MapTransform) for t in transforms)


def _affine(spacing: Sequence[float] | None) -> torch.Tensor:
    affine = torch.eye(3, dtype=torch.float64)
    if spacing is not None and not any(math.isnan(float(v)) for v in spacing):
        affine[0, 0], affine[1, 1] = float(spacing[0]), float(spacing[1])
    return affine


def frame_tensor(record: InputFrame) -> MetaTensor:
    """A read B-scan as :class:`~medicraft_monai.data.LoadOCTImage` returns it: (1, H, W) float32, values as stored."""
    assert record.image is not None
    meta = collate_safe_meta(record.meta)
    affine = _affine(record.meta.get(OCTMetaKeys.PIXEL_SPACING))
    meta["original_affine"] = affine.clone()
    meta["spatial_shape"] = np.asarray(record.image.shape)
    meta["original_channel_dim"] = 0
    data = torch.as_tensor(np.asarray(record.image, dtype=np.float32))[None]
    return MetaTensor(data, affine=affine, meta=meta)


@dataclass
class TorchScriptClassifier:
    """A scripted classifier with the preprocessing and class names of its bundle.

    Build it with :meth:`load`.

    Attributes:
        network: the scripted network, in eval mode, on ``device``.
        class_names: output classes in order (may be replaced by generic names after the first batch, see
            :meth:`predict`).
        preprocessing: the bundle's transform chain (or the default one).
        path: the model file; ``checksum``: its SHA-256.
        metadata: the embedded metadata.json; ``config``: the embedded inference.json (may be empty).
        device: where inference runs.
    """

    network: torch.nn.Module
    class_names: list[str]
    preprocessing: Callable[[Any], Any]
    path: str
    checksum: str
    metadata: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def load(cls, model_path: str | PathLike, device: str | torch.device | None = None) -> TorchScriptClassifier:
        """Load the TorchScript classifier at ``model_path`` (a file, or a folder holding one).

        Raises:
            ClassifierModelError: no model, a file that is not TorchScript, or an unusable ``preprocessing``.
        """
        path = resolve_torchscript(model_path)
        dev = torch.device(resolve_device(device))
        try:
            network, metadata, extra = load_net_with_metadata(
                str(path), map_location=dev, more_extra_files=[COMMON_EXTRA, CONFIG_EXTRA]
            )
        except Exception as err:  # noqa: BLE001 - torch raises many types for a file that is not TorchScript
            raise ClassifierModelError(f"{path}: not a TorchScript model ({type(err).__name__}: {err})") from err
        network.eval()
        config: dict[str, Any] = {}
        for name in (COMMON_EXTRA, CONFIG_EXTRA):  # inference.json on top of the common.json it is layered on
            raw = extra.get(name) or ""
            config.update(json.loads(raw) if raw else {})
        parser: ConfigParser | None = None
        if config:
            parser = ConfigParser(config)
            parser["bundle_root"] = str(path.parent)
        names = cls._class_names(parser, metadata)
        if parser is not None and "preprocessing" in parser:
            try:
                preprocessing = bundle_preprocessing(parser)
            except Exception as err:  # noqa: BLE001
                raise ClassifierModelError(f"{path}: the embedded inference.json 'preprocessing' fails: {err}") from err
        else:
            preprocessing = cls._default_preprocessing(parser, metadata)
        return cls(network, names, preprocessing, str(path), file_sha256(path), dict(metadata), config, dev)

    @staticmethod
    def _class_names(parser: ConfigParser | None, metadata: Mapping[str, Any]) -> list[str]:
        override = os.environ.get(CLASS_NAMES_ENV, "").strip()
        if override:
            return [n.strip() for n in override.split(",") if n.strip()]
        return configured_class_names(parser) or _channel_def_names(metadata) or []

    @staticmethod
    def _default_preprocessing(parser: ConfigParser | None, metadata: Mapping[str, Any]) -> Callable[[Any], Any]:
        from medicraft_monai.transforms import OCTResize, ScaleOCTIntensity

        size: Any = None
        if parser is not None and "image_size" in parser:
            size = parser.get_parsed_content("image_size")
        if size is None:
            try:
                size = metadata["network_data_format"]["inputs"]["image"]["spatial_shape"]
            except (KeyError, TypeError):
                size = (128, 256)
        return Compose([ScaleOCTIntensity(), OCTResize(spatial_size=[int(v) for v in size])])

    @property
    def loads_files(self) -> bool:
        """Whether the preprocessing reads the file itself (it gets paths, not pixels)."""
        return _uses_loader(self.preprocessing)

    def preprocess(self, record: InputFrame) -> torch.Tensor:
        """The network input (C, H, W) for one read B-scan."""
        if self.loads_files:
            out = self.preprocessing({"image": record.path, "frame": record.frame})
        elif _is_dictionary(self.preprocessing):
            out = self.preprocessing({"image": frame_tensor(record)})
        else:
            out = self.preprocessing(frame_tensor(record))
        image = out["image"] if isinstance(out, Mapping) else out
        return torch.as_tensor(image, dtype=torch.float32)

    def predict(self, inputs: Sequence[torch.Tensor]) -> np.ndarray:
        """Class probabilities (B, K) of preprocessed inputs: the softmax of the network's logits."""
        batch = torch.stack([torch.as_tensor(x) for x in inputs]).to(self.device)
        with torch.inference_mode():
            logits = self.network(batch)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        probs = torch.softmax(logits.float().reshape(logits.shape[0], -1), dim=1).cpu().numpy()
        k = probs.shape[1]
        if len(self.class_names) != k:
            if self.class_names:
                logger.warning(
                    "%s: %d class names %s for %d network outputs; using generic names",
                    self.path,
                    len(self.class_names),
                    self.class_names,
                    k,
                )
            self.class_names = [f"class_{i}" for i in range(k)]
        return probs

    def describe(self) -> dict[str, Any]:
        """What identifies the model in the outputs."""
        return {
            "path": self.path,
            "sha256": self.checksum,
            "name": self.metadata.get("name", Path(self.path).stem),
            "version": self.metadata.get("version", ""),
            "class_names": list(self.class_names),
            "device": str(self.device),
        }


def prediction_fields(class_names: Sequence[str]) -> list[str]:
    """CSV columns of the predictions: the input, the result, one probability per class, and the error."""
    return [
        "file",
        "frame",
        "num_frames",
        "format",
        "status",
        "predicted_class",
        "predicted_label",
        "confidence",
        *[f"prob_{c}" for c in class_names],
        "error",
    ]


def _error_row(record: InputFrame, error: str) -> dict[str, Any]:
    return {
        "file": record.source,
        "frame": record.frame,
        "num_frames": record.num_frames,
        "format": record.format,
        "status": "error",
        "predicted_class": "",
        "predicted_label": None,
        "confidence": None,
        "probabilities": {},
        "error": error,
    }


def classify_frames(
    classifier: TorchScriptClassifier, records: Sequence[InputFrame], batch_size: int = 8
) -> list[dict[str, Any]]:
    """One prediction row per B-scan, in input order; unreadable files (and B-scans whose preprocessing fails)
    become rows with ``status`` "error" and the reason, and never stop the others.

    Each row: ``file``, ``frame``, ``num_frames``, ``format``, ``status`` ("ok"/"error"), ``predicted_class``,
    ``predicted_label``, ``confidence``, ``probabilities`` ({class: p}, summing to 1) and ``error``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows: list[dict[str, Any] | None] = [None] * len(records)
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        probs = classifier.predict([x for _, x in pending])
        for (i, _), p in zip(pending, probs):
            rec = records[i]
            label = int(np.argmax(p))
            rows[i] = {
                "file": rec.source,
                "frame": rec.frame,
                "num_frames": rec.num_frames,
                "format": rec.format,
                "status": "ok",
                "predicted_class": classifier.class_names[label],
                "predicted_label": label,
                "confidence": float(p[label]),
                "probabilities": {c: float(v) for c, v in zip(classifier.class_names, p)},
                "error": "",
            }
        pending.clear()

    for i, rec in enumerate(records):
        if not rec.ok:
            rows[i] = _error_row(rec, rec.error)
            continue
        try:
            pending.append((i, classifier.preprocess(rec)))
        except Exception as err:  # noqa: BLE001 - one bad B-scan is reported, the batch goes on
            rows[i] = _error_row(rec, f"{rec.path}: preprocessing failed ({type(err).__name__}: {err})")
            continue
        if len(pending) >= batch_size:
            flush()
    flush()
    return [r for r in rows if r is not None]


def csv_rows(rows: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Prediction rows flattened for the CSV (one ``prob_<class>`` column per class)."""
    out = []
    for row in rows:
        flat = {k: v for k, v in row.items() if k != "probabilities"}
        for c in class_names:
            p = row.get("probabilities", {}).get(c)
            flat[f"prob_{c}"] = "" if p is None else f"{p:.6f}"
        if flat.get("confidence") is not None:
            flat["confidence"] = f"{flat['confidence']:.6f}"
        out.append(flat)
    return out
