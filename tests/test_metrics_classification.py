"""Classification metrics against hand-computed answers, the confusion-matrix figure and the bundle's data helpers."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medicraft_monai.data.errors import EmptyDatasetError, OCTDataError, UnknownLabelError
from medicraft_monai.metrics.classification import (
    balanced_sampler,
    classification_items,
    classification_metrics,
    datalist_class_names,
    inference_items,
    loss_class_weights,
    save_confusion_matrix,
)

NAMES3 = ["healthy", "benign", "melanoma"]


def one_hot(y: list[int], n: int) -> np.ndarray:
    return np.eye(n)[y]


def test_a_perfect_predictor_scores_one_everywhere() -> None:
    y = [0, 1, 2, 2, 1, 0, 0]
    m = classification_metrics(y, one_hot(y, 3) * 0.8 + 0.2 / 3, NAMES3)
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert m["auc"] == {"healthy": 1.0, "benign": 1.0, "melanoma": 1.0} and m["macro_auc"] == 1.0
    assert m["confusion_matrix"] == [[3, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert m["counts"]["true"] == {"healthy": 3, "benign": 2, "melanoma": 2} == m["counts"]["predicted"]
    assert m["num_samples"] == 7 and m["notes"] == []


def test_a_constant_predictor_is_at_chance() -> None:
    y = [0, 0, 1, 1, 2, 2]
    probs = np.tile([0.6, 0.3, 0.1], (6, 1))  # always "healthy", same scores for every image
    m = classification_metrics(y, probs, NAMES3)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["balanced_accuracy"] == pytest.approx(1 / 3) == pytest.approx(m["chance_balanced_accuracy"])
    # F1: healthy 2*2 / (2*2 + 4 FP + 0 FN) = 0.5, the others 0 -> macro 1/6
    assert m["per_class"]["healthy"]["f1"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(1 / 6)
    assert all(v == pytest.approx(0.5) for v in m["auc"].values())  # constant scores: ties everywhere
    assert m["confusion_matrix"] == [[2, 0, 0], [2, 0, 0], [2, 0, 0]]


def test_a_hand_computed_two_class_case() -> None:
    y = [0, 0, 1, 1]
    p1 = np.array([0.1, 0.6, 0.4, 0.9])  # predicted: 0, 1, 0, 1
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), ["a", "b"])
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["accuracy"] == 0.5 and m["balanced_accuracy"] == 0.5 and m["macro_f1"] == pytest.approx(0.5)
    # positives {0.4, 0.9} vs negatives {0.1, 0.6}: 3 of the 4 pairs ordered right
    assert m["auc"]["b"] == pytest.approx(0.75) and m["auc"]["a"] == pytest.approx(0.75)
    assert m["per_class"]["b"] == {
        "support": 2,
        "predicted": 2,
        "sensitivity": 0.5,
        "precision": 0.5,
        "f1": pytest.approx(0.5),
        "auc": pytest.approx(0.75),
    }


def test_balanced_accuracy_differs_from_accuracy_on_imbalanced_data() -> None:
    y = [0, 0, 0, 0, 0, 0, 1, 1]
    probs = one_hot([0] * 8, 2) * 0.9 + 0.05
    m = classification_metrics(y, probs, ["major", "minor"])
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == 0.5  # sensitivities 1 and 0


def test_an_absent_class_gives_a_null_auc_with_a_note() -> None:
    y = [0, 0, 1, 1]
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.2, 0.3]])
    m = classification_metrics(y, probs, NAMES3)
    assert m["auc"]["melanoma"] is None and m["auc"]["healthy"] == 1.0
    assert any("melanoma" in n and "undefined" in n for n in m["notes"])
    assert m["balanced_accuracy"] == pytest.approx(0.75)  # over the two present classes: (1 + 0.5) / 2
    assert m["per_class"]["melanoma"]["sensitivity"] is None
    json.dumps(m)  # JSON-able, nulls included


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1], np.zeros((2, 2)), NAMES3)
    with pytest.raises(ValueError, match="labels must be in"):
        classification_metrics([0, 3], np.zeros((2, 3)), NAMES3)
    torch_in = classification_metrics(torch.tensor([1, 0]), torch.tensor([[0.2, 0.8], [0.9, 0.1]]), ["a", "b"])
    assert torch_in["accuracy"] == 1.0


def test_the_confusion_matrix_figure(tmp_path: Path) -> None:
    path = save_confusion_matrix([[3, 1, 0], [0, 2, 2], [1, 0, 5]], NAMES3, tmp_path / "sub" / "cm.png", "test")
    image = np.asarray(Image.open(path).convert("L"))
    assert image.shape[1] > image.shape[0] > 100  # two panels side by side
    assert image.std() > 10  # not blank
    save_confusion_matrix(np.array([[1.5, 0.5], [0.0, 2.0]]), ["a", "b"], tmp_path / "mean.png")  # means over seeds
    with pytest.raises(ValueError, match="does not fit"):
        save_confusion_matrix([[1, 2]], ["a", "b"], tmp_path / "bad.png")


# --------------------------------------------------------------------------------------------------------------------
# data helpers of the bundle
# --------------------------------------------------------------------------------------------------------------------
def _datalist(tmp_path: Path) -> Path:
    data = {
        "labels": {"0": "CNV", "1": "NORMAL"},
        "training": [
            {"image": "a.png", "label": 0, "patient_id": "1"},
            {"image": "b.png", "label": 1, "class_name": "NORMAL", "patient_id": "2"},
        ],
        "validation": [],
        "test": [{"image": "c.png", "label": 1, "patient_id": "3"}],
    }
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(data))
    return path


def test_classification_items_map_class_names_to_indices(tmp_path: Path) -> None:
    path = _datalist(tmp_path)
    assert datalist_class_names(path) == ["CNV", "NORMAL"]
    assert datalist_class_names(tmp_path / "missing.json") == NAMES3
    # another class order: the indices follow class_names, not the datalist's numbering
    items = classification_items(path, "training", ["NORMAL", "CNV"])
    assert [(Path(it["image"]).name, it["label"], it["class_name"]) for it in items] == [
        ("a.png", 1, "CNV"),
        ("b.png", 0, "NORMAL"),
    ]
    assert Path(items[0]["image"]).is_absolute()
    string_labels = {"training": [{"image": "/x/d.png", "label": "NORMAL"}]}
    assert classification_items(string_labels, "training", ["CNV", "NORMAL"])[0]["label"] == 1
    assert classification_items(path, "validation", ["CNV", "NORMAL"], required=False) == []
    with pytest.raises(EmptyDatasetError, match="'validation' split"):
        classification_items(path, "validation", ["CNV", "NORMAL"])


def test_an_unknown_class_names_the_file(tmp_path: Path) -> None:
    path = _datalist(tmp_path)
    with pytest.raises(UnknownLabelError, match=r"c\.png: class 'NORMAL' is not one of") as err:
        classification_items(path, "test", ["CNV", "DME"])
    assert err.value.path.endswith("c.png")
    with pytest.raises(UnknownLabelError, match="label 5 is not in the datalist's 'labels'"):
        classification_items({"labels": {"0": "a"}, "test": [{"image": "/z.png", "label": 5}]}, "test", ["a"])


def test_balanced_sampler_draws_classes_equally() -> None:
    items = [{"label": 0}] * 90 + [{"label": 1}] * 10
    assert balanced_sampler(items, enabled="false") is None
    sampler = balanced_sampler(items, enabled=True, seed=3)
    drawn = Counter(items[i]["label"] for _ in range(20) for i in sampler)
    assert len(list(sampler)) == 100
    assert 0.45 < drawn[1] / sum(drawn.values()) < 0.55  # 10 % of the items, half of the draws
    again = balanced_sampler(items, enabled=True, seed=3)
    assert list(again) == list(balanced_sampler(items, enabled=True, seed=3))


def test_loss_class_weights() -> None:
    items = [{"label": 0}] * 3 + [{"label": 1}]
    assert loss_class_weights(items, "none", 2) is None
    w = loss_class_weights(items, "inverse", 2)
    assert w.tolist() == pytest.approx([0.5, 1.5])  # 1/3 : 1, mean 1
    assert loss_class_weights(items, "effective", 3)[2] == 0.0  # an absent class


def test_inference_items_from_a_folder_a_list_and_a_datalist(tmp_path: Path) -> None:
    for name in ("x.png", "sub/y.jpeg", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"0")
    assert [Path(i["image"]).name for i in inference_items(tmp_path)] == ["y.jpeg", "x.png"]
    assert [Path(i["image"]).name for i in inference_items([tmp_path / "x.png"])] == ["x.png"]
    from_datalist = inference_items(_datalist(tmp_path), "training")
    assert [Path(i["image"]).name for i in from_datalist] == ["a.png", "b.png"]
    assert all("label" not in i for i in from_datalist)
    with pytest.raises(OCTDataError, match="not found"):
        inference_items(tmp_path / "nope")
    with pytest.raises(EmptyDatasetError):
        inference_items(_datalist(tmp_path), "validation")


def test_the_validation_balanced_accuracy_is_ignites_macro_recall() -> None:
    from ignite.metrics import Recall

    from medicraft_monai.metrics.classification import pred_label_indices

    y = [0, 0, 0, 0, 0, 0, 1, 1, 2, 2]
    pred = [0, 0, 0, 0, 0, 1, 1, 0, 2, 0]
    onehot_out = [{"pred": torch.eye(3)[p], "label": torch.eye(3)[t]} for p, t in zip(pred, y)]
    index_out = [{"pred": torch.eye(3)[p], "label": torch.tensor(t)} for p, t in zip(pred, y)]
    scores, labels = pred_label_indices(onehot_out)
    assert scores.shape == (10, 3) and labels.tolist() == y
    assert pred_label_indices(index_out)[1].tolist() == y
    recall = Recall(average=True)
    recall.update((scores, labels))
    expected = classification_metrics(y, one_hot(pred, 3), NAMES3)["balanced_accuracy"]
    assert float(recall.compute()) == pytest.approx(expected) == pytest.approx((5 / 6 + 1 / 2 + 1 / 2) / 3)
    assert expected != classification_metrics(y, one_hot(pred, 3), NAMES3)["accuracy"]  # 0.7: not the same thing
