"""Per-image anatomy checks of a folder or datalist: the "inference" of the evaluation bundle.

A medical team reviewing synthetic images (for example in MONAI Label) wants each image's automated verdict
beside its own; :func:`check_anatomy` writes it as ``anatomy.csv`` (one row per image, one column per check) and
``anatomy.json`` (the same plus the summary per class and per failure mode).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medicraft_monai.data.datalist import load_datalist
from medicraft_monai.data.errors import EmptyDatasetError, OCTDataError
from medicraft_monai.data.io import SUPPORTED_SUFFIXES
from medicraft_monai.data.keys import OCTKeys

__all__ = [
    "QA_FIELDS",
    "ImageQA",
    "assess_images",
    "check_anatomy",
    "collect_images",
    "qa_error_row",
    "qa_record",
    "summarise_qa",
    "write_qa_table",
]


def collect_images(source: str | PathLike | Sequence[str]) -> list[dict[str, Any]]:
    """Datalist-style items (``image``, ``class_name``) of a datalist JSON (every split, every frame it lists), a
    folder (searched recursively; the class is the parent folder's name; the first frame of multi-frame DICOM files:
    make a datalist with ``medicraft datalist`` for all frames) or a list of image paths."""
    if not isinstance(source, (str, PathLike)):
        return [{OCTKeys.IMAGE: str(p), OCTKeys.CLASS_NAME: Path(p).parent.name} for p in source]
    path = Path(source)
    if path.is_file() and path.suffix == ".json":
        data = load_datalist(path, check=False)
        return [dict(it) for split in ("training", "validation", "test") for it in data.get(split, [])]
    if path.is_dir():
        suffixes = tuple(s for s in SUPPORTED_SUFFIXES if s)
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
        if not files:
            raise EmptyDatasetError(path, "no OCT images in this folder")
        return [{OCTKeys.IMAGE: str(p), OCTKeys.CLASS_NAME: p.parent.name} for p in files]
    if path.is_file():
        return [{OCTKeys.IMAGE: str(path), OCTKeys.CLASS_NAME: path.parent.name}]
    raise OCTDataError(path, "not found (give a datalist JSON, a folder of images or image files)")


def check_anatomy(
    images: str | PathLike | Sequence[str],
    output_dir: str | PathLike,
    profile: str = "phantom",
    image_size: Sequence[int] | None = None,
    crop_height: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the anatomy checks on every image and write ``anatomy.csv`` and ``anatomy.json`` to ``output_dir``.

    Args:
        images: a datalist JSON, a folder of images or a list of image paths.
        output_dir: where the table goes.
        profile: "phantom" or "spectralis" (see :func:`~medicraft_monai.evaluation.pipeline.anatomy_checker`).
        image_size: resize every image to (H, W) first (default: check each at its own size).
        crop_height: crop the rows around the retina first (as the generators' preprocessing does).
        progress: show a progress bar.

    Returns:
        ``{"csv", "json", "summary"}``; an unreadable image is a row with its error, the others are still checked.
    """
    from tqdm.auto import tqdm

    from medicraft_monai.evaluation.pipeline import anatomy_checker
    from medicraft_monai.metrics.anatomy import CHECKS, summarise
    from medicraft_monai.metrics.images import load_images

    items = collect_images(images)
    checker = anatomy_checker(profile)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, results, labels = [], [], []
    for item in tqdm(items, desc="anatomy checks", disable=not progress):
        row: dict[str, Any] = {"image": item[OCTKeys.IMAGE], "class_name": item.get(OCTKeys.CLASS_NAME, "")}
        try:
            if image_size is not None:
                x, _ = load_images([item], tuple(image_size), crop_height=crop_height, progress=False)
                image = x[0]
            else:
                from medicraft_monai.data.io import read_bscan

                image = read_bscan(item[OCTKeys.IMAGE], int(item.get(OCTKeys.FRAME, 0) or 0))[0]
            result = checker.check(image)
        except OCTDataError as err:
            rows.append({**row, "passed": "", "failures": "", "error": str(err)})
            continue
        results.append(result)
        labels.append(row["class_name"])
        rows.append(
            {
                **row,
                "passed": result.passed,
                "failures": ";".join(result.failures),
                "error": "",
                **{k: "" if result.checks.get(k) is None else result.checks[k] for k in CHECKS},
            }
        )
    fields = ["image", "class_name", "passed", "failures", *CHECKS, "error"]
    with open(out / "anatomy.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(results, labels) if results else {"n": 0}
    summary["errors"] = sum(1 for r in rows if r["error"])
    (out / "anatomy.json").write_text(
        json.dumps({"profile": profile, "checker": checker.settings(), "summary": summary, "images": rows}, indent=2)
    )
    return {"csv": str(out / "anatomy.csv"), "json": str(out / "anatomy.json"), "summary": summary}


# ------------------------------------------------------------------------------------------------- the QA gate
QA_FIELDS: tuple[str, ...] = (
    "image",
    "frame",
    "class_name",
    "passed",
    "reasons",
    "anatomy_passed",
    "anatomy_failures",
    "predicted",
    "confidence",
    "intended_probability",
    "agrees",
    "uncertainty",
    "nearest_real_distance",
    "nearest_real_image",
    "memorisation_threshold",
    "memorised",
    "error",
)
"""Columns of the per-image QA table (``qa.csv``; ``qa.json`` holds the same rows)."""


class ImageQA:
    """Per-image quality assurance of synthetic OCT B-scans: the checks a reviewer wants beside each image.

    For every image it answers three questions, each of which can be switched off by not giving its input:

    1. **Anatomy**: do the automated anatomy checks pass
       (:class:`~medicraft_monai.metrics.anatomy.AnatomyChecker`, profile ``anatomy_profile``)?
    2. **Class**: does a classifier (the ``oct_classifier`` bundle) see the class the image was made for, and how
       sure is it? ``uncertainty`` is the normalised entropy of its probabilities (0: sure, 1: uniform), the order
       in which an active-learning reviewer should see images.
    3. **Memorisation**: how far is the image from its nearest real *training* image in the fixed feature space
       (``oct_synthesis_eval``'s extractor), and is it closer than real new patients ever are? The threshold is the
       ``percentile``-th percentile of the distances of the real ``calibration`` images (other patients) to their
       nearest training image: the rule of :func:`~medicraft_monai.metrics.privacy.memorisation_audit`, per image.

    An image passes when none of the checks it ran failed (the classifier must agree with at least
    ``min_confidence`` on the intended class). Unreadable images are rows with their error; the others are still
    assessed.

    Args:
        anatomy_profile: "phantom" or "spectralis", or None to skip the anatomy checks.
        classifier: a classifier bundle's network (:func:`~medicraft_monai.networks.load_bundle_network`) whose
            config has ``class_names`` and ``preprocessing``; None skips the class check.
        extractor: a :class:`~medicraft_monai.metrics.features.FeatureExtractor`; with ``reference`` it enables the
            memorisation check.
        reference: real training images (datalist items with ``image``) the generator learnt from.
        calibration: real images of other patients (datalist items) for the threshold; without them the distance
            is reported and ``memorised`` is None.
        image_size: (H, W) every image is brought to (cropped around the retina, resized) before it is checked and
            compared with the real images, which are brought to the same size: the generator's size. Default: each
            image's own size (the anatomy checks then see the file as it is).
        crop_height: rows kept around the retina of the *real* images before they are resized, as the generators'
            training does (None: no crop); the assessed images are taken as the generator wrote them.
        resize_mode: how images reach ``image_size``: ``"fit"`` (keep the aspect, pad), ``"crop"`` (centre cut to the
            aspect) or ``"stretch"``; use the generator's training mode, so real images are framed like its output.
        percentile: the memorisation threshold's percentile of the calibration distances.
        min_confidence: the classifier's lowest probability of the intended class that counts as agreement.
        device: where the networks run.
        progress: show progress bars.
    """

    def __init__(
        self,
        anatomy_profile: str | None = "phantom",
        classifier: Any = None,
        extractor: Any = None,
        reference: Sequence[Mapping[str, Any]] | None = None,
        calibration: Sequence[Mapping[str, Any]] | None = None,
        image_size: Sequence[int] | None = None,
        crop_height: int | None = None,
        resize_mode: str = "fit",
        percentile: float = 1.0,
        min_confidence: float = 0.5,
        device: str = "cpu",
        progress: bool = True,
    ) -> None:
        from medicraft_monai.evaluation.pipeline import anatomy_checker
        from medicraft_monai.metrics.features import RESIZE_MODES

        if not 0 < float(percentile) < 100:
            raise ValueError(f"percentile must be in (0, 100), got {percentile}")
        if not 0 <= float(min_confidence) <= 1:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        if extractor is not None and not reference:
            raise ValueError("the memorisation check needs the real training images (reference) beside the extractor")
        self.anatomy_profile = anatomy_profile
        self.checker = anatomy_checker(anatomy_profile) if anatomy_profile else None
        self.classifier = classifier
        self.extractor = extractor
        self.reference = [dict(it) for it in reference or []]
        self.calibration = [dict(it) for it in calibration or []]
        self.image_size = tuple(int(s) for s in image_size) if image_size else None
        self.crop_height = int(crop_height) if crop_height else None
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be 'fit', 'crop' or 'stretch', got {resize_mode!r}")
        self.resize_mode = resize_mode
        self.percentile = float(percentile)
        self.min_confidence = float(min_confidence)
        self.device = device
        self.progress = bool(progress)
        self._classify_pre = self._classify_loaded = None
        self.class_names: list[str] = []
        if classifier is not None:
            from medicraft_monai.networks import bundle_preprocessing

            names = classifier.class_names
            if not names:
                raise ValueError(f"{classifier.config_path}: the classifier config has no class_names")
            self.class_names = [str(c) for c in names]
            self._classify_pre = bundle_preprocessing(classifier.parser)
            self._classify_loaded = _without_loader(self._classify_pre)
            classifier.network.eval().to(device)
        self._references: dict[tuple[int, int], tuple[Any, float | None]] = {}
        self._real: dict[str, Any] | None = None

    @classmethod
    def from_bundles(
        cls,
        classifier_bundle: str | PathLike | None = None,
        eval_bundle: str | PathLike | None = None,
        reference_datalist: str | PathLike | None = None,
        classifier_ckpt: str | PathLike | None = None,
        classifier_overrides: Mapping[str, Any] | None = None,
        eval_ckpt: str | PathLike | None = None,
        reference_split: str = "training",
        calibration_splits: Sequence[str] = ("validation", "test"),
        **kwargs: Any,
    ) -> ImageQA:
        """An :class:`ImageQA` from the shipped bundles: the classifier bundle (``oct_classifier``), the evaluation
        bundle's fixed feature extractor (``oct_synthesis_eval``) and a real datalist (its ``reference_split`` is the
        generator's training data, the first non-empty of ``calibration_splits`` other patients). Each may be None
        to skip its check; ``kwargs`` are :class:`ImageQA` arguments."""
        from medicraft_monai.metrics.features import FeatureExtractor
        from medicraft_monai.networks import load_bundle_network

        device = kwargs.get("device", "cpu")
        classifier = None
        if classifier_bundle:
            classifier = load_bundle_network(
                Path(classifier_bundle), classifier_ckpt, overrides=classifier_overrides, device=device,
                what="classifier bundle",
            )  # fmt: skip
        extractor = reference = calibration = None
        if eval_bundle and reference_datalist:
            extractor = FeatureExtractor.from_bundle(eval_bundle, ckpt_path=eval_ckpt)
            data = load_datalist(reference_datalist)
            reference = list(data.get(reference_split) or [])
            if not reference:
                raise EmptyDatasetError(Path(reference_datalist), f"the {reference_split!r} split has no images")
            calibration = next((list(data[s]) for s in calibration_splits if data.get(s)), None)
        return cls(classifier=classifier, extractor=extractor, reference=reference, calibration=calibration, **kwargs)

    def settings(self) -> dict[str, Any]:
        """What the checks are (for the QA table's header and the datastore)."""
        return {
            "anatomy_profile": self.anatomy_profile,
            "classifier": None
            if self.classifier is None
            else {"bundle": Path(self.classifier.bundle_root).name, "sha256": self.classifier.checksum,
                  "class_names": self.class_names},
            "extractor": None if self.extractor is None else self.extractor.describe(),
            "n_reference": len(self.reference),
            "n_calibration": len(self.calibration),
            "image_size": list(self.image_size) if self.image_size else None,
            "crop_height": self.crop_height,
            "resize_mode": self.resize_mode,
            "percentile": self.percentile,
            "min_confidence": self.min_confidence,
        }  # fmt: skip

    # -------------------------------------------------------------------------------------------------- checks
    def _load(self, items: Sequence[Mapping[str, Any]], size: tuple[int, int], real: bool):
        from medicraft_monai.metrics.images import load_images

        crop = self.crop_height if real else None
        return load_images(items, size, crop_height=crop, progress=False, resize_mode=self.resize_mode)[0]

    def _reference_features(self, size: tuple[int, int]) -> tuple[Any, float | None]:
        """Features of the real training images at ``size`` and the memorisation threshold (computed once)."""
        if size not in self._references:
            from medicraft_monai.metrics.features import extract_features
            from medicraft_monai.metrics.images import load_images
            from medicraft_monai.metrics.privacy import nearest_neighbours

            x_ref, kept = load_images(
                self.reference, size, crop_height=self.crop_height, progress=self.progress, skip_bad=True,
                resize_mode=self.resize_mode,
            )  # fmt: skip
            f_ref = extract_features(self.extractor, x_ref, device=self.device, progress=self.progress)
            threshold = None
            if self.calibration:
                x_cal = load_images(
                    self.calibration, size, crop_height=self.crop_height, progress=self.progress, skip_bad=True,
                    resize_mode=self.resize_mode,
                )[0]  # fmt: skip
                f_cal = extract_features(self.extractor, x_cal, device=self.device, progress=self.progress)
                d_cal, _ = nearest_neighbours(f_cal, f_ref)
                threshold = float(np.percentile(d_cal.numpy(), self.percentile))
            self._references[size] = ((f_ref, [it[OCTKeys.IMAGE] for it in kept]), threshold)
        return self._references[size]

    def _classify(self, item: Mapping[str, Any], row: dict[str, Any], image: Any = None) -> None:
        """The classifier's view of the image: the file, or, at a given ``image_size``, the prepared ``image``
        as an 8-bit B-scan of that size (what a generator of that size writes), so that real and synthetic images
        reach the classifier alike."""
        import torch
        from monai.data import MetaTensor

        if image is not None and self.image_size and self._classify_loaded is not None:
            pixels = MetaTensor(torch.round(image.float().clamp(0, 1) * 255), meta={"bit_depth": 8})
            data = self._classify_loaded({OCTKeys.IMAGE: pixels})
        else:
            data = self._classify_pre({OCTKeys.IMAGE: item[OCTKeys.IMAGE], OCTKeys.FRAME: row["frame"]})
        with torch.inference_mode():
            logits = self.classifier.network(torch.as_tensor(data[OCTKeys.IMAGE])[None].float().to(self.device))
        probs = torch.softmax(logits.float().reshape(-1), dim=0).cpu().numpy()
        index = int(np.argmax(probs))
        intended = row["class_name"]
        p_intended = float(probs[self.class_names.index(intended)]) if intended in self.class_names else None
        entropy = float(-(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum())
        row.update(
            predicted=self.class_names[index],
            confidence=round(float(probs[index]), 6),
            intended_probability=None if p_intended is None else round(p_intended, 6),
            agrees=None if p_intended is None else bool(index == self.class_names.index(intended)
                                                         and p_intended >= self.min_confidence),
            uncertainty=round(entropy / math.log(len(probs)), 6) if len(probs) > 1 else 0.0,
        )  # fmt: skip

    def assess(self, images: str | PathLike | Sequence[Any], real: bool = False) -> list[dict[str, Any]]:
        """QA rows (:data:`QA_FIELDS`) of a datalist JSON, a folder, a list of paths or a list of datalist items.

        ``real``: the images are real scans (cropped around the retina with ``crop_height`` first, as the
        reference images are); synthetic images are taken as the generator wrote them."""
        from tqdm.auto import tqdm

        from medicraft_monai.data.io import read_bscan
        from medicraft_monai.metrics.privacy import nearest_neighbours

        if isinstance(images, (str, PathLike)) or (images and not isinstance(images[0], Mapping)):
            items = collect_images(images)
        else:
            items = [dict(it) for it in images]
        rows: list[dict[str, Any]] = []
        for item in tqdm(items, desc="image QA", disable=not self.progress or len(items) < 2):
            frame = int(item.get(OCTKeys.FRAME, 0) or 0)
            row = qa_error_row(item[OCTKeys.IMAGE], item.get(OCTKeys.CLASS_NAME), None, frame=frame)
            try:
                native = None  # the file as it is: read only when no size is given
                if self.image_size:
                    size = self.image_size
                else:
                    native = read_bscan(row["image"], frame)[0]
                    size = (int(native.shape[-2]), int(native.shape[-1]))
                # at a given size, every check sees the image as the comparison does (cropped, resized)
                image = self._load([item], size, real) if self.image_size or self.extractor is not None else None
                if self.checker is not None:
                    result = self.checker.check(image[0] if self.image_size else native)
                    row.update(anatomy_passed=bool(result.passed), anatomy_failures=list(result.failures))
                    if not result.passed:
                        row["reasons"].append("anatomy: " + ", ".join(result.failures))
                if self.classifier is not None:
                    self._classify(item, row, None if image is None else image[0])
                    if row["agrees"] is None:
                        if row["class_name"]:  # without an intended class the prediction is only reported
                            row["reasons"].append(f"class {row['class_name']!r} unknown to the classifier")
                    elif not row["agrees"]:
                        row["reasons"].append(
                            f"classifier sees {row['predicted']} ({row['confidence']:.2f}); "
                            f"p({row['class_name']}) = {row['intended_probability']:.2f}"
                        )
                if self.extractor is not None:
                    from medicraft_monai.metrics.features import extract_features

                    (f_ref, ref_paths), threshold = self._reference_features(size)
                    f = extract_features(self.extractor, image, device=self.device, progress=False)
                    d, i = nearest_neighbours(f, f_ref)
                    row.update(
                        nearest_real_distance=round(float(d[0]), 6),
                        nearest_real_image=ref_paths[int(i[0])],
                        memorisation_threshold=None if threshold is None else round(threshold, 6),
                        memorised=None if threshold is None else bool(float(d[0]) < threshold),
                    )
                    if row["memorised"]:
                        row["reasons"].append("closer to a training image than real new patients are")
            except OCTDataError as err:
                row = qa_error_row(row["image"], row["class_name"], str(err), frame=frame)
            except Exception as err:  # noqa: BLE001 - one image that breaks a check is a row; the others go on
                row = qa_error_row(row["image"], row["class_name"], f"{row['image']}: {type(err).__name__}: {err}",
                                   frame=frame, reason="not assessed")  # fmt: skip
            row["passed"] = row["error"] is None and not row["reasons"]
            rows.append(row)
        return rows

    def real_reference(self) -> dict[str, Any] | None:
        """The anatomy and class checks on the real ``calibration`` images (other patients), prepared as the
        assessed images are: what real scans score, so the gate can ask synthetic images for a share of it
        (computed once; None without calibration images). The memorisation check is left out: its threshold is
        made from these very images."""
        if not self.calibration:
            return None
        if self._real is None:
            extractor, self.extractor = self.extractor, None
            try:
                rows = self.assess(self.calibration, real=True)
            finally:
                self.extractor = extractor
            summary = summarise_qa(rows, 0.0)
            self._real = {k: summary[k] for k in ("n", "n_errors", "pass_fraction", "anatomy_pass_rate",
                                                  "classifier_agreement")}  # fmt: skip
            self._real["per_class"] = {c: v["pass_fraction"] for c, v in summary["per_class"].items()}
        return self._real


def _without_loader(preprocessing: Any) -> Any:
    """A classifier's preprocessing without its image loader (for images already read), or None when it is not a
    ``Compose`` that starts by loading the file."""
    from monai.transforms import Compose, LoadImaged

    from medicraft_monai.data import LoadOCTImaged

    steps = list(preprocessing.transforms) if isinstance(preprocessing, Compose) else []
    loaders = [i for i, t in enumerate(steps) if isinstance(t, (LoadOCTImaged, LoadImaged))]
    if not loaders:
        return None
    return Compose([t for i, t in enumerate(steps) if i not in loaders])


def qa_error_row(
    image: str | PathLike, class_name: str | None, error: str | None, frame: int = 0, reason: str = "unreadable"
) -> dict[str, Any]:
    """A QA row (:data:`QA_FIELDS`) with nothing checked yet; with ``error``, the row of an image that could not be
    assessed (``reasons``: ``"<reason>: <error>"``, ``passed`` False)."""
    row: dict[str, Any] = dict.fromkeys(QA_FIELDS)
    row.update(image=str(image), frame=int(frame), class_name=str(class_name or ""), reasons=[], error=error)
    if error is not None:
        row.update(passed=False, reasons=[f"{reason}: {error}"])
    return row


def qa_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One QA row as the nested record the MONAI Label datastore keeps in an image's info (key ``qa``)."""
    return {
        "passed": row["passed"],
        "reasons": list(row.get("reasons") or []),
        "anatomy": None
        if row.get("anatomy_passed") is None
        else {"passed": row["anatomy_passed"], "failures": list(row.get("anatomy_failures") or [])},
        "classifier": None
        if row.get("predicted") is None
        else {"predicted": row["predicted"], "confidence": row["confidence"], "agrees": row["agrees"],
              "intended_probability": row["intended_probability"], "uncertainty": row["uncertainty"]},
        "nearest_real": None
        if row.get("nearest_real_distance") is None
        else {"distance": row["nearest_real_distance"], "threshold": row["memorisation_threshold"],
              "memorised": row["memorised"]},
        "error": row.get("error"),
    }  # fmt: skip


def summarise_qa(
    rows: Sequence[Mapping[str, Any]],
    min_pass_fraction: float = 0.8,
    real: Mapping[str, Any] | None = None,
    max_memorised_fraction: float = 0.05,
) -> dict[str, Any]:
    """The gate's summary: counts and pass fraction overall and per class, and the verdict.

    The set passes when every file could be read, at most ``max_memorised_fraction`` of the images are flagged as
    memorised (real new patients fall below the threshold ``percentile`` % of the time by construction: the default
    5% is the privacy audit's rule; the flagged images are listed for removal either way), and enough images pass
    their checks: at least ``min_pass_fraction`` of them, or, when ``real`` (:meth:`ImageQA.real_reference`: the same
    checks on real images of other patients) is given, at least ``min_pass_fraction`` times the real images' pass
    fraction (checks that real scans fail as often at this size do not hold synthetic ones to more).
    """
    if not 0 <= float(min_pass_fraction) <= 1:
        raise ValueError(f"min_pass_fraction must be in [0, 1], got {min_pass_fraction}")
    if not 0 <= float(max_memorised_fraction) < 1:
        raise ValueError(f"max_memorised_fraction must be in [0, 1), got {max_memorised_fraction}")
    n = len(rows)
    per_class: dict[str, dict[str, Any]] = {}
    for r in rows:
        c = per_class.setdefault(r.get("class_name") or "", {"n": 0, "passed": 0})
        c["n"] += 1
        c["passed"] += bool(r.get("passed"))
    for c in per_class.values():
        c["pass_fraction"] = c["passed"] / c["n"]

    def rate(key: str, value: Any = True) -> float | None:
        seen = [r[key] for r in rows if r.get(key) is not None]
        return sum(v == value for v in seen) / len(seen) if seen else None

    n_errors = sum(1 for r in rows if r.get("error"))
    n_memorised = sum(1 for r in rows if r.get("memorised"))
    n_passed = sum(1 for r in rows if r.get("passed"))
    fraction = n_passed / n if n else 0.0
    required = float(min_pass_fraction) * (float(real["pass_fraction"]) if real else 1.0)
    problems = []
    if not n:
        problems.append("no images")
    if n_errors:
        problems.append(f"{n_errors} unreadable file(s)")
    if n and n_memorised / n > max_memorised_fraction:
        problems.append(
            f"{n_memorised} image(s) ({n_memorised / n:.0%}, more than {max_memorised_fraction:.0%}) closer to a "
            "training image than real new patients are"
        )
    if n and fraction < required:
        of_real = f" = {min_pass_fraction:g} x the real images' {real['pass_fraction']:.0%}" if real else ""
        problems.append(f"only {fraction:.0%} of the images pass their checks (at least {required:.0%}{of_real})")
    return {
        "n": n,
        "n_passed": n_passed,
        "pass_fraction": fraction,
        "min_pass_fraction": float(min_pass_fraction),
        "required_pass_fraction": required,
        "real": None if real is None else dict(real),
        "n_errors": n_errors,
        "n_memorised": n_memorised,
        "max_memorised_fraction": float(max_memorised_fraction),
        "anatomy_pass_rate": rate("anatomy_passed"),
        "classifier_agreement": rate("agrees"),
        "per_class": per_class,
        "passed": not problems,
        "verdict": "pass" if not problems else "fail: " + "; ".join(problems),
    }


def write_qa_table(
    rows: Sequence[Mapping[str, Any]],
    output_dir: str | PathLike,
    settings: Mapping[str, Any] | None = None,
    min_pass_fraction: float = 0.8,
    real: Mapping[str, Any] | None = None,
    max_memorised_fraction: float = 0.05,
) -> dict[str, Any]:
    """Write ``qa.csv``, ``qa.json`` (rows, settings, summary) and ``qa_summary.json`` to ``output_dir`` (the summary
    of :func:`summarise_qa` with ``min_pass_fraction``, ``real`` and ``max_memorised_fraction``).

    Returns:
        ``{"csv", "json", "summary_json", "summary"}``.
    """
    from medicraft_monai.utils import to_jsonable, write_json_atomic, write_text_atomic

    summary = summarise_qa(rows, min_pass_fraction, real, max_memorised_fraction)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(QA_FIELDS), extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {k: ";".join(map(str, v)) if isinstance(v, list) else ("" if v is None else v) for k, v in r.items()}
        )
    write_text_atomic(out / "qa.csv", buf.getvalue())
    write_json_atomic(out / "qa.json", to_jsonable({"settings": dict(settings or {}), "summary": summary,
                                                    "images": list(rows)}))  # fmt: skip
    write_json_atomic(out / "qa_summary.json", to_jsonable(summary))
    return {"csv": str(out / "qa.csv"), "json": str(out / "qa.json"), "summary_json": str(out / "qa_summary.json"),
            "summary": summary}  # fmt: skip


def assess_images(
    images: str | PathLike | Sequence[Any],
    output_dir: str | PathLike,
    qa: ImageQA,
    min_pass_fraction: float = 0.8,
    max_memorised_fraction: float = 0.05,
) -> dict[str, Any]:
    """Run ``qa`` on every image and write the QA table (:func:`write_qa_table`; the gate is relative to the real
    calibration images' pass fraction when ``qa`` has them): the evaluation bundle's inference entry point."""
    rows = qa.assess(images)
    return write_qa_table(
        rows, output_dir, qa.settings(), min_pass_fraction, qa.real_reference(), max_memorised_fraction
    )
