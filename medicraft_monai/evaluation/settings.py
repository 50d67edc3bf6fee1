"""Settings of the synthetic-data evaluation (:func:`medicraft_monai.evaluation.evaluate_synthesis`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["ANATOMY_PROFILES", "EvaluationSettings"]

#: scan protocols the anatomy checks know (:class:`~medicraft_monai.metrics.anatomy.AnatomyChecker` presets)
ANATOMY_PROFILES = ("phantom", "spectralis")


@dataclass
class EvaluationSettings:
    """Every knob of the evaluation, with defaults for a real data set of a few hundred images per class.

    Each field is also a key of ``bundles/oct_synthesis_eval/configs/evaluate.json`` and an option of
    ``medicraft evaluate``.

    Attributes:
        image_size: (H, W) every image is compared at; ``None``: the size of the synthetic images.
        crop_height: real images are cropped to this many rows around the retina before resizing (the
            generators' own preprocessing); ``None`` or 0: no crop. Synthetic images are only resized.
        resize_mode: how real images reach ``image_size`` (:class:`~medicraft_monai.transforms.OCTResize`):
            ``"fit"`` (keep the aspect, pad), ``"crop"`` (cut the centre to the output's aspect: the same field of
            view for every scan width; use the mode the generator was trained with) or ``"stretch"``.
        max_per_class: at most this many images per class and per set (seeded choice); ``None``: all.
        feature_extractor: the network whose features the Frechet distance, KID, precision/recall and the
            feature-space privacy audit use. ``"oct"`` (the default; ``None`` and ``"auto"`` mean the same): the
            fixed OCT extractor shipped in ``bundles/oct_synthesis_eval/models/model.pt``, the same file for every
            user, run and data set, so its numbers compare across them; ``"train"``: the ``oct_classifier`` bundle
            trained here on the real training split (seed ``seed``; numbers comparable within one run only);
            ``"pixels"``: down-sampled pixels; or a TorchScript file or a bundle folder (its ``network_def`` and
            ``models/model.pt``). The report names the extractor and the SHA-256 of its weights.
        utility: run the train/test utility study (TRTR, TSTR, TRTS, augmentation); it trains classifiers.
        utility_seeds: seeds of the utility study (mean and spread over them).
        imbalance: class -> fraction of its real training images kept for the augmentation experiment (minority
            classes subsampled on purpose); ``"auto"``: every class but the largest kept at 25%; ``None``: skip.
        imbalance_seed: draw that subset once with this seed for every utility seed (a clinic's one fixed data set:
            the seeds then vary only the classifiers; ``medicraft subsample`` writes the same subset as a datalist to
            fine-tune a generator on); ``None``: each utility seed draws its own subset.
        classifier: overrides of :class:`~medicraft_monai.evaluation.utility.ClassifierSettings` (epochs, size, ...).
        anatomy: run the anatomical plausibility checks.
        anatomy_profile: the scan protocol the checks assume: "phantom" (the built-in phantom's 12 mm radial lines)
            or "spectralis" (6 mm horizontal line scans through the fovea, such as the OCT2017 sample).
        anatomy_validation_exams: phantom exams per injected failure mode used to report each check's sensitivity
            and specificity beside its results (0: skip).
        privacy_percentile: synthetic images closer to a training image than this percentile of the real
            test-to-train distances are flagged as possible copies.
        kid_subsets: subsets of the kernel inception distance.
        prdc_k: neighbours of precision/recall/density/coverage.
        ms_ssim_pairs: image pairs per class for the MS-SSIM diversity.
        grid_per_class: real and synthetic images per class in the sample grid.
        closest_pairs: closest synthetic-training pairs shown in the report.
        batch_size: batch size of feature extraction.
        seed: seed of every random choice.
        device: "cpu", "cuda" or "auto" (CUDA when available).
        progress: show progress bars.
    """

    image_size: tuple[int, int] | None = None
    crop_height: int | None = 256
    resize_mode: str = "fit"
    max_per_class: int | None = 200
    feature_extractor: str | None = "oct"
    utility: bool = True
    utility_seeds: tuple[int, ...] = (0, 1, 2)
    imbalance: Mapping[str, float] | str | None = "auto"
    imbalance_seed: int | None = None
    classifier: dict[str, Any] = field(default_factory=dict)
    anatomy: bool = True
    anatomy_profile: str = "phantom"
    anatomy_validation_exams: int = 4
    privacy_percentile: float = 1.0
    kid_subsets: int = 10
    prdc_k: int = 5
    ms_ssim_pairs: int = 200
    grid_per_class: int = 6
    closest_pairs: int = 8
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        from medicraft_monai.utils import flag

        # "--utility false" on a bundle command line is the string "false"
        self.utility, self.anatomy, self.progress = flag(self.utility), flag(self.anatomy), flag(self.progress)
        if self.feature_extractor in (None, "", "auto"):
            from medicraft_monai.metrics.features import DEFAULT_EXTRACTOR

            self.feature_extractor = DEFAULT_EXTRACTOR
        self.feature_extractor = str(self.feature_extractor)
        if self.anatomy_profile not in ANATOMY_PROFILES:
            raise ValueError(f"anatomy_profile must be one of {ANATOMY_PROFILES}, got {self.anatomy_profile!r}")
        if self.image_size is not None:
            if len(self.image_size) != 2 or min(int(v) for v in self.image_size) < 8:
                raise ValueError(f"image_size must be (H, W) with both at least 8, got {self.image_size}")
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if self.max_per_class is not None and int(self.max_per_class) < 2:
            raise ValueError(f"max_per_class must be at least 2 (or None), got {self.max_per_class}")
        if not 0.0 < float(self.privacy_percentile) < 50.0:
            raise ValueError(f"privacy_percentile must be in (0, 50), got {self.privacy_percentile}")
        if isinstance(self.imbalance, str) and self.imbalance != "auto":
            raise ValueError(f"imbalance must be a class -> fraction mapping, 'auto' or None, got {self.imbalance!r}")
        if self.imbalance_seed is not None and (
            isinstance(self.imbalance_seed, bool) or not isinstance(self.imbalance_seed, int)
        ):
            raise ValueError(f"imbalance_seed must be an integer or None, got {self.imbalance_seed!r}")
        self.utility_seeds = tuple(int(s) for s in self.utility_seeds)
        if self.utility and not self.utility_seeds:
            raise ValueError("utility_seeds is empty")

    @classmethod
    def tiny(cls, **overrides: Any) -> EvaluationSettings:
        """Settings that run the whole evaluation on a CPU in about a minute (tests; the numbers are rough)."""
        base = dict(
            image_size=(32, 64),
            max_per_class=12,
            utility_seeds=(0,),
            classifier={"tiny": True},
            anatomy_validation_exams=1,
            kid_subsets=3,
            ms_ssim_pairs=20,
            grid_per_class=3,
            closest_pairs=4,
            device="cpu",
            progress=False,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> EvaluationSettings:
        """Build settings from a mapping (a bundle config or CLI options), refusing unknown keys."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown evaluation setting(s) {unknown}; known: {sorted(known)}")
        if values.get("image_size") is not None:
            values["image_size"] = tuple(values["image_size"])
        if values.get("utility_seeds") is not None:
            seeds = values["utility_seeds"]
            values["utility_seeds"] = (seeds,) if isinstance(seeds, int) else tuple(seeds)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy (for the report and the resume check)."""
        d = asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size else None
        d["utility_seeds"] = list(self.utility_seeds)
        d["imbalance"] = dict(self.imbalance) if isinstance(self.imbalance, Mapping) else self.imbalance
        return d
