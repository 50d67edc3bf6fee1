"""MONAI Deploy App SDK applications ``classify``, ``synthesize`` and ``qa``, run for real in their own environment.

Both apps run as ``python -m medicraft_monai.deploy.<app>`` subprocesses of ``.venv-deploy`` (monai-deploy-app-sdk
4.0.0 on holoscan-cu13, CPU only; created by ``scripts/setup_deploy_env.sh`` when missing) on real B-scans from
``../shared/data/oct2017`` plus a multi-frame DICOM Ophthalmic Tomography file and a truncated JPEG, with tiny
models made from the real bundles' configs:

- the classifier: ``bundles/oct_classifier/configs`` with a tiny DenseNet and the OCT2017 classes, random weights,
  exported to TorchScript by the real ``python -m monai.bundle ckpt_export``;
- the generator: ``bundles/oct_ddpm/configs/inference.json`` with a tiny UNet (random weights, 2 DDIM steps).

The apps' outputs are checked against the same models run in this process (the bundle's own preprocessing and
network; ``DiffusionGenerator.from_bundle``), so the numbers cannot be right by accident. The ``qa`` gate runs with
the shipped ``oct_classifier`` and ``oct_synthesis_eval`` bundles and a tiny real datalist, on real B-scans standing
in for synthetic ones (one of them a copy of a training image).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from _datalists import generator_output, small_oct2017_datalist
from _subprocess import run_group
from monai.bundle import ConfigParser, ckpt_export

from medicraft_monai.data import load_datalist, read_bscan, read_frames, write_oct_dicom
from medicraft_monai.deploy.classifier import (
    ClassifierModelError,
    TorchScriptClassifier,
    _channel_def_names,
    classify_frames,
)
from medicraft_monai.deploy.inputs import InputFrame, read_input_frames
from medicraft_monai.deploy.qa_gate import QASettings, QAUsageError, intended_class
from medicraft_monai.deploy.synthesis import SynthesisRequest, load_generator, resolve_bundle, synthesize
from medicraft_monai.engines.records import GeneratorError
from medicraft_monai.evaluation.per_image import QA_FIELDS
from medicraft_monai.networks import randomise_zero_weights
from medicraft_monai.networks.bundle import configured_class_names
from medicraft_monai.synthesis.generator import DiffusionGenerator
from medicraft_monai.synthesis.writers import to_uint, write_synthetic_image

REPO = Path(__file__).resolve().parents[1]
DEPLOY_VENV = Path(os.environ.get("MEDICRAFT_DEPLOY_VENV", REPO / ".venv-deploy"))
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
for _key in [k for k in ENV if k.startswith(("HOLOSCAN_", "MEDICRAFT_SYNTH_", "MEDICRAFT_QA_"))] + [
    "MEDICRAFT_CLASS_NAMES"
]:
    ENV.pop(_key, None)
SYNTH_NAME = re.compile(r"^synthetic_(?P<cls>[A-Za-z0-9_-]+)_(?P<index>\d{6})_s(?P<seed>\d+)\.(png|dcm)$")
APP_TIMEOUT = 240


# --------------------------------------------------------------------------------------------------------------------
# fixtures: the deploy environment, tiny models, inputs
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def deploy_python() -> Path:
    """``.venv-deploy``'s python, made by scripts/setup_deploy_env.sh (fast when it is up to date)."""
    proc = run_group(["bash", str(REPO / "scripts" / "setup_deploy_env.sh"), str(DEPLOY_VENV)], timeout=1500, env=ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    python = DEPLOY_VENV / "bin" / "python"
    assert python.is_file()
    return python


def run_app(
    python: Path, app: str, args: list[str], env: dict | None = None, returncode: int = 0
) -> subprocess.CompletedProcess:
    """Run ``python -m medicraft_monai.deploy.<app> ARGS`` and check its exit status."""
    proc = run_group([str(python), "-m", f"medicraft_monai.deploy.{app}", *args], timeout=APP_TIMEOUT, env=env or ENV)
    assert proc.returncode == returncode, (
        f"{app} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


def tiny_classifier_bundle(root: Path) -> Path:
    """The real oct_classifier configs with a tiny DenseNet, the OCT2017 classes and random weights."""
    src = REPO / "bundles" / "oct_classifier" / "configs"
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = ConfigParser.load_config_files([str(src / "common.json"), str(src / "inference.json")])
    # the deployed model needs no training code: keep the imports its preprocessing and network use
    config["imports"] = [i for i in config.get("imports", []) if "metrics" not in i]
    config.update(
        class_names=CLASSES, image_size=[32, 64], init_features=4, growth_rate=4, block_config=[1, 1], bn_size=1
    )
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    meta = json.loads((src / "metadata.json").read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    pred["channel_def"] = {str(i): c for i, c in enumerate(CLASSES)}
    pred["num_channels"] = len(CLASSES)
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2))
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    torch.manual_seed(0)
    net = randomise_zero_weights(parser.get_parsed_content("network_def"), std=0.2)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def classifier_bundle(tmp_path_factory) -> Path:
    """A tiny classifier bundle exported to ``models/model.ts`` by MONAI's ``ckpt_export``."""
    root = tiny_classifier_bundle(tmp_path_factory.mktemp("deploy") / "oct_classifier_tiny")
    ckpt_export(  # what `python -m monai.bundle ckpt_export network_def ...` runs, in this process
        net_id="network_def",
        filepath=str(root / "models" / "model.ts"),
        ckpt_file=str(root / "models" / "model.pt"),
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=str(root / "configs" / "inference.json"),
        bundle_root=str(root),
    )
    assert (root / "models" / "model.ts").is_file()
    return root


def expected_probabilities(bundle: Path, image: Path, frame: int = 0) -> np.ndarray:
    """What the bundle itself computes for one B-scan: its preprocessing, its network (model.pt), softmax."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    x = parser.get_parsed_content("preprocessing")({"image": str(image), "frame": frame})["image"]
    with torch.no_grad():
        return torch.softmax(net(torch.as_tensor(x)[None].float()), dim=1)[0].numpy()


@pytest.fixture(scope="module")
def classify_input(tmp_path_factory, real_bscan_paths: list[Path]) -> dict:
    """Six real JPEG B-scans (links, no copies), a 3-frame DICOM OPT exam of real B-scans in a sub-folder, and a
    truncated JPEG."""
    root = tmp_path_factory.mktemp("classify_in")
    jpegs = real_bscan_paths[::4]  # 6 images over the 4 classes
    for p in jpegs:
        (root / p.name).symlink_to(p)
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for p in real_bscan_paths:
        img, _ = read_bscan(p)
        by_shape.setdefault(img.shape, []).append(img)
    frames = next(v for v in by_shape.values() if len(v) >= 3)[:3]
    dicom = write_oct_dicom(root / "exam1" / "opt.dcm", np.stack(frames), plane_angles=[0, 30, 60], laterality="R")
    truncated = root / "truncated.jpeg"
    data = jpegs[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    return {"root": root, "jpegs": jpegs, "dicom": dicom, "frames": frames, "truncated": truncated}


def tiny_generator_bundle(root: Path) -> Path:
    """The real oct_ddpm inference.json with a tiny UNet, the OCT2017 classes, random weights and 2 DDIM steps."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    src = REPO / "bundles" / "oct_ddpm" / "configs"
    config = ConfigParser.load_config_files([str(src / "common.json"), str(src / "inference.json")])
    config.update(
        class_names=CLASSES,
        image_size=[16, 32],
        channels=[8, 16],
        attention_levels=[False, False],
        num_res_blocks=1,
        num_head_channels=8,
        norm_num_groups=8,
        use_flash_attention=False,
        num_inference_steps=2,
    )
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    torch.manual_seed(0)
    net = randomise_zero_weights(parser.get_parsed_content("network_def"), std=0.1)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def generator_bundle(tmp_path_factory) -> Path:
    return tiny_generator_bundle(tmp_path_factory.mktemp("models") / "oct_ddpm_tiny")


# --------------------------------------------------------------------------------------------------------------------
# classify
# --------------------------------------------------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_classify_app_on_real_images_reports_unreadable_file(
    deploy_python: Path, classifier_bundle: Path, classify_input: dict, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    model = classifier_bundle / "models" / "model.ts"
    proc = run_app(deploy_python, "classify", ["-i", str(classify_input["root"]), "-o", str(out), "-m", str(model)])
    summary = json.loads((out / "predictions.json").read_text())
    rows = summary["predictions"]
    # one row per image or frame (6 JPEGs, 3 DICOM frames) plus one for the truncated file
    assert len(rows) == 10 and summary["num_predictions"] == 9 and summary["num_errors"] == 1
    assert summary["num_files"] == 8 and summary["model"]["class_names"] == CLASSES
    assert summary["model"]["sha256"] and summary["model"]["path"] == str(model)
    assert "9 prediction(s) from 8 file(s), 1 error(s)" in proc.stdout

    errors = [r for r in rows if r["status"] == "error"]
    assert [r["file"] for r in errors] == ["truncated.jpeg"]
    assert "truncated.jpeg" in errors[0]["error"] and "truncated" in errors[0]["error"].split(":", 1)[1]
    assert errors[0]["probabilities"] == {} and errors[0]["predicted_class"] == ""

    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["file"] for r in ok if r["format"] == "jpeg") == sorted(p.name for p in classify_input["jpegs"])
    dicom_rows = [r for r in ok if r["file"] == "exam1/opt.dcm"]
    assert [(r["frame"], r["num_frames"], r["format"]) for r in dicom_rows] == [(i, 3, "dicom") for i in range(3)]
    for r in ok:
        probs = np.array([r["probabilities"][c] for c in CLASSES])
        assert list(r["probabilities"]) == CLASSES
        assert abs(probs.sum() - 1.0) < 1e-5 and (probs > 0).all()
        assert r["predicted_class"] == CLASSES[int(np.argmax(probs))] == CLASSES[r["predicted_label"]]
        assert r["confidence"] == pytest.approx(probs.max())

    # the app computes what the bundle computes (its own preprocessing and weights), frame by frame
    for r in ok[:2] + dicom_rows:
        want = expected_probabilities(classifier_bundle, classify_input["root"] / r["file"], r["frame"])
        got = np.array([r["probabilities"][c] for c in CLASSES])
        np.testing.assert_allclose(got, want, atol=1e-5)
    # different frames of the exam are different images, so the model sees them apart
    assert len({tuple(np.round(list(r["probabilities"].values()), 6)) for r in dicom_rows}) == 3

    table = read_csv(out / "predictions.csv")
    assert list(table[0]) == [
        "file",
        "frame",
        "num_frames",
        "format",
        "status",
        "predicted_class",
        "predicted_label",
        "confidence",
        *[f"prob_{c}" for c in CLASSES],
        "error",
    ]
    assert [(t["file"], int(t["frame"]), t["status"]) for t in table] == [
        (r["file"], r["frame"], r["status"]) for r in rows
    ]
    for t in table:
        if t["status"] == "ok":
            assert abs(sum(float(t[f"prob_{c}"]) for c in CLASSES) - 1.0) < 1e-4
        else:
            assert t["prob_CNV"] == "" and "truncated" in t["error"]


def test_classify_app_with_holoscan_environment(
    deploy_python: Path, classifier_bundle: Path, classify_input: dict, tmp_path: Path
) -> None:
    """No -i/-o/-m: HOLOSCAN_INPUT_PATH, HOLOSCAN_OUTPUT_PATH and HOLOSCAN_MODEL_PATH (a MAP-style model folder)."""
    inp = tmp_path / "input"
    inp.mkdir()
    for p in classify_input["jpegs"][:2]:
        (inp / p.name).symlink_to(p)
    models = tmp_path / "models" / "oct_classifier"
    models.mkdir(parents=True)
    shutil.copy(classifier_bundle / "models" / "model.ts", models / "model.ts")
    out = tmp_path / "output"
    env = {**ENV, "HOLOSCAN_INPUT_PATH": str(inp), "HOLOSCAN_OUTPUT_PATH": str(out)}
    env["HOLOSCAN_MODEL_PATH"] = str(tmp_path / "models")
    run_app(deploy_python, "classify", [], env=env)
    table = read_csv(out / "predictions.csv")
    assert sorted(t["file"] for t in table) == sorted(p.name for p in classify_input["jpegs"][:2])
    assert all(t["status"] == "ok" for t in table)
    for t in table:
        want = expected_probabilities(classifier_bundle, inp / t["file"])
        np.testing.assert_allclose([float(t[f"prob_{c}"]) for c in CLASSES], want, atol=1e-5)


def test_classifier_in_process_errors_and_class_names(
    classifier_bundle: Path, classify_input: dict, monkeypatch
) -> None:
    """The pieces without the App SDK: bad files and bad B-scans become rows, class names fall back sensibly."""
    records = read_input_frames(classify_input["root"])
    assert len(records) == 10 and sum(not r.ok for r in records) == 1
    frames, _ = read_frames(classify_input["dicom"])
    assert np.array_equal(frames, np.stack(classify_input["frames"]))

    clf = TorchScriptClassifier.load(classifier_bundle, device="cpu")  # a bundle folder: models/model.ts
    assert clf.class_names == CLASSES and clf.loads_files
    # a B-scan whose preprocessing fails (file gone after reading) is an error row; the others are classified
    ok = [r for r in records if r.ok][:3]
    broken = type(ok[0])(**{**ok[0].__dict__, "path": str(classify_input["root"] / "gone.jpeg"), "source": "gone.jpeg"})
    rows = classify_frames(clf, [broken, *ok[1:]], batch_size=2)
    assert [r["status"] for r in rows] == ["error", "ok", "ok"]
    assert "gone.jpeg" in rows[0]["error"] and "preprocessing failed" in rows[0]["error"]

    monkeypatch.setenv("MEDICRAFT_CLASS_NAMES", "a, b ,c,d")
    assert TorchScriptClassifier.load(classifier_bundle / "models" / "model.ts").class_names == ["a", "b", "c", "d"]
    monkeypatch.setenv("MEDICRAFT_CLASS_NAMES", "x,y")  # wrong count for 4 outputs: generic names, no crash
    clf2 = TorchScriptClassifier.load(classifier_bundle)
    assert classify_frames(clf2, ok[:1])[0]["predicted_class"].startswith("class_")
    assert clf2.class_names == [f"class_{i}" for i in range(4)]

    not_a_model = classify_input["root"] / "exam1" / "opt.dcm"
    with pytest.raises(ClassifierModelError, match=r"opt\.dcm: not a TorchScript model"):
        TorchScriptClassifier.load(not_a_model)
    with pytest.raises(ClassifierModelError, match="model file or folder not found"):
        TorchScriptClassifier.load(classify_input["root"] / "missing.ts")

    # the real bundle's class_names needs the training datalist: the metadata's channel_def is used instead
    expr = ConfigParser({"class_names": "$medicraft_monai.metrics.nothing_here(@datalist)", "datalist": "x.json"})
    assert configured_class_names(expr) is None
    assert configured_class_names(ConfigParser({"class_names": ["p", "q"]})) == ["p", "q"]
    meta = {"network_data_format": {"outputs": {"pred": {"channel_def": {"1": "benign", "0": "healthy"}}}}}
    assert _channel_def_names(meta) == ["healthy", "benign"] and _channel_def_names({}) is None


# --------------------------------------------------------------------------------------------------------------------
# synthesize
# --------------------------------------------------------------------------------------------------------------------
def synthetic_files(out: Path) -> list[Path]:
    return sorted(p for p in (out / "images").rglob("*") if p.is_file())


def test_synthesize_app_writes_marked_images_with_provenance(
    deploy_python: Path, generator_bundle: Path, tmp_path: Path
) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    request = {"num_images_per_class": 2, "seed": 5, "batch_size": 3}
    (inp / "synthesis_request.json").write_text(json.dumps(request))
    out = tmp_path / "out"
    env = {**ENV, "MEDICRAFT_SYNTH_NUM_IMAGES_PER_CLASS": "9"}  # the request file wins over the environment
    proc = run_app(deploy_python, "synthesize", ["-i", str(inp), "-o", str(out), "-m", str(generator_bundle)], env)
    assert "8 synthetic image(s)" in proc.stdout

    files = synthetic_files(out)
    assert len(files) == 8
    summary = json.loads((out / "synthesis.json").read_text())
    assert summary["counts"] == dict.fromkeys(CLASSES, 2) and summary["synthetic"] is True
    assert summary["generated"] == 8 and summary["request"]["seed"] == 5
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    table = read_csv(out / "manifest.csv")
    assert len(records) == len(table) == 8 and all(t["synthetic"] == "True" for t in table)
    assert sorted(out / r["path"] for r in records) == files

    gen = DiffusionGenerator.from_bundle(generator_bundle, device="cpu")
    assert {r["model_sha256"] for r in records} == {gen.checksum} == {summary["model"]["sha256"]}
    for rec in records:
        path = out / rec["path"]
        m = SYNTH_NAME.match(path.name)
        assert m and m["cls"] == rec["class_name"] == path.parent.name and int(m["seed"]) == rec["seed"]
        pixels, meta = read_bscan(path)
        assert meta["synthetic"] is True and pixels.shape == (16, 32)
        prov = meta["provenance"]
        assert prov["class_name"] == rec["class_name"] and prov["seed"] == rec["seed"] and prov["steps"] == 2
        assert prov["model_sha256"] == gen.checksum and prov["app"] == "medicraft_monai.deploy.synthesize"
        # the same generator in this process gives the same pixels for that class and seed
        want = gen.generate([rec["class_name"]], [rec["seed"]], 2)[0, 0]
        assert np.array_equal(pixels, to_uint(want, 8)), rec["path"]
    assert len({r["seed"] for r in records}) == 8
    assert np.std([read_bscan(f)[0].astype(float) for f in files], axis=0).mean() > 1  # images differ


def test_synthesize_app_dicom_with_holoscan_environment(
    deploy_python: Path, generator_bundle: Path, tmp_path: Path
) -> None:
    """HOLOSCAN_* paths (the model path a folder holding the bundle, as in a MAP) and MEDICRAFT_SYNTH_* settings."""
    inp = tmp_path / "input"
    inp.mkdir()
    out = tmp_path / "output"
    env = {**ENV, "HOLOSCAN_INPUT_PATH": str(inp), "HOLOSCAN_OUTPUT_PATH": str(out)}
    env["HOLOSCAN_MODEL_PATH"] = str(generator_bundle.parent)
    env.update(MEDICRAFT_SYNTH_NUM_IMAGES_PER_CLASS="1", MEDICRAFT_SYNTH_CLASSES="DME,NORMAL")
    env["MEDICRAFT_SYNTH_FORMAT"] = "dicom"
    run_app(deploy_python, "synthesize", [], env=env)
    files = synthetic_files(out)
    assert [f.parent.name for f in files] == ["DME", "NORMAL"] and all(f.suffix == ".dcm" for f in files)
    for f in files:
        ds = pydicom.dcmread(f)
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription.startswith("SYNTHETIC") and ds.PatientName == "SYNTHETIC"
        assert read_bscan(f)[1]["provenance"]["class_name"] == f.parent.name
    assert json.loads((out / "synthesis.json").read_text())["counts"] == {"DME": 1, "NORMAL": 1}


def test_synthesize_app_samples_with_the_shipped_distilled_student(deploy_python: Path, tmp_path: Path) -> None:
    """MEDICRAFT_SYNTH_SAMPLER=distilled: the app loads the shipped oct_ddpm's student weights and the steps it was
    distilled for (its diffusion.json), and the images are those the student makes in this process for the same
    class and seed."""
    bundle = REPO / "bundles" / "oct_ddpm"
    out = tmp_path / "output"
    env = {**ENV, "MEDICRAFT_SYNTH_SAMPLER": "distilled", "MEDICRAFT_SYNTH_CLASSES": "CNV,NORMAL"}
    env["MEDICRAFT_SYNTH_NUM_IMAGES_PER_CLASS"] = "1"
    run_app(deploy_python, "synthesize", ["-i", str(tmp_path), "-o", str(out), "-m", str(bundle)], env=env)
    summary = json.loads((out / "synthesis.json").read_text())
    student = DiffusionGenerator.from_bundle(bundle, device="cpu", overrides={"sampler": "distilled"})
    record = json.loads((bundle / "models" / "distilled" / "diffusion.json").read_text())
    assert summary["request"]["sampler"] == "distilled" and summary["counts"] == {"CNV": 1, "NORMAL": 1}
    assert student.num_inference_steps == record["num_inference_steps"] < 10  # fewer passes than the default
    assert (summary["model"]["sampler"], summary["model"]["steps"]) == ("distilled", record["num_inference_steps"])
    assert (
        summary["model"]["sha256"] == student.checksum != DiffusionGenerator.from_bundle(bundle, device="cpu").checksum
    )
    for path in synthetic_files(out):
        pixels, meta = read_bscan(path)
        prov = meta["provenance"]
        assert prov["sampler"] == "distilled" and prov["teacher_sha256"] == record["teacher"]["model_sha256"]
        want = student.generate([prov["class_name"]], [prov["seed"]])[0, 0]
        assert np.array_equal(pixels, to_uint(want, 8)), path


def test_synthesis_request_sampler(generator_bundle: Path) -> None:
    assert SynthesisRequest.from_sources(None, {"MEDICRAFT_SYNTH_SAMPLER": "ddim"}).sampler == "ddim"
    assert SynthesisRequest(sampler="").sampler is None
    with pytest.raises(ValueError, match="MEDICRAFT_SYNTH_.*unknown sampler 'fast'.*distilled"):
        SynthesisRequest.from_sources(None, {"MEDICRAFT_SYNTH_SAMPLER": "fast"})
    assert load_generator(generator_bundle.parent, SynthesisRequest(sampler="ddim"), "cpu").sampler == "ddim"
    # a bundle without a distilled student: the missing weights are named
    with pytest.raises(GeneratorError, match="distilled"):
        load_generator(generator_bundle, SynthesisRequest(sampler="distilled"), "cpu")


def test_synthesis_request_sources_resume_and_errors(generator_bundle: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    env = {"MEDICRAFT_SYNTH_SEED": "7", "MEDICRAFT_SYNTH_NUM_IMAGES_PER_CLASS": "3"}
    assert SynthesisRequest.from_sources(inp, env).num_images_per_class == 3
    (inp / "synthesis_request.json").write_text(json.dumps({"num_images_per_class": 1, "classes": ["CNV"]}))
    req = SynthesisRequest.from_sources(inp, env)
    assert (req.num_images_per_class, req.seed, req.classes) == (1, 7, ["CNV"])
    (inp / "synthesis_request.json").write_text(json.dumps({"images": 1}))
    with pytest.raises(ValueError, match="synthesis_request.json: unknown request key"):
        SynthesisRequest.from_sources(inp, {})
    with pytest.raises(ValueError, match="MEDICRAFT_SYNTH_.*format"):
        SynthesisRequest.from_sources(None, {"MEDICRAFT_SYNTH_FORMAT": "gif"})
    with pytest.raises(GeneratorError, match="not a generator bundle"):
        resolve_bundle(tmp_path)
    assert resolve_bundle(generator_bundle.parent) == generator_bundle

    gen = DiffusionGenerator.from_bundle(generator_bundle, device="cpu")
    out = tmp_path / "out"
    first = synthesize(gen, SynthesisRequest(num_images_per_class=1, classes=["CNV", "DME"]), out, progress=False)
    again = synthesize(gen, SynthesisRequest(num_images_per_class=2, classes=["CNV", "DME"]), out, progress=False)
    assert (first["generated"], again["generated"], again["skipped"]) == (2, 2, 2)
    assert [r["path"] for r in again["records"][::2]] == [r["path"] for r in first["records"]]
    assert len(synthetic_files(out)) == 4 and len(read_csv(out / "manifest.csv")) == 4
    with pytest.raises(GeneratorError, match="unknown class"):
        synthesize(gen, SynthesisRequest(classes=["melanoma"]), out, progress=False)


def test_synthesize_interrupted_then_resumed_makes_the_images_of_a_clean_run(
    generator_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app runs the one synthesis job: every batch has the request's shape (a short one is padded), so a run
    interrupted after 4 of 8 images (the 4th written but not journaled) and resumed writes the same images, records
    and pixels as an uninterrupted run, although the resumed run batches the rest differently."""
    import medicraft_monai.synthesis.job as job_module

    gen = DiffusionGenerator.from_bundle(generator_bundle, device="cpu")
    generate, batch_sizes = gen.generate, []

    def counted_generate(classes, *args, **kwargs):
        batch_sizes.append(len(classes))
        return generate(classes, *args, **kwargs)

    monkeypatch.setattr(gen, "generate", counted_generate)
    request = SynthesisRequest(num_images_per_class=2, seed=3, batch_size=3)  # 8 images: batches of 3, 3, 2 (+1 pad)
    clean = synthesize(gen, request, tmp_path / "clean", progress=False)
    assert clean["generated"] == 8

    out = tmp_path / "resumed"
    write = job_module.write_synthetic_image
    written: list[Path] = []

    def interrupted_write(path, *args, **kwargs):
        if len(written) == 4:
            raise RuntimeError("interrupted")
        written.append(Path(path))
        return write(path, *args, **kwargs)

    monkeypatch.setattr(job_module, "write_synthetic_image", interrupted_write)
    with pytest.raises(RuntimeError, match="interrupted"):
        synthesize(gen, request, out, progress=False)
    monkeypatch.setattr(job_module, "write_synthetic_image", write)
    assert synthetic_files(out) == sorted(written) and len(written) == 4
    resumed = synthesize(gen, request, out, progress=False)
    assert (resumed["generated"], resumed["skipped"], resumed["total"]) == (4, 4, 8)

    assert set(batch_sizes) == {3}  # clean 3+3+3, interrupted 3+3, resumed 3+3: always the request's shape
    clean_out = tmp_path / "clean"
    files = synthetic_files(out)
    assert [f.relative_to(out) for f in files] == [f.relative_to(clean_out) for f in synthetic_files(clean_out)]
    for f in files:
        assert np.array_equal(read_bscan(f)[0], read_bscan(clean_out / f.relative_to(out))[0]), f.name
    drop = ("sha256",)  # the PNG text holds the creation time; the pixels and every other record field are equal
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed["records"]] == [
        {k: v for k, v in r.items() if k not in drop} for r in clean["records"]
    ]


def test_app_yaml_and_requirements_for_packaging(deploy_python: Path) -> None:
    """Each app.yaml passes the packager's own reader (holoscan-cli's ``ApplicationConfiguration``, what
    ``monai-deploy package -c app.yaml`` runs), and each app folder has what the packager copies and installs."""
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from holoscan_cli.packager.config_reader import ApplicationConfiguration\n"
        "out = {}\n"
        "for path in sys.argv[1:]:\n"
        "    c = ApplicationConfiguration()\n"
        "    c.read(Path(path))\n"
        "    out[path] = {'title': c.title(), 'application': c._application_object, 'resources': c._resource_object}\n"
        "print(json.dumps(out, default=str))\n"
    )
    folders = [REPO / "medicraft_monai" / "deploy" / app for app in ("classify", "synthesize", "qa")]
    proc = run_group([str(deploy_python), "-c", script, *[str(f / "app.yaml") for f in folders]], timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    configs = json.loads(proc.stdout.strip().splitlines()[-1])
    for folder in folders:
        config = configs[str(folder / "app.yaml")]
        assert config["title"].startswith("medicraft_monai") and str(config["application"]["version"]) == "0.1.0"
        assert config["application"]["input-formats"] == config["application"]["output-formats"] == ["file"]
        assert {"cpu", "gpu", "memory"} <= set(config["resources"])
        assert (folder / "__main__.py").is_file()
        reqs = {re.split(r"[=<>]", line)[0] for line in (folder / "requirements.txt").read_text().splitlines()}
        assert {"torch", "monai", "pydicom", "highdicom"} <= reqs


# --------------------------------------------------------------------------------------------------------------------
# qa
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qa_models(tmp_path_factory, oct2017_dir: Path) -> Path:
    """The QA app's model folder: the shipped bundles (links) and a tiny real reference datalist (3 training, 2
    validation and 2 test B-scans per class, split by patient)."""
    root = tmp_path_factory.mktemp("qa") / "models"
    root.mkdir()
    for name in ("oct_classifier", "oct_synthesis_eval"):
        (root / name).symlink_to(REPO / "bundles" / name)
    small_oct2017_datalist(oct2017_dir, root / "reference_datalist.json", 3, 2, 2)
    return root


@pytest.fixture(scope="module")
def qa_input(tmp_path_factory, qa_models: Path) -> dict:
    """Real B-scans standing in for a synthetic set, as a 64 x 128 generator would write them (cropped around the
    retina, resized, 8-bit PNG): a copy of a training image, the datalist's 8 test images (other patients; the
    calibration uses its validation split), a DICOM written by the project's synthetic writer (its class
    in the provenance, its folder named otherwise), a corrupt PNG, a truncated JPEG, and a synthesis job's sidecar
    files (not images: skipped)."""
    data = load_datalist(qa_models / "reference_datalist.json")
    root = tmp_path_factory.mktemp("qa_in") / "synthetic"
    train = data["training"][0]
    copied = generator_output(train["image"], root / train["class_name"] / f"copied_{Path(train['image']).stem}.png")
    tests = [
        generator_output(it["image"], root / it["class_name"] / f"{Path(it['image']).stem}.png") for it in data["test"]
    ]
    donor = data["test"][-1]
    dicom = write_synthetic_image(
        root / "dicom" / f"synthetic_{donor['class_name']}_000000_s0.dcm",
        read_bscan(donor["image"])[0] / 255.0,
        "dicom",
        provenance={"class_name": donor["class_name"], "seed": 0},
        class_name=donor["class_name"],
    )
    corrupt = root / "CNV" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png" * 10)
    data_bytes = Path(data["test"][0]["image"]).read_bytes()
    truncated = root / "DME" / "truncated.jpeg"
    truncated.write_bytes(data_bytes[: len(data_bytes) // 3])
    (root / "manifest.csv").write_text("path,class_name\n")
    (root / "synthesis.json").write_text("{}")
    return {
        "root": root,
        "copied": copied,
        "training_image": Path(train["image"]),
        "tests": tests,
        "dicom": dicom,
        "dicom_class": donor["class_name"],
        "corrupt": corrupt,
        "truncated": truncated,
    }


def test_qa_app_gates_a_folder_with_a_copy_and_bad_files(
    deploy_python: Path, qa_models: Path, qa_input: dict, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["-i", str(qa_input["root"]), "-o", str(out), "-m", str(qa_models)]
    proc = run_app(deploy_python, "qa", args, {**ENV, "MEDICRAFT_QA_IMAGE_SIZE": "64x128"})
    report = json.loads((out / "qa.json").read_text())
    rows, summary = report["images"], report["summary"]
    by_image = {Path(r["image"]): r for r in rows}
    images = [qa_input["copied"], *qa_input["tests"], qa_input["dicom"], qa_input["corrupt"], qa_input["truncated"]]
    assert len(rows) == len(images) == 12 and set(by_image) == set(images)  # the sidecar files are not images

    for bad, what in ((qa_input["corrupt"], "png"), (qa_input["truncated"], "jpeg")):
        r = by_image[bad]
        assert r["passed"] is False and bad.name in r["error"] and f"cannot decode {what}" in r["error"]
        assert r["reasons"] == [f"unreadable: {r['error']}"] and r["predicted"] is None and r["memorised"] is None
    assert "truncated" in by_image[qa_input["truncated"]]["error"].split(":", 1)[1]

    copy = by_image[qa_input["copied"]]
    assert copy["memorised"] is True and copy["passed"] is False
    assert copy["nearest_real_distance"] <= 0.02 * copy["memorisation_threshold"]  # an 8-bit copy
    assert Path(copy["nearest_real_image"]).resolve() == qa_input["training_image"].resolve()
    assert "closer to a training image than real new patients are" in copy["reasons"]

    readable = [r for r in rows if not r["error"]]
    assert len(readable) == 10
    threshold = copy["memorisation_threshold"]
    for r in readable:
        assert r["predicted"] in CLASSES and 0.25 <= r["confidence"] <= 1 and 0 <= r["uncertainty"] <= 1
        assert isinstance(r["anatomy_passed"], bool) and isinstance(r["agrees"], bool) and r["frame"] == 0
        assert r["memorisation_threshold"] > 0 and r["nearest_real_distance"] >= 0
        assert r["passed"] == (not r["reasons"])
        if r is not copy:  # other patients are further from the training set than the copy is
            assert r["nearest_real_distance"] > 10 * copy["nearest_real_distance"]
    assert threshold > copy["nearest_real_distance"]
    dicom = by_image[qa_input["dicom"]]  # the class is the DICOM's provenance, not the folder's name ("dicom")
    assert dicom["class_name"] == qa_input["dicom_class"] and dicom["intended_probability"] is not None

    table = read_csv(out / "qa.csv")
    assert list(table[0]) == list(QA_FIELDS) and len(table) == len(rows)
    for t, r in zip(table, rows):
        assert t["image"] == r["image"] and t["class_name"] == r["class_name"] and t["passed"] == str(r["passed"])
        assert t["reasons"] == ";".join(r["reasons"]) and t["error"] == (r["error"] or "")
        assert t["memorised"] == ("" if r["memorised"] is None else str(r["memorised"]))
        if r["confidence"] is not None:
            assert float(t["confidence"]) == pytest.approx(r["confidence"])
            assert float(t["nearest_real_distance"]) == pytest.approx(r["nearest_real_distance"])

    assert json.loads((out / "qa_summary.json").read_text()) == summary
    assert summary["n"] == 12 and summary["n_errors"] == 2 and summary["n_memorised"] >= 1
    # the gate asks for a share of what real scans of other patients (the validation split) pass
    assert summary["real"]["n"] == 8 and summary["real"]["n_errors"] == 0
    assert abs(summary["required_pass_fraction"] - 0.8 * summary["real"]["pass_fraction"]) < 1e-12
    assert summary["n_passed"] == sum(r["passed"] for r in rows) and summary["passed"] is False
    assert summary["verdict"].startswith("fail: 2 unreadable file(s); ")
    assert sum(c["n"] for c in summary["per_class"].values()) == 12
    settings = report["settings"]
    assert settings["classifier"]["class_names"] == CLASSES and settings["n_reference"] == 12
    assert settings["n_calibration"] == 8 and settings["anatomy_profile"] == "spectralis"
    assert settings["input"] == str(qa_input["root"])
    assert f"{summary['n_passed']} of 12 image(s) passed, 2 unreadable" in proc.stdout


def test_qa_app_exit_status_settings_and_usage_errors(
    deploy_python: Path, qa_models: Path, qa_input: dict, tmp_path: Path
) -> None:
    """HOLOSCAN_* paths and MEDICRAFT_QA_* settings; 0 whatever the verdict, 3 for a failed gate with
    MEDICRAFT_QA_FAIL_EXIT=1, 2 (naming the path) for a missing bundle or datalist."""
    inp = tmp_path / "input"
    (inp / "NORMAL").mkdir(parents=True)
    normal = [p for p in qa_input["tests"] if p.parent.name == "NORMAL"]
    for p in normal:
        (inp / "NORMAL" / p.name).symlink_to(p)
    env = {**ENV, "HOLOSCAN_INPUT_PATH": str(inp), "HOLOSCAN_MODEL_PATH": str(qa_models)}
    # only the classifier: every image is read and none can be memorised; min pass fraction 0: the gate passes
    only_classifier = {"MEDICRAFT_QA_EVAL_BUNDLE": "none", "MEDICRAFT_QA_REFERENCE_DATALIST": "None"}
    only_classifier.update(MEDICRAFT_QA_ANATOMY_PROFILE="none", MEDICRAFT_QA_MIN_PASS_FRACTION="0")
    out = tmp_path / "pass"
    run_app(deploy_python, "qa", [], {**env, **only_classifier, "HOLOSCAN_OUTPUT_PATH": str(out)})
    rows = json.loads((out / "qa.json").read_text())["images"]
    assert len(rows) == len(normal) and all(r["predicted"] in CLASSES for r in rows)
    assert all(r["anatomy_passed"] is None and r["nearest_real_distance"] is None for r in rows)
    assert json.loads((out / "qa_summary.json").read_text())["passed"] is True

    # a failed gate: exit 0 by default, 3 with MEDICRAFT_QA_FAIL_EXIT=1; the table is written either way
    shutil.copy(qa_input["corrupt"], inp / "NORMAL" / "corrupt.png")
    for fail_exit, status in (("0", 0), ("1", 3)):
        out = tmp_path / f"fail{fail_exit}"
        fail_env = {**env, **only_classifier, "HOLOSCAN_OUTPUT_PATH": str(out), "MEDICRAFT_QA_FAIL_EXIT": fail_exit}
        run_app(deploy_python, "qa", [], fail_env, returncode=status)
        summary = json.loads((out / "qa_summary.json").read_text())
        assert summary["passed"] is False and summary["n_errors"] == 1 and summary["n"] == len(normal) + 1

    # usage errors: exit 2, the message names the path, nothing is written
    out = tmp_path / "usage"
    missing = tmp_path / "nowhere" / "oct_classifier"
    bad_env = {**env, "HOLOSCAN_OUTPUT_PATH": str(out), "MEDICRAFT_QA_CLASSIFIER_BUNDLE": str(missing)}
    proc = run_app(deploy_python, "qa", [], bad_env, returncode=2)
    assert f"qa: error: {missing}: classifier bundle not found" in proc.stderr and not out.exists()
    proc = run_app(deploy_python, "qa", ["-m", str(tmp_path)], {**env, "HOLOSCAN_OUTPUT_PATH": str(out)}, returncode=2)
    assert f"{tmp_path / 'oct_classifier'}: classifier bundle not found" in proc.stderr


def test_qa_settings_and_intended_class(qa_models: Path, qa_input: dict, tmp_path: Path) -> None:
    """The settings without the App SDK: defaults under the model folder, 'none' to skip, bad values named."""
    settings = QASettings.from_environ(qa_models, {})
    assert settings.classifier_bundle == str(qa_models / "oct_classifier") and settings.crop_height == 256
    assert settings.reference_datalist == str(qa_models / "reference_datalist.json") and not settings.fail_exit
    env = {"MEDICRAFT_QA_IMAGE_SIZE": "64x128", "MEDICRAFT_QA_CROP_HEIGHT": "none", "MEDICRAFT_QA_FAIL_EXIT": "1"}
    env["MEDICRAFT_QA_CLASSIFIER_BUNDLE"] = str(REPO / "bundles" / "oct_classifier")  # absolute
    settings = QASettings.from_environ(qa_models, env)
    assert (settings.image_size, settings.crop_height, settings.fail_exit) == ([64, 128], None, True)
    assert settings.classifier_bundle == str(REPO / "bundles" / "oct_classifier")
    with pytest.raises(QAUsageError, match="MEDICRAFT_QA_.*image_size"):
        QASettings.from_environ(qa_models, {"MEDICRAFT_QA_IMAGE_SIZE": "64"})
    with pytest.raises(QAUsageError, match=r"min_confidence must be in \[0, 1\], got 1.5"):
        QASettings.from_environ(qa_models, {"MEDICRAFT_QA_MIN_CONFIDENCE": "1.5"})
    with pytest.raises(QAUsageError, match="anatomy_profile"):
        QASettings.from_environ(qa_models, {"MEDICRAFT_QA_ANATOMY_PROFILE": "cirrus"})
    assert QASettings.from_environ(qa_models, {"MEDICRAFT_QA_RESIZE_MODE": "crop"}).resize_mode == "crop"
    with pytest.raises(QAUsageError, match="resize_mode must be 'fit', 'crop' or 'stretch', got 'pad'"):
        QASettings.from_environ(qa_models, {"MEDICRAFT_QA_RESIZE_MODE": "pad"})
    with pytest.raises(QAUsageError, match="needs both the evaluation bundle and the reference datalist"):
        QASettings.from_environ(qa_models, {"MEDICRAFT_QA_REFERENCE_DATALIST": "none"})
    with pytest.raises(QAUsageError, match="not a MONAI bundle"):
        QASettings.from_environ(qa_models, {"MEDICRAFT_QA_EVAL_BUNDLE": str(tmp_path)})
    broken = load_datalist(qa_models / "reference_datalist.json")  # a training image gone: a broken setup, named
    broken["training"][1]["image"] = str(tmp_path / "gone.jpeg")
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(QAUsageError, match=r"broken\.json: 1 of the 12 'training' images .*gone\.jpeg"):
        QASettings.from_environ(qa_models, {"MEDICRAFT_QA_REFERENCE_DATALIST": str(tmp_path / "broken.json")})
    off = dict.fromkeys(["CLASSIFIER_BUNDLE", "EVAL_BUNDLE", "REFERENCE_DATALIST", "ANATOMY_PROFILE"], "none")
    with pytest.raises(QAUsageError, match="every check is switched off"):
        QASettings.from_environ(qa_models, {f"MEDICRAFT_QA_{k}": v for k, v in off.items()})

    records = {Path(r.path): r for r in read_input_frames(qa_input["root"], (".json", ".jsonl", ".csv"))}
    assert intended_class(records[qa_input["dicom"]]) == qa_input["dicom_class"] != "dicom"
    assert intended_class(records[qa_input["copied"]]) == qa_input["copied"].parent.name
    assert not any(p.suffix in (".json", ".csv") for p in records)
    assert intended_class(InputFrame("x.png", str(tmp_path / "DME" / "x.png"))) == "DME"
