"""The utility study (TRTR, TSTR, TRTS, imbalance and its remedies, real-vs-synthetic detectability) on phantom
data, run through the oct_classifier bundle in-process.

The phantom's lesions are made large and central here so that a tiny DenseNet learns the three classes at 32 x 64
in a few seconds; "synthetic" sets with known answers are made from the real training images: exact copies
(TSTR must match TRTR), copies with shuffled labels (TSTR must fall to chance) and noisy copies of two classes only
(TSTR is not comparable; a detector tells them from real images).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medicraft_monai.data import build_datalist
from medicraft_monai.data.datalist import subsample_classes
from medicraft_monai.data.errors import SplitLeakError, UnknownLabelError
from medicraft_monai.data.phantom import PhantomConfig, write_phantom_dataset
from medicraft_monai.evaluation import utility
from medicraft_monai.evaluation.utility import (
    IMBALANCE_EXPERIMENTS,
    SUMMARY_METRICS,
    ClassifierSettings,
    _beats,
    _summary,
    train_classifier,
    utility_study,
)

CLASSES = ["healthy", "benign", "melanoma"]
SETTINGS = ClassifierSettings.tiny(max_epochs=8, overrides={"crop_height": 64})  # the phantom is 64 rows high


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict:
    """30 phantom exams (4 radial B-scans each, 64 x 128), split by patient into training and test."""
    root = tmp_path_factory.mktemp("phantom")
    config = PhantomConfig(
        height=64,
        width=128,
        n_planes=4,
        lesion_max_eccentricity_mm=0.3,
        melanoma_semi_axis_mm=(1.8, 2.0),
        melanoma_height_mm=(0.5, 0.7),
        nevus_semi_axis_mm=(2.0, 2.4),
        nevus_thickness_mm=(0.3, 0.4),
    )
    write_phantom_dataset(root, n_exams=30, config=config, seed=0, progress=False)
    datalist = build_datalist(root / "images", classes=CLASSES, fractions=(0.6, 0.0, 0.4), seed=0)
    return {"root": root, "train": datalist["training"], "test": datalist["test"]}


def synthetic_copies(
    items: list[dict], folder: Path, labels: list[int] | None = None, noise: float = 0.0
) -> list[dict]:
    """Copies of ``items``' files as a synthetic set (optionally with other labels, or with Gaussian noise of
    standard deviation ``noise`` grey levels), without patient ids."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    out = []
    for i, it in enumerate(items):
        dst = folder / f"synthetic_{i:04d}.png"
        if noise:
            pixels = np.asarray(Image.open(it["image"]).convert("L"), dtype=float)
            noisy = np.clip(pixels + rng.normal(0.0, noise, pixels.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(dst)
        else:
            shutil.copyfile(it["image"], dst)
        label = it["label"] if labels is None else labels[i]
        out.append({"image": str(dst), "label": label, "class_name": CLASSES[label], "synthetic": True})
    return out


def spy_training(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    """Record each training run the study makes through the bundle: ``"seed<N>/<source>"`` -> its overrides'
    ``class_weighting``, ``balanced_sampling`` and the images and classes of its datalist (sorted by image)."""
    trained: dict[str, dict] = {}
    real_run = utility.run_bundle_workflow

    def spy(config_files, meta_file, overrides, *args, **kwargs):
        if "ckpt_path" not in overrides:  # a training run
            datalist = Path(overrides["datalist"])
            items = [
                (os.path.normpath(datalist.parent / it["image"]), it["class_name"])
                for it in json.loads(datalist.read_text())["training"]
            ]
            key = "/".join(Path(overrides["bundle_root"]).parts[-2:])
            trained[key] = {
                "class_weighting": overrides["class_weighting"],
                "balanced_sampling": overrides["balanced_sampling"],
                "images": [image for image, _ in sorted(items)],
                "classes": [c for _, c in sorted(items)],
            }
        return real_run(config_files, meta_file, overrides, *args, **kwargs)

    monkeypatch.setattr(utility, "run_bundle_workflow", spy)
    return trained


def balanced(result: dict, name: str) -> float:
    return result["experiments"][name]["metrics"]["balanced_accuracy"]["mean"]


def test_a_copy_of_the_real_training_set_gives_tstr_close_to_trtr(phantom: dict, tmp_path: Path) -> None:
    synthetic = synthetic_copies(phantom["train"], tmp_path / "synthetic")
    result = utility_study(
        phantom["train"], phantom["test"], synthetic, CLASSES, SETTINGS, seeds=(0,), output_dir=tmp_path / "study"
    )
    assert set(result["experiments"]) == {"TRTR", "TSTR", "TRTS"}
    trtr, tstr, trts = balanced(result, "TRTR"), balanced(result, "TSTR"), balanced(result, "TRTS")
    assert trtr >= 0.7, f"the phantom classes should be learnable (TRTR balanced accuracy {trtr:.3f})"
    assert abs(tstr - trtr) <= 0.1
    assert trts >= 0.7  # the TRTR model recognises its own training images
    exp = result["experiments"]["TRTR"]
    assert exp["test_size"] == [len(phantom["test"])] and exp["train_size"] == [len(phantom["train"])]
    for metric in SUMMARY_METRICS:
        summary = exp["metrics"][metric]
        assert len(summary["values"]) == 1 and summary["mean"] == summary["values"][0] and summary["std"] == 0.0
    cm = np.asarray(exp["confusion_matrix_mean"])
    counts = Counter(it["label"] for it in phantom["test"])
    assert cm.sum(axis=1).tolist() == [counts[c] for c in range(3)]
    assert result["experiments"]["TRTS"]["test_size"] == [len(synthetic)]
    saved = json.loads((tmp_path / "study" / "utility.json").read_text())
    assert saved["experiments"]["TSTR"]["metrics"]["accuracy"] == result["experiments"]["TSTR"]["metrics"]["accuracy"]
    assert (tmp_path / "study" / "confusion_TSTR.png").stat().st_size > 5000
    for exp in result["experiments"].values():
        assert exp["not_comparable"] is None and list(exp["metrics"]["recall"]) == CLASSES
    assert result["minority"] is None
    assert 0.0 <= result["detectability"]["auc"]["mean"] <= 1.0


def test_shuffled_synthetic_labels_give_tstr_near_chance(phantom: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = [int(v) for v in rng.permutation([it["label"] for it in phantom["train"]])]
    synthetic = synthetic_copies(phantom["train"], tmp_path / "synthetic", labels)
    result = utility_study(
        phantom["train"], phantom["test"], synthetic, CLASSES, SETTINGS, seeds=(0,), progress=False, detectability=False
    )
    trtr, tstr = balanced(result, "TRTR"), balanced(result, "TSTR")
    assert trtr >= 0.7
    assert tstr <= 0.55, f"TSTR with shuffled labels should be near chance (1/3), got {tstr:.3f}"
    assert trtr - tstr >= 0.3
    assert balanced(result, "TRTS") <= 0.6  # the real model disagrees with the wrong synthetic labels


def test_the_imbalance_experiment_and_its_remedies_use_one_subset(
    phantom: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = phantom["train"]
    n = Counter(it["class_name"] for it in train)
    imbalance = {"benign": 0.5, "melanoma": 0.25}
    kept = [Counter(it["class_name"] for it in subsample_classes(train, imbalance, CLASSES, seed)) for seed in (0, 1)]
    for k in kept:
        assert k == {
            "healthy": n["healthy"],
            "benign": round(0.5 * n["benign"]),
            "melanoma": round(0.25 * n["melanoma"]),
        }
    picked = [{it["image"] for it in subsample_classes(train, imbalance, CLASSES, seed)} for seed in (0, 1)]
    assert picked[0] != picked[1]  # seeded: another seed, another subset
    assert picked[0] == {it["image"] for it in subsample_classes(train, imbalance, CLASSES, 0)}

    synthetic = synthetic_copies(train, tmp_path / "synthetic")
    trained = spy_training(monkeypatch)
    seeds = (0, 1)
    result = utility_study(
        train,
        phantom["test"],
        synthetic,
        CLASSES,
        ClassifierSettings.tiny(max_epochs=1, overrides={"crop_height": 64}),
        seeds=seeds,
        imbalance=imbalance,
        progress=False,
        detectability=False,
    )
    exps = result["experiments"]
    assert set(exps) == {"TRTR", "TSTR", "TRTS", *IMBALANCE_EXPERIMENTS}
    removed = (n["benign"] - round(0.5 * n["benign"])) + (n["melanoma"] - round(0.25 * n["melanoma"]))
    for name in ("real_imbalanced", "real_imbalanced_weighted", "real_imbalanced_oversampled"):
        assert exps[name]["train_size"] == [len(train) - removed] * 2
        assert exps[name]["test_size"] == [len(phantom["test"])] * 2
    assert exps["real_imbalanced_plus_synthetic"]["train_size"] == [len(train)] * 2  # topped back up ("restore")
    assert result["imbalance"] == imbalance and result["detectability"] is None

    # the remedies train on the very subset of real_imbalanced, each with its one remedy switched on
    for seed in seeds:
        runs = {k: trained[f"seed{seed}/{k}"] for k in ("imbalanced", "weighted", "oversampled", "augmented")}
        assert runs["weighted"]["images"] == runs["oversampled"]["images"] == runs["imbalanced"]["images"]
        assert runs["imbalanced"]["images"] == sorted(
            it["image"] for it in subsample_classes(train, imbalance, CLASSES, seed)
        )
        assert (runs["imbalanced"]["class_weighting"], runs["imbalanced"]["balanced_sampling"]) == ("none", False)
        assert (runs["weighted"]["class_weighting"], runs["weighted"]["balanced_sampling"]) == ("inverse", False)
        assert (runs["oversampled"]["class_weighting"], runs["oversampled"]["balanced_sampling"]) == ("none", True)
        assert (runs["augmented"]["class_weighting"], runs["augmented"]["balanced_sampling"]) == ("none", False)
    assert trained["seed0/imbalanced"]["images"] != trained["seed1/imbalanced"]["images"]

    for exp in exps.values():  # per-class recall and F1 over seeds, from the bundle's per-class metrics
        assert exp["not_comparable"] is None
        for metric, key in (("recall", "sensitivity"), ("f1", "f1")):
            assert list(exp["metrics"][metric]) == CLASSES
            for c in CLASSES:
                summary = exp["metrics"][metric][c]
                assert summary["values"] == [r["per_class"][c][key] for r in exp["runs"]]
                assert summary["mean"] == pytest.approx(np.mean(summary["values"]))
                assert summary["std"] == pytest.approx(np.std(summary["values"], ddof=1))

    minority = result["minority"]
    assert set(minority) == {"benign", "melanoma"}  # healthy is not subsampled
    for c, block in minority.items():
        assert block["fraction_kept"] == imbalance[c]
        for metric in ("recall", "f1"):
            assert set(block[metric]) == set(IMBALANCE_EXPERIMENTS)
            plus = exps["real_imbalanced_plus_synthetic"]["metrics"][metric][c]
            for other in ("real_imbalanced", "real_imbalanced_weighted", "real_imbalanced_oversampled"):
                theirs = exps[other]["metrics"][metric][c]
                assert block[metric][other] == {"mean": theirs["mean"], "std": theirs["std"]}
                verdict = block["synthetic_beats"][other][metric]
                expected = plus["mean"] - theirs["mean"] > max(plus["std"], theirs["std"])
                assert verdict["beats"] is expected and verdict["reason"] is None
    json.dumps(result)


def test_imbalance_seed_fixes_one_subset_for_every_seed(
    phantom: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clinic's one imbalanced set: with ``imbalance_seed`` every classifier seed trains on the same subset (the one
    ``medicraft subsample`` writes for a generator to be fine-tuned on), and only the classifiers' seeds vary."""
    train = phantom["train"]
    imbalance = {"melanoma": 0.25}
    trained = spy_training(monkeypatch)
    result = utility_study(
        train,
        phantom["test"],
        synthetic_copies(train, tmp_path / "synthetic"),
        CLASSES,
        ClassifierSettings.tiny(max_epochs=1, overrides={"crop_height": 64}),
        seeds=(0, 1),
        imbalance=imbalance,
        imbalance_seed=7,
        progress=False,
        detectability=False,
    )
    fixed = sorted(it["image"] for it in subsample_classes(train, imbalance, CLASSES, 7))
    assert fixed != sorted(it["image"] for it in subsample_classes(train, imbalance, CLASSES, 0))
    for seed in (0, 1):
        for source in ("imbalanced", "weighted", "oversampled"):
            assert trained[f"seed{seed}/{source}"]["images"] == fixed
    assert result["imbalance_seed"] == 7 and result["imbalance"] == imbalance


def test_beating_means_a_difference_larger_than_the_seed_spread() -> None:
    better, worse = _summary([0.8, 0.9]), _summary([0.5, 0.6])  # stds 0.0707
    assert _beats(better, worse)["beats"] is True
    assert _beats(worse, better)["beats"] is False
    assert _beats(_summary([0.6, 0.8]), _summary([0.55, 0.6]))["beats"] is False  # 0.125 < std 0.141
    one = _beats(_summary([0.9]), _summary([0.1]))
    assert one["beats"] is None and one["reason"].startswith("not measurable")
    missing = _beats(_summary([None, None], "class x has no image"), worse)
    assert missing["beats"] is None and "class x has no image" in missing["reason"]


def test_a_missing_class_is_not_comparable_and_noisy_synthetic_images_are_detected(
    phantom: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, test = phantom["train"], phantom["test"]
    two_classes = [it for it in train if it["class_name"] != "melanoma"]
    synthetic = synthetic_copies(two_classes, tmp_path / "synthetic", noise=80.0)
    trained = spy_training(monkeypatch)
    out = tmp_path / "study"
    result = utility_study(
        train,
        test,
        synthetic,
        CLASSES,
        ClassifierSettings.tiny(max_epochs=3, overrides={"crop_height": 64}),
        seeds=(0,),
        output_dir=out,
        imbalance={"benign": 0.5},
        progress=False,
    )
    exps = result["experiments"]
    # TSTR: the synthetic set has no melanoma, so no model is trained and no number reported
    tstr = exps["TSTR"]
    assert tstr["not_comparable"] == "class melanoma has no image in the training set (synthetic)"
    assert "seed0/synthetic" not in trained and not (out / "seed0" / "synthetic").exists()
    for metric in SUMMARY_METRICS:
        assert tstr["metrics"][metric]["mean"] is None and tstr["metrics"][metric]["values"] == [None]
        assert tstr["metrics"][metric]["not_comparable"] == tstr["not_comparable"]
    for metric in ("auc", "recall", "f1"):
        assert all(tstr["metrics"][metric][c]["mean"] is None for c in CLASSES)
    assert tstr["confusion_matrix_mean"] is None and tstr["runs"][0]["not_comparable"] == tstr["not_comparable"]
    assert tstr["train_size"] == [len(synthetic)]
    # TRTS: the same set as test set; TRTR is unaffected
    assert exps["TRTS"]["not_comparable"] == "class melanoma has no image in the test set (synthetic)"
    assert exps["TRTS"]["metrics"]["balanced_accuracy"]["mean"] is None
    assert exps["TRTR"]["not_comparable"] is None
    assert 0.0 <= exps["TRTR"]["metrics"]["balanced_accuracy"]["mean"] <= 1.0
    assert (out / "confusion_TRTR.png").is_file() and not (out / "confusion_TSTR.png").exists()
    # one seed: no spread, so whether synthetic images help the minority class is not measurable
    verdicts = result["minority"]["benign"]["synthetic_beats"]
    for other in ("real_imbalanced", "real_imbalanced_weighted", "real_imbalanced_oversampled"):
        for metric in ("recall", "f1"):
            assert verdicts[other][metric]["beats"] is None
            assert verdicts[other][metric]["reason"] == "not measurable: fewer than two seeds"

    # real vs synthetic: noisy copies are easy to tell; trained on real training vs 80 % of the synthetic images,
    # tested on the real test images and the other 20 %
    det = result["detectability"]
    n_syn_test = round(0.2 * len(synthetic))
    n_each = min(len(train), len(synthetic) - n_syn_test)
    assert det["experiment"] == "real_vs_synthetic" and det["not_comparable"] is None
    assert det["train_size"] == [2 * n_each] and det["test_size"] == [len(test) + n_syn_test]
    assert 0.9 <= det["auc"]["mean"] <= 1.0, det["auc"]
    assert det["auc"] == det["metrics"]["auc"]["synthetic"]
    detector = trained["seed0/detector"]
    predictions = json.loads((out / "seed0" / "real_vs_synthetic_eval" / "predictions.json").read_text())
    tested = {p["image"]: p["true_class"] for p in predictions["predictions"]}
    assert set(detector["images"]).isdisjoint(tested)
    assert {it["image"] for it in test} == {im for im, c in tested.items() if c == "real"}
    assert {it["image"] for it in test}.isdisjoint(detector["images"])
    assert Counter(detector["classes"]) == {"real": n_each, "synthetic": n_each}
    assert (out / "confusion_real_vs_synthetic.png").is_file()
    saved = json.loads((out / "utility.json").read_text())
    assert saved["experiments"]["TSTR"]["metrics"]["balanced_accuracy"]["mean"] is None
    assert saved["detectability"]["auc"] == det["auc"]


def test_patient_leakage_and_unknown_classes_are_refused(phantom: dict, tmp_path: Path) -> None:
    leaked = phantom["test"] + [phantom["train"][0]]
    with pytest.raises(SplitLeakError, match="patient-disjoint") as err:
        utility_study(phantom["train"], leaked, phantom["train"], CLASSES, SETTINGS, seeds=(0,), progress=False)
    assert repr(phantom["train"][0]["patient_id"]) in str(err.value)
    bad = [{**phantom["train"][0], "class_name": "naevus"}]
    with pytest.raises(UnknownLabelError, match="'naevus' is not one of"):
        train_classifier(bad, CLASSES, SETTINGS, output_dir=tmp_path)
