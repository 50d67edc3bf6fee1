"""Evaluate a synthetic OCT data set against the real one it was made from: one call, one report.

:func:`evaluate_synthesis` reads a real datalist (training and test splits, by patient) and a synthetic datalist
(``medicraft multiply`` writes one), and measures

- **utility**: classifiers trained and tested on real and synthetic data (TRTR, TSTR, TRTS, augmentation of an
  imbalanced real training set), several seeds;
- **fidelity**: Frechet distance, KID, precision/recall and density/coverage in the feature space of an
  OCT-trained network (by default the fixed one shipped in ``bundles/oct_synthesis_eval``, the same for every run;
  the ``features`` section names it with the SHA-256 of its weights), and the SSIM of each synthetic image to its
  nearest real image;
- **diversity**: mean pairwise MS-SSIM within each class, synthetic beside real;
- **privacy**: the memorisation audit (distance of each synthetic image to its nearest real training image against
  the real test-to-train distances), in feature and pixel space;
- **anatomy**: the automated plausibility checks, synthetic beside real, with the checks' own sensitivity and
  specificity measured on phantoms with injected failure modes.

Every section's result is saved as soon as it is done (``sections/<name>.json``), so an interrupted run resumes
where it stopped; the report (``report.md`` with PNG figures) and ``metrics.json`` are written at the end.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medicraft_monai.data.datalist import datalist_class_names, load_datalist
from medicraft_monai.data.errors import EmptyDatasetError, OCTDataError, SplitLeakError
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.evaluation.settings import EvaluationSettings
from medicraft_monai.utils import file_sha256, write_json_atomic

__all__ = ["EvaluationError", "anatomy_checker", "evaluate_synthesis"]

logger = logging.getLogger(__name__)

SECTIONS = ("data", "utility", "features", "fidelity", "diversity", "privacy", "anatomy")


class EvaluationError(ValueError):
    """The inputs cannot be evaluated as asked (the message says which file and why)."""


def _say(message: str) -> None:
    print(f"[medicraft evaluate] {message}", flush=True)


def _class_names(datalist: Mapping[str, Any], path: Path) -> list[str]:
    try:
        return datalist_class_names(datalist)
    except OCTDataError as err:
        raise EvaluationError(f"{path}: {err.reason}") from None


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class _Sections:
    """Per-section results on disk, so that an interrupted evaluation resumes (and a changed one refuses to)."""

    def __init__(self, out: Path, identity: Mapping[str, Any]) -> None:
        self.folder = out / "sections"
        self.folder.mkdir(parents=True, exist_ok=True)
        job = out / "evaluation_job.json"
        if job.is_file():
            old = json.loads(job.read_text())
            if old != json.loads(json.dumps(identity)):
                changed = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
                raise EvaluationError(
                    f"{out}: holds an evaluation of other inputs or settings (differs in {changed}); "
                    "choose another output folder or pass overwrite=True"
                )
        else:
            write_json_atomic(job, identity)

    def get(self, name: str) -> dict[str, Any] | None:
        path = self.folder / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, name: str, value: Mapping[str, Any]) -> dict[str, Any]:
        path = self.folder / f"{name}.json"
        write_json_atomic(path, value)
        return json.loads(path.read_text())

    def run(self, name: str, compute: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        done = self.get(name)
        if done is not None:
            _say(f"{name}: already done (resumed from {self.folder / (name + '.json')})")
            return done
        start = time.time()
        result = dict(compute())
        result["seconds"] = round(time.time() - start, 2)
        return self.put(name, result)


def _cap_per_class(items: Sequence[dict[str, Any]], cap: int | None, seed: int) -> list[dict[str, Any]]:
    """At most ``cap`` items per class, a seeded choice that keeps the datalist's order."""
    if cap is None:
        return list(items)
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        by_class.setdefault(int(it[OCTKeys.LABEL]), []).append(i)
    keep: set[int] = set()
    for idx in by_class.values():
        keep.update(idx if len(idx) <= cap else rng.choice(idx, size=cap, replace=False).tolist())
    return [it for i, it in enumerate(items) if i in keep]


def _check_inputs(
    real: Mapping[str, Any], synthetic: Mapping[str, Any], real_path: Path, synth_path: Path
) -> tuple[list[str], list[dict], list[dict], list[dict]]:
    class_names = _class_names(real, real_path)
    synth_names = _class_names(synthetic, synth_path)
    if synth_names != class_names:
        raise EvaluationError(f"{synth_path}: classes {synth_names} differ from the real datalist's {class_names}")
    train = [it for it in real.get("training", []) if not it.get(OCTKeys.SYNTHETIC)]
    test = [it for it in real.get("test", []) if not it.get(OCTKeys.SYNTHETIC)]
    synth = [
        it
        for split in ("training", "validation", "test")
        for it in synthetic.get(split, [])
        if it.get(OCTKeys.SYNTHETIC, True)
    ]
    for name, items, path in (
        ("training", train, real_path),
        ("test", test, real_path),
        ("synthetic", synth, synth_path),
    ):
        if not items:
            raise EmptyDatasetError(path, f"no {name} images to evaluate")
    leaked = {it.get(OCTKeys.PATIENT_ID) for it in train} & {it.get(OCTKeys.PATIENT_ID) for it in test} - {None, ""}
    if leaked:
        raise SplitLeakError(
            real_path,
            f"patients {sorted(leaked)[:5]} are in both the training and the test split; the test set must be "
            "patient-disjoint from everything the generator saw",
        )
    real_hashes = {it.get("sha256") for it in train} - {None}
    copied_into_test = [it for it in test if it.get("sha256") in real_hashes]
    if copied_into_test:
        raise SplitLeakError(real_path, f"{len(copied_into_test)} test images are byte-identical to training images")
    return class_names, train, test, synth


def evaluate_synthesis(
    real_datalist: str | PathLike,
    synthetic_datalist: str | PathLike,
    output_dir: str | PathLike,
    settings: EvaluationSettings | Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate a synthetic data set; write ``report.md``, figures and ``metrics.json`` to ``output_dir``.

    Args:
        real_datalist: the real datalist (its ``training`` split is what the generator saw, its ``test`` split the
            held-out patients every test set is drawn from).
        synthetic_datalist: the synthetic images (``datalist_synthetic.json`` of ``medicraft multiply``; any
            datalist whose items are marked ``synthetic``).
        output_dir: where the report goes; an interrupted run in the same folder resumes.
        settings: :class:`EvaluationSettings` or a mapping of its fields.
        overwrite: start afresh in a folder that holds an evaluation of other inputs or settings.

    Returns:
        every number of the report (also written to ``metrics.json``).

    Raises:
        OCTDataError: a missing, empty or unreadable datalist or image (named in the message), or a patient leak.
        EvaluationError: inputs that do not fit together (different classes, a folder of another evaluation).
    """
    s = settings if isinstance(settings, EvaluationSettings) else EvaluationSettings.from_mapping(settings)
    real_path, synth_path, out = Path(real_datalist), Path(synthetic_datalist), Path(output_dir)
    real = load_datalist(real_path)
    synthetic = load_datalist(synth_path, check=False)
    class_names, train_items, test_items, synth_items = _check_inputs(real, synthetic, real_path, synth_path)
    if s.anatomy:
        anatomy_checker(s.anatomy_profile)  # an unknown profile fails before the output folder is made
    given_extractor = _given_feature_extractor(s)  # a missing or unreadable one too
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for p in [out / "evaluation_job.json", *(out / "sections").glob("*.json")]:
            p.unlink(missing_ok=True)
    identity = {
        "real_datalist": file_sha256(real_path),
        "synthetic_datalist": file_sha256(synth_path),
        "settings": s.to_dict() | {"progress": None},
        # a changed extractor file changes every feature-space number: no resuming across it
        "feature_extractor_sha256": given_extractor.checksum if given_extractor is not None else None,
    }
    sections = _Sections(out, identity)
    device = _resolve_device(s.device)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    start = time.time()

    train_items = _cap_per_class(train_items, s.max_per_class, s.seed)
    test_items = _cap_per_class(test_items, s.max_per_class, s.seed + 1)
    synth_items = _cap_per_class(synth_items, s.max_per_class, s.seed + 2)
    image_size = s.image_size or _image_size_of(synth_items[0])
    n_steps = 7
    _say(
        f"1/{n_steps} loading images at {image_size[0]}x{image_size[1]}: {len(train_items)} real training, "
        f"{len(test_items)} real test, {len(synth_items)} synthetic"
    )
    from medicraft_monai.metrics.images import load_images

    crop = s.crop_height or None
    mode = s.resize_mode
    x_train, train_items = load_images(train_items, image_size, crop_height=crop, resize_mode=mode, progress=s.progress)
    x_test, test_items = load_images(test_items, image_size, crop_height=crop, resize_mode=mode, progress=s.progress)
    x_synth, synth_items = load_images(synth_items, image_size, crop_height=None, resize_mode=mode, progress=s.progress)
    y_train, y_test, y_synth = (
        np.array([int(it[OCTKeys.LABEL]) for it in items]) for items in (train_items, test_items, synth_items)
    )
    sections.run(
        "data",
        lambda: {
            "class_names": class_names,
            "image_size": list(image_size),
            "resize_mode": mode,
            "counts": {
                name: {c: int((y == i).sum()) for i, c in enumerate(class_names)}
                for name, y in (("real_training", y_train), ("real_test", y_test), ("synthetic", y_synth))
            },
            "real_datalist": str(real_path.resolve()),
            "synthetic_datalist": str(synth_path.resolve()),
            "synthetic_provenance": {k: v for k, v in (synthetic.get("synthetic") or {}).items() if k != "planned"},
        },
    )
    _sample_grid(figures / "samples.png", class_names, x_train, y_train, x_synth, y_synth, s.grid_per_class)

    # -- utility -----------------------------------------------------------------------------------------------
    from medicraft_monai.evaluation.utility import ClassifierSettings

    clf = _classifier_settings(ClassifierSettings, s, image_size, device)
    if s.utility:
        _say(f"2/{n_steps} utility: classifiers on real and synthetic data, seeds {list(s.utility_seeds)}")
        sections.run("utility", lambda: _utility(s, clf, class_names, train_items, test_items, synth_items, out))
    else:
        _say(f"2/{n_steps} utility: skipped (utility=False)")

    # -- features ------------------------------------------------------------------------------------------------
    named = (
        given_extractor.name
        if given_extractor is not None
        else "oct_classifier trained here on the real training split"
    )
    _say(f"3/{n_steps} features for fidelity and privacy: {named}")
    extractor, extractor_info = _feature_extractor(s, clf, class_names, train_items, out, device, given_extractor)
    from medicraft_monai.metrics.features import extract_features, pixel_features

    f_train, f_test, f_synth = (
        extract_features(extractor, x, batch_size=s.batch_size, device=device) for x in (x_train, x_test, x_synth)
    )
    sections.run("features", lambda: extractor_info | {"dimension": int(f_train.shape[1])})

    # -- fidelity ------------------------------------------------------------------------------------------------
    _say(f"4/{n_steps} fidelity: Frechet distance, KID, precision/recall, density/coverage, nearest-real SSIM")
    sections.run(
        "fidelity",
        lambda: _fidelity(s, class_names, f_train, y_train, f_synth, y_synth, f_test, x_train, x_synth, x_test),
    )

    # -- diversity -----------------------------------------------------------------------------------------------
    _say(f"5/{n_steps} diversity: pairwise MS-SSIM within each class")
    sections.run("diversity", lambda: _diversity(s, class_names, x_train, y_train, x_synth, y_synth))

    # -- privacy -------------------------------------------------------------------------------------------------
    _say(f"6/{n_steps} privacy: memorisation audit against the real training images")
    sections.run(
        "privacy",
        lambda: _privacy(
            s,
            figures,
            f_train,
            f_test,
            f_synth,
            pixel_features(x_train),
            pixel_features(x_test),
            pixel_features(x_synth),
            x_train,
            x_synth,
            train_items,
            synth_items,
        ),
    )

    # -- anatomy -------------------------------------------------------------------------------------------------
    if s.anatomy:
        _say(f"7/{n_steps} anatomy: plausibility checks per B-scan (and the checks' own validation on phantoms)")
        sections.run("anatomy", lambda: _anatomy(s, class_names, x_test, y_test, x_synth, y_synth, image_size))
    else:
        _say(f"7/{n_steps} anatomy: skipped (anatomy=False)")

    metrics = {name: sections.get(name) for name in SECTIONS if sections.get(name) is not None}
    metrics["settings"] = s.to_dict()
    metrics["seconds"] = round(time.time() - start, 1)
    from medicraft_monai.evaluation.report import write_report

    write_json_atomic(out / "metrics.json", metrics)
    report = write_report(out, metrics)
    _say(f"done in {metrics['seconds']:.0f} s: {report}")
    metrics["report"] = str(report)
    return metrics


def _image_size_of(item: Mapping[str, Any]) -> tuple[int, int]:
    from medicraft_monai.data.io import probe_image

    info = probe_image(item[OCTKeys.IMAGE])
    shape = info["shape"] if isinstance(info, Mapping) else info.shape
    return int(shape[-2]), int(shape[-1])


def _classifier_settings(cls: Any, s: EvaluationSettings, image_size: tuple[int, int], device: torch.device) -> Any:
    """The utility study's classifier settings: the evaluation's image size, device and crop, then the user's."""
    overrides = dict(s.classifier)
    tiny = bool(overrides.pop("tiny", False))
    base = cls.tiny() if tiny else cls()
    values: dict[str, Any] = {"image_size": tuple(image_size), "device": str(device)}
    values.update(overrides)
    unknown = sorted(k for k in values if not hasattr(base, k))
    if unknown:
        raise EvaluationError(f"unknown classifier setting(s) {unknown}; see medicraft_monai.evaluation.utility")
    for key, value in values.items():
        setattr(base, key, value)
    if s.crop_height:
        base.overrides = {"crop_height": int(s.crop_height), **base.overrides}
    base.overrides = {"resize_mode": s.resize_mode, **base.overrides}
    return base


def _resolve_imbalance(
    s: EvaluationSettings, class_names: list[str], train_items: list[dict]
) -> dict[str, float] | None:
    if s.imbalance is None:
        return None
    if isinstance(s.imbalance, Mapping):
        unknown = sorted(set(s.imbalance) - set(class_names))
        if unknown:
            raise EvaluationError(f"imbalance names unknown classes {unknown}; classes: {class_names}")
        return {str(k): float(v) for k, v in s.imbalance.items()}
    counts = np.bincount([int(it[OCTKeys.LABEL]) for it in train_items], minlength=len(class_names))
    largest = int(np.argmax(counts))
    return {c: (1.0 if i == largest else 0.25) for i, c in enumerate(class_names)}


def _utility(s, clf, class_names, train_items, test_items, synth_items, out: Path) -> dict[str, Any]:
    from medicraft_monai.evaluation.utility import utility_study

    return utility_study(
        train_items,
        test_items,
        synth_items,
        class_names,
        clf,
        seeds=s.utility_seeds,
        output_dir=out / "utility",
        imbalance=_resolve_imbalance(s, class_names, train_items),
        imbalance_seed=s.imbalance_seed,
        progress=s.progress,
    )


def _given_feature_extractor(s: EvaluationSettings):
    """The feature extractor the settings name, loaded (so checked), or ``None`` when one is trained here
    (``feature_extractor="train"``)."""
    from medicraft_monai.metrics.features import TRAIN_EXTRACTOR, load_feature_extractor

    return None if s.feature_extractor == TRAIN_EXTRACTOR else load_feature_extractor(s.feature_extractor)


def _feature_extractor(s, clf, class_names, train_items, out: Path, device: torch.device, given=None):
    """The feature extractor on ``device`` and what the report says of it (:meth:`FeatureExtractor.describe`: name,
    weights file and SHA-256, input size, resizing; ``spec``: the setting it came from)."""
    from medicraft_monai.metrics.features import FeatureExtractor

    if given is not None:
        return given.to(device).eval(), given.describe() | {"spec": str(s.feature_extractor)}
    from medicraft_monai.evaluation.utility import train_classifier

    folder = out / "feature_extractor"
    ckpt = folder / "models" / "model.pt"  # where train_classifier writes it: a resumed run reuses it
    if not ckpt.is_file():
        ckpt = Path(train_classifier(train_items, class_names, clf, seed=s.seed, output_dir=folder))
    extractor = FeatureExtractor.from_bundle(
        clf.bundle_root,
        ckpt_path=ckpt,
        overrides={**clf.bundle_overrides(), "class_names": list(class_names)},
        name=f"oct_classifier trained here on the real training split (seed {s.seed})",
    )
    return extractor.to(device).eval(), extractor.describe() | {"spec": str(s.feature_extractor)}


def _per_class(fn: Callable[..., dict], class_names, a, ya, b, yb, min_n: int = 2) -> dict[str, Any]:
    result = {}
    for i, c in enumerate(class_names):
        ia, ib = np.flatnonzero(ya == i), np.flatnonzero(yb == i)
        if len(ia) >= min_n and len(ib) >= min_n:
            result[c] = fn(a[ia], b[ib])
        else:
            result[c] = None
    return result


def _fidelity(s, class_names, f_train, y_train, f_synth, y_synth, f_test, x_train, x_synth, x_test) -> dict[str, Any]:
    from medicraft_monai.metrics.fidelity import fidelity_report

    def block(real: torch.Tensor, fake: torch.Tensor, real_images=None, fake_images=None) -> dict[str, Any]:
        k = max(1, min(s.prdc_k, len(real) - 1, len(fake) - 1))
        out = fidelity_report(
            real,
            fake,
            real_images,
            fake_images,
            k=k,
            kid_subsets=s.kid_subsets,
            seed=s.seed,
            ssim_kwargs={"progress": s.progress},
        )
        return _drop_long_lists(out)

    return {
        "overall": block(f_train, f_synth, x_train, x_synth),
        # the same numbers for two real sets (training vs held-out patients): what "as good as real" looks like
        "real_test_reference": block(f_train, f_test, x_train, x_test),
        "per_class": _per_class(block, class_names, f_train, y_train, f_synth, y_synth, min_n=3),
    }


def _diversity(s, class_names, x_train, y_train, x_synth, y_synth) -> dict[str, Any]:
    from medicraft_monai.metrics.diversity import diversity_by_class

    names = list(class_names)
    real = diversity_by_class(x_train, [names[i] for i in y_train], max_pairs=s.ms_ssim_pairs, seed=s.seed)
    synth = diversity_by_class(x_synth, [names[i] for i in y_synth], max_pairs=s.ms_ssim_pairs, seed=s.seed)
    return {"real": real, "synthetic": synth}


def _privacy(
    s, figures: Path, f_train, f_test, f_synth, p_train, p_test, p_synth, x_train, x_synth, train_items, synth_items
) -> dict[str, Any]:
    from medicraft_monai.metrics.privacy import memorisation_audit, save_closest_pairs

    audit = memorisation_audit(
        f_synth,
        f_train,
        f_test,
        synth_pixels=p_synth,
        train_pixels=p_train,
        test_pixels=p_test,
        percentile=s.privacy_percentile,
        top_k=s.closest_pairs,
    )
    for name, space in audit["spaces"].items():
        pairs = space.get("closest_pairs") or []
        if pairs:
            save_closest_pairs(pairs, x_synth, x_train, figures / f"closest_pairs_{name}.png")
            space["closest_pairs_files"] = [
                {
                    "synthetic": synth_items[int(p["synthetic_index"])][OCTKeys.IMAGE],
                    "training": train_items[int(p["train_index"])][OCTKeys.IMAGE],
                    "distance": float(p["distance"]),
                }
                for p in pairs
            ]
    return _drop_long_lists(audit)


#: per-image values the metric functions return; the JSON keeps their summaries only
_PER_IMAGE_KEYS = {"per_image", "nearest_index", "nearest_train_index", "distances"}


def _drop_long_lists(value: Any) -> Any:
    """A copy of a metrics dict without its per-image lists (they are summarised there already)."""
    if isinstance(value, Mapping):
        return {k: _drop_long_lists(v) for k, v in value.items() if k not in _PER_IMAGE_KEYS}
    return value


def anatomy_checker(profile: str = "phantom"):
    """The :class:`~medicraft_monai.metrics.anatomy.AnatomyChecker` preset of a scan protocol ("phantom" or
    "spectralis")."""
    from medicraft_monai.metrics.anatomy import AnatomyChecker

    if profile == "phantom":
        return AnatomyChecker.for_phantom()
    if profile == "spectralis":
        return AnatomyChecker.for_spectralis()
    raise ValueError(f"anatomy_profile must be 'phantom' or 'spectralis', got {profile!r}")


def _anatomy(s, class_names, x_test, y_test, x_synth, y_synth, image_size) -> dict[str, Any]:
    from medicraft_monai.metrics.anatomy import check_images, summarise, validate_on_phantom

    names = list(class_names)
    checker = anatomy_checker(s.anatomy_profile)
    synth = summarise(check_images(x_synth, progress=s.progress, checker=checker), [names[i] for i in y_synth])
    real = summarise(check_images(x_test, progress=s.progress, checker=checker), [names[i] for i in y_test])
    result = {"profile": s.anatomy_profile, "checker": checker.settings(), "synthetic": synth, "real_test": real}
    if s.anatomy_validation_exams > 0:
        validation = validate_on_phantom(
            n_exams=s.anatomy_validation_exams, seed=10_000 + s.seed, image_size=tuple(image_size), progress=s.progress
        )
        validation.pop("records", None)
        result["validation_on_phantom"] = validation
    return result


def _sample_grid(path: Path, class_names, x_train, y_train, x_synth, y_synth, per_class: int) -> Path:
    from medicraft_monai.visualize import save_image_grid

    rows, labels = [], []
    for i, c in enumerate(class_names):
        real = [x_train[j, 0].numpy() for j in np.flatnonzero(y_train == i)[:per_class]]
        fake = [x_synth[j, 0].numpy() for j in np.flatnonzero(y_synth == i)[:per_class]]
        rows += [real, fake]
        labels += [
            f"{c} (real)" if real else f"{c} (real: none)",
            f"{c} (synthetic)" if fake else f"{c} (synthetic: none)",
        ]
    h, w = x_train.shape[-2:]
    scale = 256 / w
    return save_image_grid(path, rows, row_labels=labels, tile_size=(max(32, int(h * scale)), 256), label_width=150)
