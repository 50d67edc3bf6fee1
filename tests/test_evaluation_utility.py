"""The utility study (TRTR, TSTR, TRTS, imbalance) on phantom data, run through the oct_classifier bundle in-process.

The phantom's lesions are made large and central here so that a tiny DenseNet learns the three classes at 32 x 64
in a few seconds; "synthetic" sets with known answers are made from the real training images: exact copies
(TSTR must match TRTR) and copies with shuffled labels (TSTR must fall to chance).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medicraft_monai.data import build_datalist
from medicraft_monai.data.errors import SplitLeakError, UnknownLabelError
from medicraft_monai.data.phantom import PhantomConfig, write_phantom_dataset
from medicraft_monai.evaluation.utility import (
    SUMMARY_METRICS,
    ClassifierSettings,
    _subsample,
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


def synthetic_copies(items: list[dict], folder: Path, labels: list[int] | None = None) -> list[dict]:
    """Copies of ``items``' files as a synthetic set (optionally with other labels), without patient ids."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, it in enumerate(items):
        dst = folder / f"synthetic_{i:04d}.png"
        shutil.copyfile(it["image"], dst)
        label = it["label"] if labels is None else labels[i]
        out.append({"image": str(dst), "label": label, "class_name": CLASSES[label], "synthetic": True})
    return out


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


def test_shuffled_synthetic_labels_give_tstr_near_chance(phantom: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = [int(v) for v in rng.permutation([it["label"] for it in phantom["train"]])]
    synthetic = synthetic_copies(phantom["train"], tmp_path / "synthetic", labels)
    result = utility_study(phantom["train"], phantom["test"], synthetic, CLASSES, SETTINGS, seeds=(0,), progress=False)
    trtr, tstr = balanced(result, "TRTR"), balanced(result, "TSTR")
    assert trtr >= 0.7
    assert tstr <= 0.55, f"TSTR with shuffled labels should be near chance (1/3), got {tstr:.3f}"
    assert trtr - tstr >= 0.3
    assert balanced(result, "TRTS") <= 0.6  # the real model disagrees with the wrong synthetic labels


def test_the_imbalance_experiment_subsamples_as_asked(phantom: dict, tmp_path: Path) -> None:
    train = phantom["train"]
    n = Counter(it["class_name"] for it in train)
    imbalance = {"benign": 0.5, "melanoma": 0.25}
    kept = [Counter(it["class_name"] for it in _subsample(train, imbalance, CLASSES, seed)) for seed in (0, 1)]
    for k in kept:
        assert k == {
            "healthy": n["healthy"],
            "benign": round(0.5 * n["benign"]),
            "melanoma": round(0.25 * n["melanoma"]),
        }
    picked = [{it["image"] for it in _subsample(train, imbalance, CLASSES, seed)} for seed in (0, 1)]
    assert picked[0] != picked[1]  # seeded: another seed, another subset
    assert picked[0] == {it["image"] for it in _subsample(train, imbalance, CLASSES, 0)}

    synthetic = synthetic_copies(train, tmp_path / "synthetic")
    result = utility_study(
        train,
        phantom["test"],
        synthetic,
        CLASSES,
        ClassifierSettings.tiny(max_epochs=1, overrides={"crop_height": 64}),
        seeds=(0,),
        imbalance=imbalance,
        progress=False,
    )
    exps = result["experiments"]
    removed = (n["benign"] - round(0.5 * n["benign"])) + (n["melanoma"] - round(0.25 * n["melanoma"]))
    assert exps["real_imbalanced"]["train_size"] == [len(train) - removed]
    assert exps["real_imbalanced_plus_synthetic"]["train_size"] == [len(train)]  # topped back up ("restore")
    assert exps["real_imbalanced"]["test_size"] == [len(phantom["test"])]
    assert result["imbalance"] == imbalance
    json.dumps(result)


def test_patient_leakage_and_unknown_classes_are_refused(phantom: dict, tmp_path: Path) -> None:
    leaked = phantom["test"] + [phantom["train"][0]]
    with pytest.raises(SplitLeakError, match="patient-disjoint") as err:
        utility_study(phantom["train"], leaked, phantom["train"], CLASSES, SETTINGS, seeds=(0,), progress=False)
    assert repr(phantom["train"][0]["patient_id"]) in str(err.value)
    bad = [{**phantom["train"][0], "class_name": "naevus"}]
    with pytest.raises(UnknownLabelError, match="'naevus' is not one of"):
        train_classifier(bad, CLASSES, SETTINGS, output_dir=tmp_path)
