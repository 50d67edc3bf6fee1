"""The work of the ``qa`` app: the per-image QA gate on a folder of synthetic B-scans, before the set leaves the lab.

Every B-scan of the input (PNG/JPEG/TIFF/NIfTI, DICOM Ophthalmic Tomography: one row per frame) is assessed by
:class:`~medicraft_monai.evaluation.per_image.ImageQA` (anatomy checks, the classifier's agreement with the intended
class, the distance to the nearest real training image against the memorisation threshold), and the table is written
by :func:`~medicraft_monai.evaluation.per_image.write_qa_table` (``qa.csv``, ``qa.json``, ``qa_summary.json``). A file
that cannot be read, or an image whose checks fail with an error, is a row with that error; the others are still
assessed.

The intended class of an image is the ``class_name`` of the provenance the project writes into every synthetic file
(PNG text chunk, NIfTI header extension, DICOM ImageComments), else the name of the folder holding the file.

The settings (:class:`QASettings`) come from ``MEDICRAFT_QA_<FIELD>`` environment variables; the bundle and datalist
paths are relative to the model folder (``-m``/``HOLOSCAN_MODEL_PATH``) unless absolute, and ``none`` switches a
check off. A missing bundle or datalist is a usage error (:class:`QAUsageError`, naming the path), not a skipped
check: the gate runs every check unless told otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

from medicraft_monai.evaluation.per_image import ImageQA, qa_error_row
from medicraft_monai.metrics.features import RESIZE_MODES
from medicraft_monai.utils import flag

from . import resolve_device
from .inputs import InputFrame

__all__ = [
    "ENV_PREFIX",
    "SIDECAR_SUFFIXES",
    "QASettings",
    "QAUsageError",
    "assess_frames",
    "intended_class",
]

ENV_PREFIX = "MEDICRAFT_QA_"
APP_NAME = "medicraft_monai.deploy.qa"
SKIP = "none"
SIDECAR_SUFFIXES: tuple[str, ...] = (".json", ".jsonl", ".csv")
"""Files of the input that are not images and are not assessed (the manifest and summary of a synthesis job)."""


class QAUsageError(ValueError):
    """A QA run that cannot start: a missing bundle, datalist or input, or a bad setting (the message names it)."""


def _optional(raw: str | None) -> str | None:
    return None if raw is None or raw.strip().lower() in (SKIP, "") else raw.strip()


def _image_size(raw: Any) -> list[int] | None:
    if raw is None or isinstance(raw, (list, tuple)):
        return None if raw is None else [int(v) for v in raw]
    text = _optional(str(raw))
    if text is None:
        return None
    size = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be two positive integers 'H,W', got {raw!r}")
    return size


@dataclass
class QASettings:
    """What the gate checks and how strictly.

    Attributes:
        classifier_bundle: the classifier bundle (``oct_classifier``: configs and ``models/model.pt``); None skips
            the class check.
        eval_bundle: the evaluation bundle with the fixed feature extractor (``oct_synthesis_eval``); None skips the
            memorisation check.
        reference_datalist: the real datalist: its ``training`` split is the generator's training images, its
            ``validation`` (else ``test``) split other patients for the memorisation threshold; None skips the
            memorisation check.
        anatomy_profile: "spectralis" or "phantom"; None skips the anatomy checks.
        image_size: (H, W) every image and the real references are brought to before they are checked and compared
            (the generator's size; default: each image's own).
        crop_height: rows kept around the retina of the real images before resizing (None: no crop).
        resize_mode: how images reach ``image_size`` (``fit``, ``crop`` or ``stretch``): the generator's training
            mode, so real images are framed like its output.
        percentile: the memorisation threshold's percentile of the real new patients' distances.
        min_confidence: the classifier's lowest probability of the intended class that counts as agreement.
        min_pass_fraction: the share of images that must pass, times the real validation images' pass fraction
            through the same checks when the reference datalist is given.
        max_memorised_fraction: the largest share of images flagged as memorised a set may have and still pass.
        fail_exit: exit with status 3 when the gate fails (for pipelines); otherwise a run that completes exits 0
            and the verdict is in ``qa_summary.json``.
    """

    classifier_bundle: str | None = "oct_classifier"
    eval_bundle: str | None = "oct_synthesis_eval"
    reference_datalist: str | None = "reference_datalist.json"
    anatomy_profile: str | None = "spectralis"
    image_size: list[int] | None = None
    crop_height: int | None = 256
    resize_mode: str = "fit"
    percentile: float = 1.0
    min_confidence: float = 0.5
    min_pass_fraction: float = 0.8
    max_memorised_fraction: float = 0.05
    fail_exit: bool = False

    def __post_init__(self) -> None:
        self.image_size = _image_size(self.image_size)
        if self.crop_height is not None:
            crop = _optional(str(self.crop_height))
            self.crop_height = None if crop is None or int(crop) == 0 else int(crop)
        self.percentile, self.min_confidence = float(self.percentile), float(self.min_confidence)
        self.min_pass_fraction = float(self.min_pass_fraction)
        self.max_memorised_fraction = float(self.max_memorised_fraction)
        self.fail_exit = flag(self.fail_exit)
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be 'fit', 'crop' or 'stretch', got {self.resize_mode!r}")
        if self.anatomy_profile not in (None, "spectralis", "phantom"):
            raise ValueError(f"anatomy_profile must be 'spectralis', 'phantom' or 'none', got {self.anatomy_profile!r}")
        for name, low, high in (("min_pass_fraction", 0, 1), ("max_memorised_fraction", 0, 1), ("min_confidence", 0, 1),
                                ("percentile", 0, 100)):  # fmt: skip
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {getattr(self, name)}")

    @classmethod
    def from_environ(
        cls, model_path: str | PathLike | None = None, environ: Mapping[str, str] | None = None
    ) -> QASettings:
        """The settings of ``MEDICRAFT_QA_<FIELD>`` variables over the defaults, with the bundle and datalist paths
        resolved against ``model_path`` and checked.

        Raises:
            QAUsageError: a bad value (naming the variable), or a bundle or datalist that is not there (naming the
                path and the variable that sets it).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw.strip() != "":
                values[f.name] = _optional(raw) if f.name in (*_PATH_FIELDS, "anatomy_profile") else raw.strip()
        try:
            settings = cls(**values)
        except (TypeError, ValueError) as err:
            raise QAUsageError(f"{ENV_PREFIX}* environment: {err}") from err
        root = Path(model_path) if model_path else Path(".")
        for name in _PATH_FIELDS:
            value = getattr(settings, name)
            if value is None:
                continue
            path = Path(value) if Path(value).is_absolute() else root / value
            what = _PATH_FIELDS[name]
            if not (path.is_dir() if name != "reference_datalist" else path.is_file()):
                raise QAUsageError(
                    f"{path}: {what} not found (set {ENV_PREFIX}{name.upper()} to its path, absolute or relative "
                    f"to the model folder {root}, or to 'none' to skip its check)"
                )
            if name != "reference_datalist" and not (path / "configs").is_dir():
                raise QAUsageError(f"{path}: not a MONAI bundle (no configs/ folder); it should be the {what}")
            setattr(settings, name, str(path))
        if (settings.eval_bundle is None) != (settings.reference_datalist is None):
            given = "eval_bundle" if settings.eval_bundle else "reference_datalist"
            raise QAUsageError(
                f"{getattr(settings, given)}: the memorisation check needs both the evaluation bundle and the "
                f"reference datalist ({ENV_PREFIX}EVAL_BUNDLE, {ENV_PREFIX}REFERENCE_DATALIST); set both to 'none' "
                "to skip it"
            )
        if settings.reference_datalist is not None:
            _check_reference(Path(settings.reference_datalist))
        if settings.classifier_bundle is None and settings.eval_bundle is None and settings.anatomy_profile is None:
            raise QAUsageError(f"{ENV_PREFIX}* environment: every check is switched off; nothing to assess")
        return settings

    def build(self, device: str | None = None, progress: bool = True) -> ImageQA:
        """The :class:`~medicraft_monai.evaluation.per_image.ImageQA` of these settings (loads the bundles).

        Args:
            device: where the networks run (default: ``$MEDICRAFT_DEVICE``, else CUDA when available, else CPU).
            progress: show progress bars.
        """
        return ImageQA.from_bundles(
            self.classifier_bundle,
            self.eval_bundle,
            self.reference_datalist,
            anatomy_profile=self.anatomy_profile,
            image_size=self.image_size,
            crop_height=self.crop_height,
            resize_mode=self.resize_mode,
            percentile=self.percentile,
            min_confidence=self.min_confidence,
            device=resolve_device(device),
            progress=progress,
        )

    def describe(self) -> dict[str, Any]:
        """The settings as recorded in ``qa.json``."""
        return {"app": APP_NAME, **asdict(self)}


_PATH_FIELDS: dict[str, str] = {
    "classifier_bundle": "classifier bundle",
    "eval_bundle": "evaluation bundle (feature extractor)",
    "reference_datalist": "reference datalist of the real training images",
}


def _check_reference(path: Path, split: str = "training") -> None:
    """A reference datalist whose training images are all there (a missing one is a broken setup, not a bad image).

    Raises:
        QAUsageError: the datalist cannot be read, has no training images, or lists images that are not there.
    """
    from medicraft_monai.data.datalist import load_datalist

    try:
        items = load_datalist(path).get(split) or []
    except Exception as err:  # noqa: BLE001 - any reason the datalist cannot be used stops the run, named
        raise QAUsageError(f"{path}: not a usable reference datalist ({type(err).__name__}: {err})") from err
    if not items:
        raise QAUsageError(f"{path}: the reference datalist has no {split!r} images")
    missing = [str(it["image"]) for it in items if not Path(it["image"]).is_file()]
    if missing:
        raise QAUsageError(
            f"{path}: {len(missing)} of the {len(items)} {split!r} images it lists are not there "
            f"(first: {missing[0]}; relative paths are relative to the datalist's folder)"
        )


def intended_class(frame: InputFrame) -> str:
    """The class an image was made for: its provenance's ``class_name`` (written into every synthetic file by the
    project), else the name of the folder holding it."""
    provenance = frame.meta.get("provenance")
    if isinstance(provenance, Mapping) and provenance.get("class_name"):
        return str(provenance["class_name"])
    return Path(frame.path).parent.name


def assess_frames(qa: ImageQA, frames: Sequence[InputFrame], progress: bool = True) -> list[dict[str, Any]]:
    """QA rows (:data:`~medicraft_monai.evaluation.per_image.QA_FIELDS`), one per B-scan, in input
    order. An unreadable file, or a B-scan whose checks raise, is a row with the error; the others are still
    assessed."""
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    for frame in tqdm(frames, desc="image QA", disable=not progress or len(frames) < 2):
        if not frame.ok:  # the class of an unreadable file is its folder's name
            rows.append(qa_error_row(frame.path, Path(frame.path).parent.name, frame.error, frame=frame.frame))
            continue
        item = {"image": frame.path, "class_name": intended_class(frame), "frame": frame.frame}
        rows.extend(qa.assess([item]))  # a B-scan whose checks raise is a row with the error
    return rows
