"""The utility study of synthetic OCT data: does a classifier trained on it work on real images?

The study trains the ``oct_classifier`` bundle (``bundles/oct_classifier``) in-process, through
``monai.bundle.ConfigWorkflow`` with overrides and temporary datalists, so it runs exactly the code a user runs with
``python -m monai.bundle run``; there is no second trainer here.

Experiments (each with several seeds; mean, standard deviation and per-seed values of every metric):

- ``TRTR``: train on real, test on real (the reference).
- ``TSTR``: train on synthetic, test on real. Close to TRTR: the synthetic data carries the class information.
- ``TRTS``: train on real (the TRTR models), test on synthetic. Close to TRTR: synthetic images look like their
  class to a real-data classifier.
- with ``imbalance``: ``real_imbalanced`` (classes subsampled on purpose, seeded) against
  ``real_imbalanced_plus_synthetic`` (the same, topped up with synthetic images of the subsampled classes).

The test set is always the real test split (TRTS excepted), and it must share no patient with the real training
set (checked).

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
from medicraft_monai.data.datalist import check_splits, write_datalist
from medicraft_monai.data.errors import EmptyDatasetError, SplitLeakError
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.evaluation.workflow import run_bundle_workflow
from medicraft_monai.metrics.classification import classification_items, save_confusion_matrix

__all__ = [
    "EXPERIMENTS",
    "SUMMARY_METRICS",
    "ClassifierSettings",
    "evaluate_classifier",
    "train_classifier",
    "utility_study",
]

logger = logging.getLogger(__name__)

SUMMARY_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
"""Scalar metrics summarised over seeds (per-class AUCs are summarised too, under ``auc``)."""

EXPERIMENTS: dict[str, str] = {
    "TRTR": "train on real, test on real",
    "TSTR": "train on synthetic, test on real",
    "TRTS": "train on real, test on synthetic",
    "real_imbalanced": "train on the real training set with classes subsampled on purpose, test on real",
    "real_imbalanced_plus_synthetic": "the imbalanced real set topped up with synthetic images, test on real",
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
def _subsample(
    items: Sequence[dict[str, Any]], imbalance: Mapping[str, float], class_names: Sequence[str], seed: int
) -> list[dict[str, Any]]:
    """Keep ``round(fraction * n)`` (at least 1) of each named class's items, chosen with ``seed``; others all."""
    unknown = set(imbalance) - set(class_names)
    if unknown:
        raise ValueError(f"imbalance names unknown classes {sorted(unknown)}; classes are {list(class_names)}")
    rng = np.random.default_rng([int(seed), 0x1B])
    out: list[dict[str, Any]] = []
    for c, name in enumerate(class_names):
        members = [it for it in items if it[OCTKeys.LABEL] == c]
        if name in imbalance and members:
            frac = float(imbalance[name])
            if not 0.0 < frac <= 1.0:
                raise ValueError(f"imbalance[{name!r}] must be in (0, 1], got {frac}")
            keep = max(1, round(frac * len(members)))
            idx = sorted(rng.choice(len(members), size=keep, replace=False).tolist())
            members = [members[i] for i in idx]
        out.extend(members)
    return out


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


def _summary(values: Sequence[float | None]) -> dict[str, Any]:
    found = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return {
        "mean": float(np.mean(found)) if found else None,
        "std": float(np.std(found, ddof=1)) if len(found) > 1 else (0.0 if found else None),
        "values": [None if v is None else float(v) for v in values],
    }


def _aggregate(runs: Sequence[dict[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    metrics: dict[str, Any] = {m: _summary([r[m] for r in runs]) for m in SUMMARY_METRICS}
    metrics["auc"] = {c: _summary([r["auc"][c] for r in runs]) for c in class_names}
    cm = np.mean([np.asarray(r["confusion_matrix"], dtype=float) for r in runs], axis=0)
    return {"metrics": metrics, "confusion_matrix_mean": cm.tolist()}


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
) -> dict[str, Any]:
    """Train and test the ``oct_classifier`` bundle on real and synthetic data: TRTR, TSTR, TRTS (and imbalance).

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
            ``real_imbalanced`` and ``real_imbalanced_plus_synthetic`` experiments.
        imbalance_fill: ``"restore"``: add synthetic images of the subsampled classes until their original count
            (as far as there are synthetic ones); ``"all"``: add every synthetic image of those classes.
        progress: show a progress bar over the runs.

    Returns:
        a JSON-able dictionary: ``class_names``, ``seeds``, ``settings``, ``counts`` and ``experiments``: per
        experiment ``description``, ``train_size`` and ``test_size`` per seed, ``metrics`` (per metric ``mean``,
        ``std`` (sample standard deviation over seeds), ``values`` per seed; per-class ``auc`` likewise),
        ``confusion_matrix_mean`` (rows true class) and ``runs`` (per seed's full metrics, without per-image
        predictions).

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

    plan: list[tuple[str, str]] = [("TRTR", "real"), ("TRTS", "real"), ("TSTR", "synthetic")]
    if imbalance:
        plan += [("real_imbalanced", "imbalanced"), ("real_imbalanced_plus_synthetic", "augmented")]
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
        bar = tqdm(total=len(plan) * len(seeds), desc="utility study", disable=not progress)
        for seed in seeds:
            train_sets = {"real": real_tr, "synthetic": synth}
            if imbalance:
                train_sets["imbalanced"] = _subsample(real_tr, imbalance, names, seed)
                train_sets["augmented"] = _top_up(
                    train_sets["imbalanced"], real_tr, synth, sub_classes, seed, imbalance_fill
                )
            ckpts: dict[str, Path] = {}
            for name, source in plan:
                bar.set_postfix_str(f"seed {seed}, {name}")
                if source not in ckpts:
                    ckpts[source] = train_classifier(
                        train_sets[source], names, settings, seed=seed, output_dir=root / f"seed{seed}" / source
                    )
                test = synth if name == "TRTS" else real_te
                result = evaluate_classifier(
                    ckpts[source], test, names, settings, output_dir=root / f"seed{seed}" / f"{name}_eval"
                )
                result.pop("predictions", None)
                runs[name].append(result)
                sizes[name]["train"].append(len(train_sets[source]))
                sizes[name]["test"].append(len(test))
                bar.update(1)
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
            "counts": {
                "real_train": len(real_tr),
                "real_test": len(real_te),
                "synthetic": len(synth),
            },
            "experiments": experiments,
        }
        if output_dir is not None:
            for name, exp in experiments.items():
                save_confusion_matrix(
                    exp["confusion_matrix_mean"],
                    names,
                    root / f"confusion_{name}.png",
                    f"{name} ({EXPERIMENTS[name]}), mean over {len(seeds)} seed(s)",
                )
            with open(root / "utility.json", "w") as f:
                json.dump(result, f, indent=2)
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()
