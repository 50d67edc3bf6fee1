"""The per-image QA of synthetic images (``ImageQA``): anatomy, the shipped classifier's agreement with the intended
class, the distance to the nearest real training image with the memorisation flag, and the gate's summary.

Real OCT2017 B-scans stand in for synthetic ones: a copied training image must be flagged as memorised, held-out
images of other patients must not be, and unreadable files are rows with their error.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from _datalists import generator_output, small_oct2017_datalist

from medicraft_monai.data import load_datalist
from medicraft_monai.evaluation.per_image import (
    QA_FIELDS,
    ImageQA,
    assess_images,
    qa_record,
    summarise_qa,
    write_qa_table,
)
from medicraft_monai.utils import file_sha256

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]


@pytest.fixture(scope="module")
def datalist(oct2017_dir: Path, tmp_path_factory) -> Path:
    """4 training, 2 validation and 2 test B-scans per class (patient-level splits of the real sample)."""
    return small_oct2017_datalist(oct2017_dir, tmp_path_factory.mktemp("data") / "datalist.json", 4, 2, 2)


@pytest.fixture(scope="module")
def qa(datalist: Path) -> ImageQA:
    return ImageQA.from_bundles(
        REPO / "bundles" / "oct_classifier",
        REPO / "bundles" / "oct_synthesis_eval",
        datalist,
        anatomy_profile="spectralis",
        image_size=(64, 128),
        crop_height=256,
        progress=False,
    )


@pytest.fixture(scope="module")
def assessed(qa: ImageQA, datalist: Path, tmp_path_factory) -> dict:
    """A folder of 'synthetic' images as a 64 x 128 generator writes them: the test split (other patients), one
    training image copied, a corrupt and a truncated file; assessed and written as a QA table."""
    data = load_datalist(datalist)
    folder = tmp_path_factory.mktemp("synthetic")
    for it in data["test"]:
        generator_output(it["image"], folder / it["class_name"] / f"{Path(it['image']).stem}.png")
    copied = data["training"][0]
    copy_path = generator_output(
        copied["image"], folder / copied["class_name"] / f"copy_{Path(copied['image']).stem}.png"
    )
    (folder / "NORMAL" / "corrupt.png").write_bytes(b"this is not a PNG")
    good = Path(data["test"][0]["image"]).read_bytes()
    (folder / "CNV" / "truncated.jpeg").write_bytes(good[: len(good) // 3])
    out = tmp_path_factory.mktemp("qa")
    result = assess_images(folder, out, qa, min_pass_fraction=0.5)
    rows = json.loads(Path(result["json"]).read_text())["images"]
    return {"rows": {Path(r["image"]).name: r for r in rows}, "result": result, "copy": copy_path.name,
            "test": [f"{Path(it['image']).stem}.png" for it in data["test"]], "out": out}  # fmt: skip


def test_a_copied_training_image_is_flagged_and_held_out_patients_are_not(assessed: dict) -> None:
    rows = assessed["rows"]
    copy = rows[assessed["copy"]]
    assert copy["memorised"] is True and copy["passed"] is False
    assert Path(copy["nearest_real_image"]).stem == Path(assessed["copy"]).stem.removeprefix("copy_")
    # an 8-bit copy: its quantisation (at most half a grey level per pixel) moves it only a little from the original
    assert copy["nearest_real_distance"] <= 0.02 * copy["memorisation_threshold"]
    assert any("training image" in r for r in copy["reasons"])
    held_out = [rows[name] for name in assessed["test"]]
    # the threshold is the 1st percentile of real held-out-to-training distances: new patients lie above it
    assert sum(bool(r["memorised"]) for r in held_out) <= 1
    for r in held_out:
        assert r["error"] is None and r["nearest_real_distance"] > 0
        assert r["memorisation_threshold"] == copy["memorisation_threshold"] > 0


def test_the_classifier_agrees_with_the_class_of_most_real_images(assessed: dict) -> None:
    held_out = [assessed["rows"][name] for name in assessed["test"]]
    for r in held_out:
        assert r["predicted"] in CLASSES and 0.25 <= r["confidence"] <= 1.0  # the top of 4 probabilities
        assert 0 <= r["intended_probability"] <= r["confidence"]
        assert r["agrees"] == (r["predicted"] == r["class_name"] and r["intended_probability"] >= 0.5)
        assert 0.0 <= r["uncertainty"] <= 1.0
        if not r["agrees"]:
            assert any(r["class_name"] in reason for reason in r["reasons"]) and not r["passed"]
    # the shipped classifier's held-out balanced accuracy is about 0.9: 8 held-out scans, at most 3 missed
    assert sum(r["agrees"] for r in held_out) >= 5


def test_unreadable_files_are_rows_with_their_error_and_the_rest_is_assessed(assessed: dict) -> None:
    rows = assessed["rows"]
    for name in ("corrupt.png", "truncated.jpeg"):
        r = rows[name]
        assert r["passed"] is False and name in r["error"] and r["predicted"] is None and r["frame"] == 0
        assert r["reasons"] == [f"unreadable: {r['error']}"]
    assert len(rows) == len(assessed["test"]) + 3
    assert sum(r["error"] is not None for r in rows.values()) == 2
    for r in rows.values():
        if r["error"] is None:
            assert isinstance(r["anatomy_passed"], bool)
            assert r["passed"] == (not r["reasons"])
            assert (r["anatomy_passed"] is False) == any(x.startswith("anatomy:") for x in r["reasons"])


def test_the_table_csv_json_and_summary_agree(assessed: dict) -> None:
    result, out = assessed["result"], assessed["out"]
    table = json.loads((out / "qa.json").read_text())
    with open(out / "qa.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert list(csv_rows[0]) == list(QA_FIELDS) and len(csv_rows) == len(table["images"])
    for c, j in zip(csv_rows, table["images"]):
        assert c["image"] == j["image"] and c["passed"] == str(j["passed"])
        assert c["memorised"] == ("" if j["memorised"] is None else str(j["memorised"]))
        assert c["reasons"] == ";".join(j["reasons"])
    summary = json.loads((out / "qa_summary.json").read_text())
    assert summary == table["summary"] == json.loads(json.dumps(result["summary"]))
    assert summary["n"] == len(table["images"]) and summary["n_errors"] == 2 and summary["n_memorised"] >= 1
    assert summary["passed"] is False and "unreadable" in summary["verdict"] and "training image" in summary["verdict"]
    assert table["settings"]["classifier"]["class_names"] == CLASSES
    shipped = REPO / "bundles" / "oct_synthesis_eval" / "models" / "model.pt"
    assert table["settings"]["extractor"]["sha256"] == file_sha256(shipped) and table["settings"]["n_reference"] == 16


def test_the_gate_is_relative_to_real_scans_of_other_patients(qa: ImageQA, assessed: dict) -> None:
    real = qa.real_reference()  # the validation split (other patients), through the same checks but memorisation
    assert real["n"] == 8 and real["n_errors"] == 0 and set(real["per_class"]) == set(CLASSES)
    same_checks = ImageQA(anatomy_profile="spectralis", classifier=qa.classifier, image_size=(64, 128),
                          crop_height=256, progress=False).assess(qa.calibration, real=True)  # fmt: skip
    assert all(r["memorised"] is None for r in same_checks)
    assert math.isclose(real["pass_fraction"], sum(r["passed"] for r in same_checks) / 8)
    assert math.isclose(real["classifier_agreement"], sum(r["agrees"] for r in same_checks) / 8)
    assert math.isclose(real["anatomy_pass_rate"], sum(r["anatomy_passed"] for r in same_checks) / 8)
    assert qa.real_reference() is real  # computed once
    summary = assessed["result"]["summary"]
    assert summary["real"] == real and math.isclose(summary["required_pass_fraction"], 0.5 * real["pass_fraction"])


def test_min_confidence_is_the_agreement_threshold(qa: ImageQA, datalist: Path) -> None:
    items = [dict(it) for it in load_datalist(datalist)["test"][:4]]
    strict = ImageQA(
        anatomy_profile=None, classifier=qa.classifier, min_confidence=1.0, progress=False
    )  # no anatomy, no memorisation check
    for r in strict.assess(items):
        assert r["anatomy_passed"] is None and r["memorised"] is None and r["nearest_real_distance"] is None
        assert r["agrees"] == (r["predicted"] == r["class_name"] and r["intended_probability"] >= 1.0)
        record = qa_record(r)
        assert record["anatomy"] is None and record["nearest_real"] is None
        assert record["classifier"]["agrees"] == r["agrees"] and record["passed"] == r["passed"]


def test_a_class_unknown_to_the_classifier_fails_and_no_class_only_reports(qa: ImageQA, datalist: Path) -> None:
    item = dict(load_datalist(datalist)["test"][0])
    unknown, unnamed = qa.assess([{**item, "class_name": "MELANOMA"}, {**item, "class_name": ""}])
    assert unknown["agrees"] is None and unknown["passed"] is False
    assert any("'MELANOMA' unknown to the classifier" in r for r in unknown["reasons"])
    assert unnamed["agrees"] is None and unnamed["predicted"] in CLASSES
    assert not any("unknown to the classifier" in r for r in unnamed["reasons"])


def _row(passed: bool, cls: str = "CNV", error: str | None = None, memorised: bool | None = False) -> dict:
    return {**{k: None for k in QA_FIELDS}, "image": "x.png", "class_name": cls, "passed": passed, "error": error,
            "memorised": memorised, "reasons": [] if passed else ["anatomy: absent_fovea"]}  # fmt: skip


def test_the_gate_needs_readable_files_no_copies_and_enough_passes(tmp_path: Path) -> None:
    four = [_row(True), _row(True), _row(True), _row(False, "DME")]
    ok = summarise_qa(four, min_pass_fraction=0.75)
    assert ok["passed"] is True and ok["verdict"] == "pass" and ok["pass_fraction"] == 0.75
    assert ok["per_class"] == {"CNV": {"n": 3, "passed": 3, "pass_fraction": 1.0},
                               "DME": {"n": 1, "passed": 0, "pass_fraction": 0.0}}  # fmt: skip
    assert summarise_qa(four, min_pass_fraction=0.76)["passed"] is False
    copied = summarise_qa([*four[:3], _row(False, memorised=True)], min_pass_fraction=0.5)  # 1 of 4: 25% > 5%
    assert copied["passed"] is False and copied["n_memorised"] == 1 and "training image" in copied["verdict"]
    many = [_row(True)] * 20
    one_in_21 = summarise_qa([*many, _row(False, memorised=True)], min_pass_fraction=0.5)  # 4.8% <= 5%: a real rate
    assert one_in_21["passed"] is True and one_in_21["n_memorised"] == 1
    assert summarise_qa([*many, _row(False, memorised=True)], 0.5, max_memorised_fraction=0.0)["passed"] is False
    broken = summarise_qa([*four[:3], _row(False, error="x.png: truncated")], min_pass_fraction=0.5)
    assert broken["passed"] is False and broken["n_errors"] == 1 and "unreadable" in broken["verdict"]
    assert summarise_qa([], 0.5)["passed"] is False
    # relative to real scans of other patients: 75% passing is enough when real scans pass 80% (0.9 x 80% = 72%)
    real = {"pass_fraction": 0.8}
    relative = summarise_qa(four, min_pass_fraction=0.9, real=real)
    assert relative["passed"] is True and math.isclose(relative["required_pass_fraction"], 0.72)
    assert relative["real"] == real
    strict = summarise_qa(four, min_pass_fraction=1.0, real=real)  # 75% < 80%
    assert strict["passed"] is False and "real images' 80%" in strict["verdict"]
    with pytest.raises(ValueError, match="min_pass_fraction"):
        write_qa_table(four, tmp_path / "never", min_pass_fraction=1.5)
    assert not (tmp_path / "never").exists()  # the argument is checked before anything is written


def test_bad_settings_are_refused_with_clear_errors(qa: ImageQA) -> None:
    with pytest.raises(ValueError, match="percentile"):
        ImageQA(anatomy_profile=None, percentile=0)
    with pytest.raises(ValueError, match="min_confidence"):
        ImageQA(anatomy_profile=None, min_confidence=1.5)
    with pytest.raises(ValueError, match="reference"):
        ImageQA(anatomy_profile=None, extractor=qa.extractor)
    with pytest.raises(ValueError, match="anatomy_profile"):
        ImageQA(anatomy_profile="topcon")
    assert math.isclose(qa.settings()["percentile"], 1.0)


def test_an_image_that_breaks_a_check_is_a_row_and_the_others_go_on(qa: ImageQA, datalist: Path) -> None:
    import dataclasses

    import torch

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # a network that fails on every input
            raise RuntimeError("out of memory")

    broken = ImageQA(anatomy_profile=None, classifier=dataclasses.replace(qa.classifier, network=Broken()))
    items = [dict(it) for it in load_datalist(datalist)["test"][:2]]
    rows = broken.assess(items)
    assert len(rows) == 2
    for row, item in zip(rows, items):
        assert row["passed"] is False and row["error"].startswith(f"{item['image']}: RuntimeError: out of memory")
        assert row["reasons"] == [f"not assessed: {row['error']}"] and row["class_name"] == item["class_name"]


def test_at_a_given_size_the_classifier_sees_the_image_as_a_generator_of_that_size_writes_it(
    qa: ImageQA, datalist: Path, tmp_path: Path
) -> None:

    item = dict(load_datalist(datalist)["test"][0])
    small = generator_output(item["image"], tmp_path / item["class_name"] / "small.png")  # 8-bit, 64 x 128
    no_distance = ImageQA(anatomy_profile=None, classifier=qa.classifier, image_size=(64, 128), crop_height=256,
                          progress=False)  # fmt: skip
    (original,) = no_distance.assess([item], real=True)  # cropped around the retina and resized, as real images are
    (png,) = no_distance.assess([{"image": str(small), "class_name": item["class_name"]}])
    # the same pixels reach the classifier either way: the same network on the same input gives the same numbers
    for key in ("predicted", "confidence", "intended_probability", "uncertainty", "agrees"):
        assert original[key] == png[key], key


def test_real_images_are_framed_with_the_generators_resize_mode(qa: ImageQA, datalist: Path, tmp_path: Path) -> None:
    """A copy of a training image made by a generator trained with ``resize_mode: crop`` (the shipped ones) is found
    only when the real images are framed the same way: with ``fit`` they are padded, and the copy looks new."""
    item = dict(load_datalist(datalist)["training"][0])
    copy = generator_output(item["image"], tmp_path / item["class_name"] / "copy.png", resize_mode="crop")
    distances = {}
    for mode in ("crop", "fit"):
        framed = ImageQA(anatomy_profile=None, extractor=qa.extractor, reference=qa.reference,
                         calibration=qa.calibration, image_size=(64, 128), crop_height=256, resize_mode=mode,
                         progress=False)  # fmt: skip
        (row,) = framed.assess([{"image": str(copy), "class_name": item["class_name"]}])
        distances[mode] = row["nearest_real_distance"]
        assert framed.settings()["resize_mode"] == mode
        if mode == "crop":
            assert row["memorised"] is True and row["nearest_real_distance"] <= 0.02 * row["memorisation_threshold"]
    assert distances["fit"] > 10 * distances["crop"]
    with pytest.raises(ValueError, match="resize_mode"):
        ImageQA(anatomy_profile=None, resize_mode="pad")
