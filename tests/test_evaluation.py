"""The synthetic-data evaluation end to end: known answers, resume, bad input, the bundle and the CLI.

Real and "synthetic" sets are phantom exams (the truth is known); a synthetic set that copies training images must
be caught by the privacy audit and look perfect to the fidelity metrics, and a set of fresh exams from other eyes
must not be flagged. The per-image anatomy table runs on real OCT images from ../shared/data/oct2017.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from medicraft_monai.bundles import config_files
from medicraft_monai.data.datalist import load_datalist, write_datalist
from medicraft_monai.data.errors import EmptyDatasetError, SplitLeakError
from medicraft_monai.data.phantom import make_phantom_dataset
from medicraft_monai.evaluation import EvaluationError, EvaluationSettings, evaluate_synthesis
from medicraft_monai.evaluation.per_image import check_anatomy
from tests._subprocess import run_group

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "oct_synthesis_eval"
SIZE = (64, 128)


def _synthetic_datalist(path: Path, real: dict, items: list[dict]) -> Path:
    """A synthetic datalist (as medicraft multiply writes) holding ``items``, marked synthetic."""
    marked = []
    for k, it in enumerate(items):
        marked.append({**it, "synthetic": True, "patient_id": f"synthetic-{k:04d}", "exam_id": f"synthetic-{k:04d}"})
    data = {
        "labels": real["labels"],
        "num_classes": real["num_classes"],
        "training": marked,
        "validation": [],
        "test": [],
    }
    return write_datalist(path, data)


@pytest.fixture(scope="module")
def phantom_sets(tmp_path_factory) -> dict[str, Path]:
    """A real phantom data set (patient-split) and two synthetic sets: copies of its training images, and fresh
    exams of other eyes (new seeds: realistic, but nobody's copy)."""
    root = tmp_path_factory.mktemp("evaluation")
    make_phantom_dataset(root / "real", exams=9, seed=3, height=SIZE[0], width=SIZE[1], progress=False)
    make_phantom_dataset(root / "fresh", exams=6, seed=77, height=SIZE[0], width=SIZE[1], progress=False)
    real = load_datalist(root / "real" / "datalist.json")
    fresh = load_datalist(root / "fresh" / "datalist.json", check=False)
    copies = _synthetic_datalist(root / "copies.json", real, real["training"])
    fresh_items = [it for split in ("training", "validation", "test") for it in fresh[split]]
    fresh_path = _synthetic_datalist(root / "fresh.json", real, fresh_items)
    return {"root": root, "real": root / "real" / "datalist.json", "copies": copies, "fresh": fresh_path}


def _settings(**kw) -> EvaluationSettings:
    base = dict(image_size=SIZE, max_per_class=12, utility=False, anatomy_validation_exams=0, crop_height=None)
    base.update(kw)
    return EvaluationSettings.tiny(**base)


def test_copied_training_images_are_flagged_and_look_perfect(phantom_sets, tmp_path) -> None:
    m = evaluate_synthesis(
        phantom_sets["real"], phantom_sets["copies"], tmp_path / "copies", _settings(resize_mode="crop")
    )
    assert m["data"]["resize_mode"] == "crop"
    fid, priv = m["fidelity"]["overall"], m["privacy"]
    # identical images: precision and recall are perfect and the Frechet distance is far below real-vs-real
    assert fid["precision"] == 1.0 and fid["recall"] == 1.0
    assert fid["frechet_distance"] < 0.05 * max(m["fidelity"]["real_test_reference"]["frechet_distance"], 1e-9)
    assert fid["nearest_real_ssim"]["median"] == pytest.approx(1.0, abs=1e-4)
    # ... and the privacy audit catches every copy, in both spaces
    assert priv["flagged"] is True and "memorisation suspected" in priv["verdict"]
    for space in ("features", "pixels"):
        assert priv["spaces"][space]["fraction_below"] == 1.0
        assert priv["spaces"][space]["n_exact_copies"] == priv["spaces"][space]["n_synthetic"]
    report = (tmp_path / "copies" / "report.md").read_text()
    assert "memorisation suspected" in report
    assert (tmp_path / "copies" / "figures" / "closest_pairs_features.png").stat().st_size > 1000


def test_real_scans_of_two_widths_are_compared_with_one_field_of_view(oct2017_dir, tmp_path) -> None:
    """``resize_mode="crop"`` reaches the real images: a 768-wide OCT2017 scan fills the frame (no padding bars,
    unlike "fit"); an unknown mode is refused."""
    from medicraft_monai.metrics.images import load_images

    manifest = (oct2017_dir / "manifest.csv").read_text().splitlines()[1:]
    wide = next(oct2017_dir / row.split(",")[0] for row in manifest if row.split(",")[4] == "768")
    items = [{"image": str(wide), "label": 0}]
    x_fit, _ = load_images(items, SIZE, crop_height=256, resize_mode="fit", progress=False)
    x_crop, _ = load_images(items, SIZE, crop_height=256, resize_mode="crop", progress=False)
    # 256 x 768 into 64 x 128 with "fit": 43 x 128 of content, letterboxed by blank rows above and below
    assert (x_fit[0, 0].abs().sum(1) == 0).sum() == 64 - 43
    assert (x_crop[0, 0].abs().sum(1) > 0).all() and (x_crop[0, 0].abs().sum(0) > 0).all()
    with pytest.raises(ValueError, match="'fit', 'stretch' or 'crop'"):
        load_images(items, SIZE, crop_height=256, resize_mode="letterbox", progress=False)


def test_fresh_eyes_are_not_flagged_and_the_report_has_every_section(phantom_sets, tmp_path) -> None:
    out = tmp_path / "fresh"
    m = evaluate_synthesis(phantom_sets["real"], phantom_sets["fresh"], out, _settings(anatomy_validation_exams=1))
    # other eyes are as far from the training eyes as held-out real eyes are (with only 36 held-out images the 1st
    # percentile is their minimum, so a few fresh images may fall below it by chance)
    feats, pixels = m["privacy"]["spaces"]["features"], m["privacy"]["spaces"]["pixels"]
    assert feats["flagged"] is False and feats["fraction_below"] <= 0.1
    assert pixels["fraction_below"] < 0.2 and 0.8 < pixels["median_ratio"] < 1.25
    # fresh phantom eyes are about as close to the training set as held-out real eyes
    ssim_syn = m["fidelity"]["overall"]["nearest_real_ssim"]["median"]
    ssim_ref = m["fidelity"]["real_test_reference"]["nearest_real_ssim"]["median"]
    assert 0.5 < ssim_syn < 0.999 and abs(ssim_syn - ssim_ref) < 0.15
    # phantom images are anatomically plausible for the phantom protocol's checks
    assert m["anatomy"]["synthetic"]["pass_rate"] > 0.6
    assert set(m["anatomy"]["validation_on_phantom"]["checks"]) >= {"doubled_fovea", "absent_fovea"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["privacy"]["verdict"] == m["privacy"]["verdict"]
    report = (out / "report.md").read_text()
    for heading in ("## At a glance", "## Fidelity", "## Diversity", "## Privacy", "## Anatomy", "## Samples"):
        assert heading in report
    for fig in ("samples.png", "diversity.png", "anatomy.png"):
        assert (out / "figures" / fig).stat().st_size > 1000


def test_an_interrupted_evaluation_resumes_and_a_changed_one_is_refused(phantom_sets, tmp_path, capsys) -> None:
    """With ``feature_extractor="train"`` (a classifier trained on the real training split, the former default): the
    report names the checkpoint trained here, and a resumed run reuses it."""
    from medicraft_monai.utils import file_sha256

    out = tmp_path / "resume"
    train = _settings(anatomy=False, feature_extractor="train")
    m = evaluate_synthesis(phantom_sets["real"], phantom_sets["fresh"], out, train)
    ckpt = out / "feature_extractor" / "models" / "model.pt"
    feat = m["features"]
    assert feat["spec"] == "train" and "trained here on the real training split" in feat["extractor"]
    assert feat["file"] == str(ckpt.resolve()) and feat["sha256"] == file_sha256(ckpt)
    trained = ckpt.stat().st_mtime_ns
    kept = out / "sections" / "fidelity.json"
    before = kept.stat().st_mtime_ns
    # a run that died after the fidelity section: later sections and the report are gone
    for name in ("diversity.json", "privacy.json"):
        (out / "sections" / name).unlink()
    (out / "report.md").unlink()
    capsys.readouterr()
    m = evaluate_synthesis(phantom_sets["real"], phantom_sets["fresh"], out, train)
    log = capsys.readouterr().out
    assert "fidelity: already done" in log and "privacy: already done" not in log
    assert kept.stat().st_mtime_ns == before and ckpt.stat().st_mtime_ns == trained  # nothing retrained
    assert (out / "report.md").is_file() and m["privacy"]["spaces"]["features"]["flagged"] is False
    with pytest.raises(EvaluationError, match="other inputs or settings"):
        evaluate_synthesis(phantom_sets["real"], phantom_sets["copies"], out, train)
    with pytest.raises(EvaluationError, match="feature_extractor"):  # the fixed extractor's features differ
        evaluate_synthesis(phantom_sets["real"], phantom_sets["fresh"], out, _settings(anatomy=False))
    # overwrite starts afresh
    m2 = evaluate_synthesis(phantom_sets["real"], phantom_sets["copies"], out, train, overwrite=True)
    assert m2["privacy"]["flagged"] is True


def test_bad_inputs_get_clear_errors(phantom_sets, tmp_path) -> None:
    real = load_datalist(phantom_sets["real"])
    other = dict(real, labels={"0": "a", "1": "b", "2": "c"})
    wrong_classes = _synthetic_datalist(tmp_path / "wrong.json", other, real["training"][:3])
    with pytest.raises(EvaluationError, match="classes"):
        evaluate_synthesis(phantom_sets["real"], wrong_classes, tmp_path / "o1", _settings())
    empty = _synthetic_datalist(tmp_path / "empty.json", real, [])
    with pytest.raises(EmptyDatasetError, match="no synthetic images"):
        evaluate_synthesis(phantom_sets["real"], empty, tmp_path / "o2", _settings())
    leaky = dict(real, test=real["test"] + real["training"][:1])
    leaky_path = write_datalist(tmp_path / "leaky.json", leaky)
    with pytest.raises(SplitLeakError):
        evaluate_synthesis(leaky_path, phantom_sets["fresh"], tmp_path / "o3", _settings())
    with pytest.raises(ValueError, match="unknown evaluation setting"):
        EvaluationSettings.from_mapping({"image_sise": [64, 128]})
    for bad in ("0", 1.5, True):
        with pytest.raises(ValueError, match="imbalance_seed must be an integer or None"):
            EvaluationSettings.from_mapping({"imbalance_seed": bad})
    assert EvaluationSettings.from_mapping({"imbalance_seed": 3}).to_dict()["imbalance_seed"] == 3


def test_the_bundle_runs_the_whole_evaluation_with_utility(phantom_sets, tmp_path) -> None:
    out = tmp_path / "bundle_eval"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", repr([str(f) for f in config_files(BUNDLE, "evaluate.json")]),
        "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
        "--logging_file", str(BUNDLE / "configs" / "logging.conf"),
        "--bundle_root", str(BUNDLE),
        "--real_datalist", str(phantom_sets["real"]),
        "--synthetic_datalist", str(phantom_sets["fresh"]),
        "--output_dir", str(out),
        "--image_size", "[32, 64]", "--crop_height", "0", "--max_per_class", "8",
        "--utility_seeds", "[0]", "--classifier", "{'tiny': True, 'max_epochs': 2}", "--imbalance_seed", "2",
        "--anatomy_validation_exams", "0", "--kid_subsets", "3", "--ms_ssim_pairs", "10",
        "--device", "cpu", "--progress", "false",
    ]  # fmt: skip
    proc = run_group(cmd, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    ex = metrics["utility"]["experiments"]
    assert {"TRTR", "TSTR", "TRTS", "real_imbalanced", "real_imbalanced_plus_synthetic"} <= set(ex)
    for e in ex.values():
        assert 0.0 <= e["metrics"]["balanced_accuracy"]["mean"] <= 1.0
    assert metrics["utility"]["imbalance"]  # the "auto" imbalance subsamples every class but the largest
    assert metrics["utility"]["imbalance_seed"] == 2  # the bundle key reaches the study
    report = (out / "report.md").read_text()
    assert "## Utility" in report and "TSTR" in report
    assert (out / "figures" / "confusion_TSTR.png").is_file()


def test_medicraft_evaluate_command(phantom_sets, tmp_path) -> None:
    out = tmp_path / "cli_eval"
    cmd = [
        sys.executable, "-m", "medicraft_monai.cli", "evaluate", str(phantom_sets["real"]), str(phantom_sets["copies"]),
        "--output_dir", str(out), "--tiny", "--noutility", "--image_size", "32,64", "--crop_height", "0",
        "--device", "cpu",
    ]  # fmt: skip
    proc = run_group(cmd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["privacy"]["flagged"] is True
    # no --feature_extractor: the fixed extractor shipped in the evaluation bundle, named with its checksum
    from medicraft_monai.utils import file_sha256

    shipped = BUNDLE / "models" / "model.pt"
    feat = metrics["features"]
    assert feat["spec"] == "oct" and feat["file"] == str(shipped.resolve()) and feat["dimension"] == 1024
    assert feat["sha256"] == file_sha256(shipped) and feat["input_size"] == [128, 256]
    report = (out / "report.md").read_text()
    assert "## Features" in report and f"`{feat['sha256']}`" in report and feat["extractor"] in report
    bad = run_group([*cmd[:4], str(tmp_path / "missing.json"), *cmd[5:]], timeout=120)
    assert bad.returncode == 2 and "missing.json" in bad.stderr and "Traceback" not in bad.stderr


def test_per_image_anatomy_table_on_real_images_reports_an_unreadable_file(oct2017_dir, tmp_path) -> None:
    folder = tmp_path / "images" / "NORMAL"
    folder.mkdir(parents=True)
    for p in sorted((oct2017_dir / "NORMAL").glob("*.jpeg"))[:6]:
        shutil.copy(p, folder / p.name)
    good = sorted(folder.glob("*.jpeg"))[0]
    (folder / "broken.jpeg").write_bytes(good.read_bytes()[:300])
    result = check_anatomy(tmp_path / "images", tmp_path / "table", profile="spectralis", progress=False)
    rows = json.loads(Path(result["json"]).read_text())["images"]
    assert len(rows) == 7
    broken = [r for r in rows if r["image"].endswith("broken.jpeg")]
    assert len(broken) == 1 and "broken.jpeg" in broken[0]["error"]
    checked = [r for r in rows if not r["error"]]
    assert len(checked) == 6 and sum(bool(r["passed"]) for r in checked) >= 5  # healthy eyes pass (about 99%)
    assert result["summary"]["errors"] == 1
    header = Path(result["csv"]).read_text().splitlines()[0]
    assert header.startswith("image,class_name,passed,failures,doubled_fovea")


def test_the_context_restoration_encoder_is_a_feature_extractor(phantom_sets, tmp_path) -> None:
    import torch

    from medicraft_monai.ssl import ContextRestorationNet, export_encoder

    torch.manual_seed(0)
    net = ContextRestorationNet(features=(8, 8, 16, 16, 32, 8))
    torch.save(net.state_dict(), tmp_path / "pretrained.pt")
    encoder = export_encoder(tmp_path / "pretrained.pt", tmp_path / "encoder.ts", input_size=SIZE)
    m = evaluate_synthesis(
        phantom_sets["real"],
        phantom_sets["copies"],
        tmp_path / "ssl",
        _settings(feature_extractor=str(encoder), anatomy=False),
    )
    from medicraft_monai.utils import file_sha256

    feat = m["features"]
    assert feat["spec"] == str(encoder) and feat["extractor"] == "TorchScript encoder.ts"
    assert feat["file"] == str(Path(encoder).resolve()) and feat["sha256"] == file_sha256(encoder)
    assert feat["dimension"] == 32  # the encoder's deepest feature count
    assert not (tmp_path / "ssl" / "feature_extractor").exists()  # nothing was trained
    assert m["fidelity"]["overall"]["precision"] == 1.0 and m["privacy"]["spaces"]["features"]["flagged"] is True
