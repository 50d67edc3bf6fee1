"""The blinded reading ("visual Turing test") without a server: trials, answers, statistics and the export report."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medicraft_monai.data.io import write_bscan_png
from medicraft_monai.label import export_reviews
from medicraft_monai.label.review import ReviewError, bscan_png
from medicraft_monai.label.turing import (
    TURING_ANSWERS,
    TuringAnswers,
    TuringDeck,
    binomial_ci,
    held_out_items,
    load_turing_answers,
    turing_summary,
)


class FixedChoices:
    """A random source whose ``choice`` takes the given indices in turn (the trials' draws made known)."""

    def __init__(self, picks: list[int]) -> None:
        self.picks = list(picks)

    def choice(self, seq):
        return seq[self.picks.pop(0) % len(seq)]


def _record(reader: str, truth: str, answer: str, cls: str, class_answer: str | None = None) -> dict:
    return {"reader": reader, "truth": truth, "answer": answer, "correct": truth == answer, "true_class": cls,
            "class_answer": class_answer,
            "class_correct": None if class_answer is None else class_answer == cls}  # fmt: skip


def test_binomial_ci_is_clopper_pearson():
    assert binomial_ci(5, 10) == [0.1871, 0.8129]
    assert binomial_ci(0, 10) == [0.0, 0.3085]
    assert binomial_ci(10, 10) == [0.6915, 1.0]
    assert binomial_ci(0, 0) is None


def test_turing_summary_per_reader_class_and_class_accuracy():
    records = [
        _record("A", "real", "real", "DME", "DME"),
        _record("A", "synthetic", "real", "DME", "CNV"),
        _record("A", "synthetic", "synthetic", "CNV"),
        _record("B", "real", "synthetic", "CNV"),
        _record("B", "real", "real", "CNV", "CNV"),
        _record("B", "synthetic", "synthetic", "DME"),
    ]
    s = turing_summary(records)
    assert (s["trials"], s["correct"], s["accuracy"]) == (6, 4, round(4 / 6, 4))
    assert s["ci95"] == binomial_ci(4, 6) and s["ci95"][0] < 0.5 < s["ci95"][1]
    assert (s["real_trials"], s["synthetic_trials"], s["real_called_real"], s["synthetic_called_synthetic"]) == (
        3, 3, 2, 2)  # fmt: skip
    assert s["class_accuracy"] == {"trials": 3, "correct": 2, "accuracy": round(2 / 3, 4), "ci95": binomial_ci(2, 3)}
    assert {k: (g["trials"], g["correct"]) for k, g in s["per_reader"].items()} == {"A": (3, 2), "B": (3, 2)}
    assert {k: (g["trials"], g["correct"]) for k, g in s["per_class"].items()} == {"CNV": (3, 2), "DME": (3, 2)}
    assert s["per_reader"]["B"]["class_accuracy"]["trials"] == 1
    assert "50%" in s["note"] and "54-60%" in s["note"]
    empty = turing_summary([])
    assert empty["trials"] == 0 and empty["accuracy"] is None and empty["ci95"] is None


def test_held_out_items_prefers_test_then_validation(tmp_path: Path):
    def write(test: list, validation: list) -> Path:
        path = tmp_path / "datalist.json"
        path.write_text(json.dumps({"labels": {"0": "CNV", "1": "DME", "2": "DRUSEN"}, "training": [],
                                    "validation": validation, "test": test}))  # fmt: skip
        return path

    v = [{"image": "v1.png", "label": 1, "patient_id": "p1"}]
    t = [{"image": "t1.png", "label": 0, "class_name": "CNV", "patient_id": "p2"},
         {"image": "t2.png", "label": 2, "patient_id": "p3"},  # DRUSEN: not a class of the generator
         {"image": "s.png", "label": 0, "patient_id": "s", "synthetic": True}]  # fmt: skip
    items = held_out_items(write(t, v), ["CNV", "DME"])
    assert items == [{"path": str(tmp_path / "t1.png"), "class_name": "CNV"}]
    assert held_out_items(write([], v), ["CNV", "DME"]) == [{"path": str(tmp_path / "v1.png"), "class_name": "DME"}]
    with pytest.raises(ValueError, match="no real image"):
        held_out_items(write([], []), ["CNV"])


def test_bscan_png_strips_metadata_and_resizes(tmp_path: Path):
    arr = (np.arange(40 * 80).reshape(40, 80) % 251).astype(np.uint8)
    path = write_bscan_png(tmp_path / "synthetic_x.png", arr, provenance={"seed": 3, "class_name": "DME"})
    png = bscan_png(path, (32, 64))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "L" and image.size == (64, 32)
    assert not image.info and b"medicraft" not in png and b"seed" not in png
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(bscan_png(path)))), arr)


def _deck_files(tmp_path: Path) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(0)
    real = []
    for i, cls in enumerate(["CNV", "DME", "DME"]):
        path = tmp_path / "held_out" / f"patient-{1000 + i}-scan.jpeg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 96), dtype=np.uint8)).save(path, quality=95)
        real.append({"path": str(path), "class_name": cls})
    synthetic = {}
    for i, cls in enumerate(["DME", "DRUSEN"]):
        path = write_bscan_png(tmp_path / "studies" / f"synthetic_{cls}_{i}.png",
                               rng.integers(0, 255, (32, 64), dtype=np.uint8), provenance={"class_name": cls})  # fmt: skip
        synthetic[cls] = [(path.stem, str(path))]
    return real, synthetic


def test_turing_deck_serves_opaque_trials_and_records_answers(tmp_path: Path):
    real, synthetic = _deck_files(tmp_path)
    studies = tmp_path / "studies"
    # draws: truth (0 real, 1 synthetic), class (of the common classes: only DME), image
    deck = TuringDeck(real, TuringAnswers(studies), (32, 64), rng=FixedChoices([0, 0, 0, 1, 0, 0, 0, 0, 0]))
    assert deck.classes(synthetic) == ["DME"] and deck.real_count == 3
    first = deck.draw(" Dr  R ", synthetic)
    second = deck.draw("Dr R", synthetic)
    assert set(first) == {"token", "classes"} and first["classes"] == ["DME"]
    for trial in (first, second):
        assert not any(s in trial["token"] for s in ("patient", "scan", "synthetic", "DME", "real"))
        image = Image.open(io.BytesIO(deck.png(trial["token"])))
        assert image.size == (64, 32) and image.mode == "L" and not image.info  # real and synthetic alike

    with pytest.raises(ReviewError, match="real, synthetic|'answer'"):
        deck.answer(first["token"], "Dr R", "maybe")
    with pytest.raises(ReviewError, match="another reader"):
        deck.answer(first["token"], "Dr S", "real")
    with pytest.raises(ReviewError, match="unknown class"):
        deck.answer(first["token"], "Dr R", "real", "GLAUCOMA")
    assert deck.answer(first["token"], "Dr R", "real", "DME") == {"recorded": True, "answers": 1}
    assert deck.answer(second["token"], "Dr R", "real") == {"recorded": True, "answers": 2}
    with pytest.raises(ReviewError) as err:
        deck.answer(first["token"], "Dr R", "real")
    assert err.value.status == 404
    with pytest.raises(ReviewError, match="reader's name"):
        deck.draw("", synthetic)
    with pytest.raises(ReviewError) as err:
        deck.draw("Dr R", {"DRUSEN": synthetic["DRUSEN"]})
    assert err.value.status == 409

    records = load_turing_answers(studies)
    assert [(r["truth"], r["answer"], r["correct"], r["true_class"], r["class_answer"], r["class_correct"])
            for r in records] == [("real", "real", True, "DME", "DME", True),
                                  ("synthetic", "real", False, "DME", None, None)]  # fmt: skip
    assert records[1]["image"] == "synthetic_DME_0" and "image" not in records[0]
    text = (studies / TURING_ANSWERS).read_text()
    assert "patient-" not in text and "held_out" not in text, "a real image is named in the answers"


def test_export_reports_the_blinded_reading(tmp_path: Path):
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "datastore_v2.json").write_text(json.dumps({"name": "x", "images_dir": ".", "objects": {}}))
    answers = TuringAnswers(studies)
    for rec in [_record("A", "real", "real", "DME"), _record("A", "synthetic", "real", "DME"),
                _record("B", "synthetic", "synthetic", "CNV", "CNV")]:  # fmt: skip
        answers.add(rec)
    result = export_reviews(studies, tmp_path / "out", anatomy=False)
    report = json.loads(Path(result["report_json"]).read_text())
    t = report["turing"]
    assert (t["trials"], t["correct"], t["ci95"]) == (3, 2, binomial_ci(2, 3)) and result["turing"] == t
    assert set(t["per_reader"]) == {"A", "B"} and t["class_accuracy"]["trials"] == 1
    md = Path(result["report_md"]).read_text()
    assert "## Blinded reading: real or synthetic?" in md and "| reader A | 2 | 1 | 50.0% |" in md
    assert "indistinguishable" in md or "could not tell" in md


def test_real_trials_are_framed_like_the_generators_training_data(tmp_path: Path, real_bscan_paths: list[Path]):
    """A real held-out scan is shown as the generator saw its training data (rows around the retina kept, then a
    centre cut to the generator's aspect), not squashed whole into its size: framing must not give it away."""
    from medicraft_monai.metrics.images import load_images

    scan = real_bscan_paths[-1]  # a NORMAL Spectralis B-scan, 496 rows
    real = [{"path": str(scan), "class_name": "NORMAL"}]
    synthetic = {"NORMAL": [("synthetic_NORMAL_0", str(write_bscan_png(
        tmp_path / "synthetic_NORMAL_0.png", np.zeros((32, 64), np.uint8), provenance={"class_name": "NORMAL"})))]}  # fmt: skip
    framed = TuringDeck(real, TuringAnswers(tmp_path / "a"), (32, 64), rng=FixedChoices([0, 0, 0]), crop_height=256,
                        resize_mode="crop")  # fmt: skip
    plain = TuringDeck(real, TuringAnswers(tmp_path / "b"), (32, 64), rng=FixedChoices([0, 0, 0]))
    shown = np.asarray(Image.open(io.BytesIO(framed.png(framed.draw("Dr R", synthetic)["token"]))), dtype=np.float64)
    squashed = np.asarray(Image.open(io.BytesIO(plain.png(plain.draw("Dr R", synthetic)["token"]))), dtype=np.float64)
    prepared = load_images([str(scan)], (32, 64), crop_height=256, resize_mode="crop", progress=False)[0][0, 0]
    assert shown.shape == squashed.shape == (32, 64)
    # the same pixels as the training preparation, to the 8-bit rounding (half a grey level)
    assert np.abs(shown - prepared.numpy() * 255.0).max() <= 0.5 + 1e-6
    assert np.abs(shown - squashed).mean() > 5.0  # and visibly not the whole scan squashed into 32 x 64
