"""The utility study of synthetic OCT data: does a classifier trained on it work on real images?

The study trains the ``oct_classifier`` bundle (``bundles/oct_classifier``) in-process, through
``monai.bundle.ConfigWorkflow`` with overrides and temporary datalists, so it runs exactly the code a user runs with
``python -m monai.bundle run``; there is no second trainer here.

Experiments (each with several seeds; mean, standard deviation and per-seed values of every metric, per-class
recall, F1 and AUC included):

- ``TRTR``: train on real, test on real (the reference).
- ``TSTR``: train on synthetic, test on real. Close to TRTR: the synthetic data carries the class information.
- ``TRTS``: train on real (the TRTR models), test on synthetic. Close to TRTR: synthetic images look like their
  class to a real-data classifier.
- with ``imbalance``: ``real_imbalanced`` (classes subsampled on purpose, seeded) against
  ``real_imbalanced_plus_synthetic`` (the same, topped up with synthetic images of the subsampled classes) and
  against the remedies a user would try first on the same subset: ``real_imbalanced_weighted`` (inverse-frequency
  class weights in the loss) and ``real_imbalanced_oversampled`` (balanced sampling). A ``minority`` block says,
  per subsampled class, whether synthetic images beat each of them by more than the seed spread.
- ``real_vs_synthetic`` (``detectability``): the same classifier learns to tell real training images from synthetic
  ones; the AUC of "synthetic" on held-out real test images against held-out synthetic ones (0.5:
  indistinguishable).

The test set is always the real test split (TRTS and ``real_vs_synthetic`` excepted), and it must share no patient
with the real training set (checked). A run whose training or test set lacks a class is not trained: it is reported
as ``not_comparable`` with the reason, and its metrics are ``None``, never a number.

Entry points: :class:`ClassifierSettings`, :func:`train_classifier`, :func:`evaluate_classifier`,
:func:`utility_study`.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medicraft_monai.bundles import bundle_path, config_files
from medicraft_monai.data.datalist import check_splits, subsample_classes, write_datalist
from medicraft_monai.data.errors import EmptyDatasetError, SplitLeakError
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.evaluation.workflow import run_bundle_workflow
from medicraft_monai.metrics.classification import classification_items, save_confusion_matrix

__all__ = [
    "DETECTABILITY_CLASSES",
    "EXPERIMENTS",
    "IMBALANCE_EXPERIMENTS",
    "SUMMARY_METRICS",
    "SYNTHETIC_TRAIN_FRACTION",
    "ClassifierSettings",
    "evaluate_classifier",
    "train_classifier",
    "utility_study",
]

logger = logging.getLogger(__name__)

SUMMARY_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
"""Scalar metrics summarised over seeds (per-class AUC, recall and F1 are summarised too, under ``auc``,
``recall`` and ``f1``)."""

IMBALANCE_EXPERIMENTS: tuple[str, ...] = (
    "real_imbalanced",
    "real_imbalanced_weighted",
    "real_imbalanced_oversampled",
    "real_imbalanced_plus_synthetic",
)
"""The experiments on the imbalanced real subset (the same images per seed), compared in the ``minority`` block."""

DETECTABILITY_CLASSES: tuple[str, str] = ("real", "synthetic")
"""The two classes of the ``real_vs_synthetic`` experiment."""

SYNTHETIC_TRAIN_FRACTION: float = 0.8
"""Fraction of the synthetic images the ``real_vs_synthetic`` detector trains on (seeded); the rest is its test."""

EXPERIMENTS: dict[str, str] = {
    "TRTR": "train on real, test on real",
    "TSTR": "train on synthetic, test on real",
    "TRTS": "train on real, test on synthetic",
    "real_imbalanced": "train on the real training set with classes subsampled on purpose, test on real",
    "real_imbalanced_plus_synthetic": "the imbalanced real set topped up with synthetic images, test on real",
    "real_imbalanced_weighted": "the imbalanced real set, inverse-frequency class weights in the loss, test on real",
    "real_imbalanced_oversampled": "the imbalanced real set drawn class-balanced (oversampling), test on real",
    "real_vs_synthetic": "tell real from synthetic images: real training vs synthetic images, tested on real test "
    "vs held-out synthetic images (AUC of 'synthetic'; 0.5: indistinguishable)",
}
"""The experiments of :func:`utility_study` and what they mean."""


def _default_bundle() -> Path:
    return bundle_path("oct_classifier")


@dataclass
class ClassifierSettings:
    """How :func:`train_classifier` and :func:`evaluate_classifier` run the ``oct_classifier`` bundle.

    Attributes:
        bundle_root: the bundle (default: the shipped ``oct_classifier``, :func:`medicraft_monai.bundles.bundle_path`).
        image_size: (H, W) the classifier works at.
        max_epochs: training epochs.
        batch_size: training batch size.
        learning_rate: AdamW learning rate.
        network: network overrides, e.g. ``{"init_features": 8, "growth_rate": 8, "block_config": [2, 2]}``.
        device: "cpu", "cuda:0", ... (``None``: the bundle's default, CUDA when available).
        class_weighting: "none", "inverse" or "effective" (cross-entropy class weights).
        balanced_sampling: draw classes equally often.
        val_interval: validation interval in epochs when validation items are given (the best model on
            validation balanced accuracy is kept); without them the last epoch's model is used.
        num_workers: data loader workers.
        cpu_bf16: bf16 autocast on CPU (``None``: the bundle's default, on when the CPU has native bf16).
        overrides: any other bundle config overrides.
    """

    bundle_root: Path = field(default_factory=_default_bundle)
    image_size: tuple[int, int] = (128, 256)
    max_epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-4
    network: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    class_weighting: str = "none"
    balanced_sampling: bool = False
    val_interval: int = 1
    num_workers: int = 0
    cpu_bf16: bool | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def tiny(cls, **changes: Any) -> ClassifierSettings:
        """Settings for tests and demos on a CPU: 32 x 64 images, a two-block DenseNet, a few epochs.

        ``changes`` replace fields; ``overrides`` given here are merged into the tiny ones.
        """
        base = cls(
            image_size=(32, 64),
            max_epochs=6,
            batch_size=8,
            learning_rate=3e-3,
            network={"init_features": 8, "growth_rate": 8, "block_config": [2, 2]},
            device="cpu",
            cpu_bf16=False,
            overrides={"log_interval": 1000, "cache_rate": 1.0},
        )
        changes["overrides"] = {**base.overrides, **dict(changes.get("overrides") or {})}
        return replace(base, **changes)

    def bundle_overrides(self) -> dict[str, Any]:
        """The settings as bundle config overrides."""
        out: dict[str, Any] = {
            "image_size": [int(s) for s in self.image_size],
            "max_epochs": int(self.max_epochs),
            "batch_size": int(self.batch_size),
            "learning_rate": float(self.learning_rate),
            "class_weighting": str(self.class_weighting),
            "balanced_sampling": bool(self.balanced_sampling),
            "num_workers": int(self.num_workers),
            **dict(self.network),
        }
        if self.device is not None:
            out["device"] = f"$torch.device({str(self.device)!r})"
        if self.cpu_bf16 is not None:
            out["cpu_bf16"] = bool(self.cpu_bf16)
        out.update(self.overrides)
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-able copy (for reports)."""
        d = asdict(self)
        d["bundle_root"] = str(self.bundle_root)
        d["image_size"] = list(self.image_size)
        return d


# --------------------------------------------------------------------------------------------------------------------
# running the bundle
# --------------------------------------------------------------------------------------------------------------------
def _labelled(items: Sequence[Mapping[str, Any]], class_names: Sequence[str], what: str) -> list[dict[str, Any]]:
    """Items with ``label`` = index in ``class_names`` and ``class_name`` set (an unknown class raises)."""
    if not items:
        raise EmptyDatasetError(None, f"{what}: no items")
    data = {"labels": {str(i): str(c) for i, c in enumerate(class_names)}, "training": list(items)}
    return classification_items(data, "training", class_names)


def _write_datalist(path: Path, class_names: Sequence[str], **splits: Sequence[Mapping[str, Any]]) -> Path:
    data: dict[str, Any] = {
        "name": "medicraft utility study",
        "labels": {str(i): str(c) for i, c in enumerate(class_names)},
        "num_classes": len(class_names),
        "training": [],
        "validation": [],
        "test": [],
    }
    data.update({k: [dict(it) for it in v] for k, v in splits.items()})
    return write_datalist(path, data)


def _run_workflow(config_files: Sequence[Path], settings: ClassifierSettings, **overrides: Any) -> None:
    root = Path(settings.bundle_root)
    run_bundle_workflow(config_files, root / "configs" / "metadata.json", {**settings.bundle_overrides(), **overrides})


def train_classifier(
    train_items: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    settings: ClassifierSettings | None = None,
    seed: int = 0,
    output_dir: str | PathLike | None = None,
    val_items: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Train the ``oct_classifier`` bundle on ``train_items``; return the weights (``models/model.pt``).

    Runs the bundle's ``configs/train.json`` in-process with ``bundle_root=output_dir`` and a datalist written to
    ``output_dir/datalist.json``. With ``val_items`` the model with the best validation balanced accuracy is kept
    (every ``settings.val_interval`` epochs); without them, the model of the last epoch.

    Args:
        train_items: datalist items (``image`` and ``label``/``class_name``).
        class_names: the classes, in output order.
        settings: how to run the bundle (default :class:`ClassifierSettings`).
        seed: the run's seed (weights, augmentation, batch order).
        output_dir: where the run writes (default: a new temporary folder, kept).
        val_items: optional validation items.
    """
    settings = settings or ClassifierSettings()
    out = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="oct_classifier_"))
    out.mkdir(parents=True, exist_ok=True)
    train = _labelled(train_items, class_names, "train_classifier")
    val = _labelled(val_items, class_names, "train_classifier validation") if val_items else []
    datalist = _write_datalist(out / "datalist.json", class_names, training=train, validation=val)
    root = Path(settings.bundle_root)
    _run_workflow(
        config_files(root, "train.json"),
        settings,
        bundle_root=str(out),
        datalist=str(datalist),
        class_names=[str(c) for c in class_names],
        seed=int(seed),
        val_interval=int(settings.val_interval) if val else 0,
    )
    ckpt = out / "models" / "model.pt"
    if not ckpt.is_file():
        raise RuntimeError(f"{out}: training finished without writing {ckpt.name} (no validation run?)")
    return ckpt


def evaluate_classifier(
    ckpt: str | PathLike,
    items: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    settings: ClassifierSettings | None = None,
    output_dir: str | PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate weights ``ckpt`` on ``items`` with the bundle's ``evaluate.json``.

    Returns :func:`~medicraft_monai.metrics.classification.classification_metrics`'s dictionary plus
    ``predictions`` (per image: ``image``, ``true_class``, ``predicted_class``, ``probabilities``). The bundle's
    files (``metrics.json``, ``predictions.csv``, ``confusion_matrix.png``) go to ``output_dir`` when given.
    """
    settings = settings or ClassifierSettings()
    test = _labelled(items, class_names, "evaluate_classifier")
    root = Path(settings.bundle_root)
    with tempfile.TemporaryDirectory(prefix="oct_classifier_eval_") as tmp:
        out = Path(output_dir) if output_dir is not None else Path(tmp) / "eval"
        datalist = _write_datalist(Path(tmp) / "datalist.json", class_names, test=test)
        _run_workflow(
            config_files(root, "train.json", "evaluate.json"),
            settings,
            bundle_root=str(tmp),
            datalist=str(datalist),
            class_names=[str(c) for c in class_names],
            ckpt_path=str(ckpt),
            output_dir=str(out),
            eval_split="test",
        )
        with open(out / "metrics.json") as f:
            result = json.load(f)
        with open(out / "predictions.json") as f:
            result["predictions"] = json.load(f)["predictions"]
    return result


# --------------------------------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------------------------------
def _top_up(
    imbalanced: Sequence[dict[str, Any]],
    full: Sequence[dict[str, Any]],
    synthetic: Sequence[dict[str, Any]],
    classes: Sequence[int],
    seed: int,
    fill: str,
) -> list[dict[str, Any]]:
    """The imbalanced set plus synthetic images of ``classes``: back to the full set's count ("restore") or all."""
    rng = np.random.default_rng([int(seed), 0x5F])
    out = list(imbalanced)
    for c in classes:
        pool = [it for it in synthetic if it[OCTKeys.LABEL] == c]
        want = len(pool)
        if fill == "restore":
            want = sum(it[OCTKeys.LABEL] == c for it in full) - sum(it[OCTKeys.LABEL] == c for it in imbalanced)
        want = min(want, len(pool))
        if want > 0:
            out += [pool[i] for i in sorted(rng.choice(len(pool), size=want, replace=False).tolist())]
    return out


def _variant(settings: ClassifierSettings, class_weighting: str, balanced_sampling: bool) -> ClassifierSettings:
    """``settings`` with exactly this class weighting and sampling (also where ``overrides`` named them)."""
    rest = {k: v for k, v in settings.overrides.items() if k not in ("class_weighting", "balanced_sampling")}
    return replace(settings, class_weighting=class_weighting, balanced_sampling=balanced_sampling, overrides=rest)


def _not_comparable(
    train: Sequence[Mapping[str, Any]],
    test: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    train_source: str,
    test_source: str,
) -> str | None:
    """Why a run cannot be compared with the others (a class without an image in its training or test set), or
    ``None``."""
    reasons = []
    for items, which, source in ((train, "training", train_source), (test, "test", test_source)):
        present = {int(it[OCTKeys.LABEL]) for it in items}
        reasons += [
            f"class {name} has no image in the {which} set ({source})"
            for c, name in enumerate(class_names)
            if c not in present
        ]
    return "; ".join(reasons) or None


def _not_comparable_run(reason: str, class_names: Sequence[str], num_samples: int) -> dict[str, Any]:
    """The record of a run that was not made: every class-dependent metric ``None``, with the reason."""
    return {
        "not_comparable": reason,
        "num_samples": int(num_samples),
        "class_names": list(class_names),
        **{m: None for m in SUMMARY_METRICS},
        "auc": {c: None for c in class_names},
        "confusion_matrix": None,
        "per_class": {c: {"sensitivity": None, "f1": None, "auc": None} for c in class_names},
    }


def _summary(values: Sequence[float | None], not_comparable: str | None = None) -> dict[str, Any]:
    """Mean, sample standard deviation and per-seed values; ``mean`` and ``std`` are ``None`` with the reason when a
    seed's run was not comparable."""
    if not_comparable:
        return {
            "mean": None,
            "std": None,
            "values": [None if v is None else float(v) for v in values],
            "not_comparable": not_comparable,
        }
    found = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return {
        "mean": float(np.mean(found)) if found else None,
        "std": float(np.std(found, ddof=1)) if len(found) > 1 else (0.0 if found else None),
        "values": [None if v is None else float(v) for v in values],
    }


def _aggregate(runs: Sequence[dict[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    reasons = list(dict.fromkeys(r["not_comparable"] for r in runs if r.get("not_comparable")))
    why = "; ".join(reasons) or None
    metrics: dict[str, Any] = {m: _summary([r[m] for r in runs], why) for m in SUMMARY_METRICS}
    metrics["auc"] = {c: _summary([r["auc"][c] for r in runs], why) for c in class_names}
    metrics["recall"] = {c: _summary([r["per_class"][c]["sensitivity"] for r in runs], why) for c in class_names}
    metrics["f1"] = {c: _summary([r["per_class"][c]["f1"] for r in runs], why) for c in class_names}
    cm = None if why else np.mean([np.asarray(r["confusion_matrix"], dtype=float) for r in runs], axis=0).tolist()
    return {"not_comparable": why, "metrics": metrics, "confusion_matrix_mean": cm}


def _beats(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Does summary ``a`` beat summary ``b`` by more than the seed spread (see :func:`utility_study`)?"""
    reason = a.get("not_comparable") or b.get("not_comparable")
    if reason:
        return {"beats": None, "difference": None, "spread": None, "reason": f"not comparable: {reason}"}
    n = min(sum(v is not None for v in a["values"]), sum(v is not None for v in b["values"]))
    if a["mean"] is None or b["mean"] is None or n < 2:
        return {"beats": None, "difference": None, "spread": None, "reason": "not measurable: fewer than two seeds"}
    diff, spread = float(a["mean"] - b["mean"]), float(max(a["std"], b["std"]))
    return {"beats": diff > spread, "difference": diff, "spread": spread, "reason": None}


def _minority(experiments: Mapping[str, Any], imbalance: Mapping[str, float]) -> dict[str, Any]:
    """Per subsampled class: recall and F1 of each imbalance experiment, and whether synthetic images beat the others."""
    out: dict[str, Any] = {}
    for name, fraction in imbalance.items():
        if float(fraction) >= 1.0:
            continue
        block: dict[str, Any] = {"fraction_kept": float(fraction)}
        for metric in ("recall", "f1"):
            block[metric] = {
                e: {k: experiments[e]["metrics"][metric][name][k] for k in ("mean", "std")}
                for e in IMBALANCE_EXPERIMENTS
            }
        plus = experiments["real_imbalanced_plus_synthetic"]["metrics"]
        block["synthetic_beats"] = {
            e: {m: _beats(plus[m][name], experiments[e]["metrics"][m][name]) for m in ("recall", "f1")}
            for e in IMBALANCE_EXPERIMENTS[:-1]
        }
        out[name] = block
    return out


def _detectability_sets(
    real_train: Sequence[dict[str, Any]],
    real_test: Sequence[dict[str, Any]],
    synthetic: Sequence[dict[str, Any]],
    seed: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and test items of ``real_vs_synthetic`` for ``seed``.

    The synthetic set is split at random (seeded): :data:`SYNTHETIC_TRAIN_FRACTION` for training, the rest (at
    least one image) for testing. Training takes as many real training images as synthetic training images (a
    seeded subsample of the larger side); the test set is every real test image and every held-out synthetic one.
    """
    rng = np.random.default_rng([int(seed), 0xD7])
    order = rng.permutation(len(synthetic)).tolist()
    n_test = max(1, round((1.0 - SYNTHETIC_TRAIN_FRACTION) * len(synthetic))) if synthetic else 0
    syn_test = [synthetic[i] for i in sorted(order[:n_test])]
    syn_train = [synthetic[i] for i in sorted(order[n_test:])]
    n = min(len(real_train), len(syn_train))

    def pick(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [items[i] for i in sorted(rng.choice(len(items), size=n, replace=False).tolist())] if n else []

    def marked(items: Sequence[dict[str, Any]], cls: str) -> list[dict[str, Any]]:
        return [{OCTKeys.IMAGE: it[OCTKeys.IMAGE], OCTKeys.CLASS_NAME: cls} for it in items]

    real, synth = DETECTABILITY_CLASSES
    train = marked(pick(real_train), real) + marked(pick(syn_train), synth)
    test = marked(real_test, real) + marked(syn_test, synth)
    return train, test


def _detectability(
    real_train: Sequence[dict[str, Any]],
    real_test: Sequence[dict[str, Any]],
    synthetic: Sequence[dict[str, Any]],
    settings: ClassifierSettings,
    seeds: Sequence[int],
    root: Path,
    bar: Any,
) -> dict[str, Any]:
    names = list(DETECTABILITY_CLASSES)
    runs, train_sizes, test_sizes = [], [], []
    for seed in seeds:
        bar.set_postfix_str(f"seed {seed}, real_vs_synthetic")
        train, test = _detectability_sets(real_train, real_test, synthetic, seed)
        train = _labelled(train, names, "real_vs_synthetic training") if train else []
        test = _labelled(test, names, "real_vs_synthetic test")
        reason = _not_comparable(train, test, names, "real training vs synthetic", "real test vs held-out synthetic")
        if reason:
            run = _not_comparable_run(reason, names, len(test))
        else:
            ckpt = train_classifier(train, names, settings, seed=seed, output_dir=root / f"seed{seed}" / "detector")
            run = evaluate_classifier(
                ckpt, test, names, settings, output_dir=root / f"seed{seed}" / "real_vs_synthetic_eval"
            )
            run.pop("predictions", None)
            run["not_comparable"] = None
        runs.append(run)
        train_sizes.append(len(train))
        test_sizes.append(len(test))
        bar.update(1)
    agg = _aggregate(runs, names)
    return {
        "experiment": "real_vs_synthetic",
        "description": EXPERIMENTS["real_vs_synthetic"],
        "class_names": names,
        "synthetic_train_fraction": SYNTHETIC_TRAIN_FRACTION,
        "train_size": train_sizes,
        "test_size": test_sizes,
        "not_comparable": agg["not_comparable"],
        "auc": agg["metrics"]["auc"]["synthetic"],
        "metrics": agg["metrics"],
        "confusion_matrix_mean": agg["confusion_matrix_mean"],
        "runs": runs,
    }


def utility_study(
    real_train: Sequence[Mapping[str, Any]],
    real_test: Sequence[Mapping[str, Any]],
    synthetic: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    settings: ClassifierSettings | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    output_dir: str | PathLike | None = None,
    imbalance: Mapping[str, float] | None = None,
    imbalance_fill: str = "restore",
    progress: bool = True,
    detectability: bool = True,
    imbalance_seed: int | None = None,
) -> dict[str, Any]:
    """Train and test the ``oct_classifier`` bundle on real and synthetic data: TRTR, TSTR, TRTS, the imbalance
    experiments and real-vs-synthetic detectability.

    **Comparability.** A run whose training set or test set has no image of one of ``class_names`` is not made:
    it is not trained (a model that never saw a class, or a test without it, gives numbers that do not compare
    with the other experiments'). Its record carries ``not_comparable`` (e.g. ``"class NORMAL has no image in
    the training set (synthetic)"``) and ``None`` for every metric; the experiment's summaries then have
    ``mean`` and ``std`` ``None`` and the same ``not_comparable`` reason. TSTR with a synthetic set lacking a
    class, and TRTS with such a set as test, are reported so.

    **Imbalance.** With ``imbalance``, per seed one subset of the real training set is drawn
    (:func:`~medicraft_monai.data.datalist.subsample_classes` with that seed, or with ``imbalance_seed`` for every
    seed: a clinic's one fixed set, the seeds then vary only the classifiers' training) (``real_imbalanced``) and four
    classifiers train on it: as is, with inverse-frequency class weights in the
    cross-entropy (``real_imbalanced_weighted``: the bundle's ``class_weighting="inverse"``), with class-balanced
    sampling (``real_imbalanced_oversampled``: ``balanced_sampling=True``) and topped up with synthetic images
    (``real_imbalanced_plus_synthetic``). The weighted and oversampled runs use exactly one remedy each (the
    other off, whatever ``settings`` say); the other experiments use ``settings`` as given.

    The ``minority`` block compares them per subsampled class (fraction below 1): real + synthetic **beats**
    another experiment on a metric (recall or F1 of that class) when the difference of the two means over seeds is
    larger than the larger of the two sample standard deviations (``ddof=1``):
    ``mean(plus_synthetic) - mean(other) > max(std(plus_synthetic), std(other))``. With fewer than two seeds there
    is no spread: ``beats`` is ``None`` with ``reason`` "not measurable: fewer than two seeds"; a run that is not
    comparable gives ``None`` with its reason too. ``False`` means "no evidence that it is better", not "worse".

    **Detectability.** With ``detectability``, ``real_vs_synthetic`` trains the same bundle with the two classes
    ``"real"`` and ``"synthetic"``: per seed the synthetic set is split at random, 80 % for training and 20 % (at
    least one image) held out; training takes as many real training images as synthetic training images (a
    seeded subsample of the larger side); the test set is every real test image (never trained on) and the
    held-out synthetic images. The AUC of "synthetic" is 0.5 when the detector cannot tell them apart and 1.0
    when it tells every one. Differences of file format or resolution between the sets are features too: compare
    sets prepared alike.

    Args:
        real_train: real training items (``image``, ``label``/``class_name``, ``patient_id``).
        real_test: real test items, patient-disjoint from ``real_train``.
        synthetic: synthetic items (from ``medicraft multiply`` or any generator).
        class_names: the classes, in output order.
        settings: how to train (default :class:`ClassifierSettings`; :meth:`ClassifierSettings.tiny` for tests).
            Models are trained for ``max_epochs`` without validation (the test set is never used for selection).
        seeds: one run per seed per experiment.
        output_dir: where runs, ``utility.json`` and confusion-matrix PNGs go (default: a temporary folder,
            removed; only the returned dictionary stays).
        imbalance: class name -> fraction of its real training images to keep (seeded per run); adds the
            ``real_imbalanced``, ``real_imbalanced_weighted``, ``real_imbalanced_oversampled`` and
            ``real_imbalanced_plus_synthetic`` experiments and the ``minority`` block.
        imbalance_fill: ``"restore"``: add synthetic images of the subsampled classes until their original count
            (as far as there are synthetic ones); ``"all"``: add every synthetic image of those classes.
        progress: show a progress bar over the runs.
        detectability: run the ``real_vs_synthetic`` experiment.
        imbalance_seed: draw the imbalanced subset with this seed for every run (``None``: with each run's seed).

    Returns:
        a JSON-able dictionary: ``class_names``, ``seeds``, ``settings``, ``imbalance``, ``imbalance_fill``,
        ``counts`` and

        - ``experiments``: per experiment ``description``, ``train_size`` and ``test_size`` per seed,
          ``not_comparable`` (``None`` or the reason), ``metrics`` (per metric of :data:`SUMMARY_METRICS`
          ``mean``, ``std`` (sample standard deviation over seeds), ``values`` per seed; per class, the same
          under ``auc``, ``recall`` and ``f1``), ``confusion_matrix_mean`` (rows true class; ``None`` when not
          comparable) and ``runs`` (per seed's full metrics, without per-image predictions);
        - ``minority`` (``None`` without ``imbalance``): per subsampled class ``fraction_kept``, ``recall`` and
          ``f1`` (experiment -> ``mean``, ``std``) and ``synthetic_beats`` (other experiment -> metric ->
          ``beats``, ``difference``, ``spread``, ``reason``);
        - ``detectability`` (``None`` when off): ``experiment`` ("real_vs_synthetic"), ``description``,
          ``class_names``, ``synthetic_train_fraction``, ``train_size``, ``test_size``, ``not_comparable``,
          ``auc`` (the AUC of "synthetic": ``mean``, ``std``, ``values``), ``metrics``,
          ``confusion_matrix_mean`` and ``runs``. It is kept apart from ``experiments``, whose classes are
          ``class_names``.

    Raises:
        SplitLeakError: ``real_test`` shares a patient (or an image) with ``real_train``.
        UnknownLabelError: an item's class is not in ``class_names``.
    """
    from tqdm.auto import tqdm

    settings = settings or ClassifierSettings()
    names = [str(c) for c in class_names]
    if imbalance_fill not in ("restore", "all"):
        raise ValueError(f"imbalance_fill must be 'restore' or 'all', got {imbalance_fill!r}")
    real_tr = _labelled(real_train, names, "utility_study real_train")
    real_te = _labelled(real_test, names, "utility_study real_test")
    synth = _labelled(synthetic, names, "utility_study synthetic")
    try:
        check_splits({"training": real_tr, "test": real_te})
    except SplitLeakError as err:
        raise SplitLeakError(
            err.path,
            "utility study: the real test set must be patient-disjoint from the real training set, or the scores "
            f"are inflated; {err.reason}",
        ) from None

    # experiment -> training source; sources share trained models (TRTR and TRTS)
    plan: list[tuple[str, str]] = [("TRTR", "real"), ("TRTS", "real"), ("TSTR", "synthetic")]
    source_settings = {"real": settings, "synthetic": settings}
    source_names = {"real": "real", "synthetic": "synthetic"}
    if imbalance:
        plan += [
            ("real_imbalanced", "imbalanced"),
            ("real_imbalanced_weighted", "weighted"),
            ("real_imbalanced_oversampled", "oversampled"),
            ("real_imbalanced_plus_synthetic", "augmented"),
        ]
        source_settings.update(
            imbalanced=settings,
            augmented=settings,
            weighted=_variant(settings, "inverse", False),
            oversampled=_variant(settings, "none", True),
        )
        source_names.update(
            imbalanced="imbalanced real",
            weighted="imbalanced real",
            oversampled="imbalanced real",
            augmented="imbalanced real + synthetic",
        )
        sub_classes = [names.index(c) for c in imbalance if c in names]
    tmp = None
    if output_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="utility_study_")
        root = Path(tmp.name)
    else:
        root = Path(output_dir)
        root.mkdir(parents=True, exist_ok=True)

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in plan}
    sizes: dict[str, dict[str, list[int]]] = {name: {"train": [], "test": []} for name, _ in plan}
    try:
        total = (len(plan) + int(bool(detectability))) * len(seeds)
        bar = tqdm(total=total, desc="utility study", disable=not progress)
        for seed in seeds:
            train_sets = {"real": real_tr, "synthetic": synth}
            if imbalance:
                subset = subsample_classes(
                    real_tr, imbalance, names, seed if imbalance_seed is None else imbalance_seed
                )
                # one subset per seed for all four imbalance experiments
                train_sets.update(imbalanced=subset, weighted=subset, oversampled=subset)
                train_sets["augmented"] = _top_up(subset, real_tr, synth, sub_classes, seed, imbalance_fill)
            ckpts: dict[str, Path] = {}
            for name, source in plan:
                bar.set_postfix_str(f"seed {seed}, {name}")
                test, test_source = (synth, "synthetic") if name == "TRTS" else (real_te, "real test")
                reason = _not_comparable(train_sets[source], test, names, source_names[source], test_source)
                if reason:
                    result = _not_comparable_run(reason, names, len(test))
                else:
                    if source not in ckpts:
                        ckpts[source] = train_classifier(
                            train_sets[source],
                            names,
                            source_settings[source],
                            seed=seed,
                            output_dir=root / f"seed{seed}" / source,
                        )
                    result = evaluate_classifier(
                        ckpts[source], test, names, settings, output_dir=root / f"seed{seed}" / f"{name}_eval"
                    )
                    result.pop("predictions", None)
                    result["not_comparable"] = None
                runs[name].append(result)
                sizes[name]["train"].append(len(train_sets[source]))
                sizes[name]["test"].append(len(test))
                bar.update(1)
        detect = _detectability(real_tr, real_te, synth, settings, seeds, root, bar) if detectability else None
        bar.close()

        experiments: dict[str, Any] = {}
        for name, _ in plan:
            experiments[name] = {
                "description": EXPERIMENTS[name],
                "train_size": sizes[name]["train"],
                "test_size": sizes[name]["test"],
                **_aggregate(runs[name], names),
                "runs": runs[name],
            }
        result = {
            "class_names": names,
            "seeds": [int(s) for s in seeds],
            "settings": settings.to_json(),
            "imbalance": dict(imbalance) if imbalance else None,
            "imbalance_fill": imbalance_fill if imbalance else None,
            "imbalance_seed": imbalance_seed if imbalance else None,
            "counts": {
                "real_train": len(real_tr),
                "real_test": len(real_te),
                "synthetic": len(synth),
            },
            "experiments": experiments,
            "minority": _minority(experiments, imbalance) if imbalance else None,
            "detectability": detect,
        }
        if output_dir is not None:
            figures = [(name, exp, names) for name, exp in experiments.items()]
            if detect is not None:
                figures.append(("real_vs_synthetic", detect, list(DETECTABILITY_CLASSES)))
            for name, exp, classes in figures:
                if exp["confusion_matrix_mean"] is None:
                    continue
                save_confusion_matrix(
                    exp["confusion_matrix_mean"],
                    classes,
                    root / f"confusion_{name}.png",
                    f"{name} ({EXPERIMENTS[name]}), mean over {len(seeds)} seed(s)",
                )
            with open(root / "utility.json", "w") as f:
                json.dump(result, f, indent=2)
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()
