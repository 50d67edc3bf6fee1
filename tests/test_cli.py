"""The ``medicraft`` console command, run as a user would (a subprocess of the installed entry point)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MEDICRAFT = Path(sys.executable).with_name("medicraft")


def run_cli(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``medicraft ARGS`` and return the finished process (stdout and stderr captured as text)."""
    proc = subprocess.run([str(MEDICRAFT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        pytest.fail(f"medicraft {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_the_commands() -> None:
    proc = run_cli("--help")
    out = proc.stdout + proc.stderr  # fire writes help to stderr when not on a terminal
    for command in (
        "phantom",
        "datalist",
        "multiply",
        "evaluate",
        "label_efficiency",
        "demo",
        "info",
        "label",
        "review",
    ):
        assert command in out


def test_help_names_the_samplers_and_the_default_steps_where_they_are_defined() -> None:
    from medicraft_monai.bundles import bundle_path, config_files
    from medicraft_monai.schedulers import SAMPLERS

    multiply = run_cli("multiply", "--help")
    assert f"one of {', '.join(SAMPLERS)} (medicraft_monai.schedulers.SAMPLERS)" in multiply.stdout + multiply.stderr
    merged: dict = {}
    for path in config_files(bundle_path("oct_ddpm"), "inference.json"):
        merged.update(json.loads(path.read_text()))
    demo = run_cli("demo", "--help")
    steps = f"{merged['sampler']} with {merged['num_inference_steps']} steps, as the oct_ddpm bundle sets them"
    assert steps in (demo.stdout + demo.stderr).replace("\n        ", " ")


def test_info_prints_versions() -> None:
    out = run_cli("info").stdout
    assert out.startswith("medicraft_monai ")
    assert "monai " in out and "torch " in out


def test_datalist_on_the_real_sample(oct2017_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "oct2017.json"
    out = run_cli("datalist", str(oct2017_dir), "--output", str(output), "--seed", "3").stdout
    datalist = json.loads(output.read_text())
    assert datalist["labels"] == {"0": "CNV", "1": "DME", "2": "DRUSEN", "3": "NORMAL"}
    total = sum(len(datalist[s]) for s in ("training", "validation", "test"))
    assert total == 689
    # the printed table carries the same totals, and the weights line names every class
    assert "689" in out
    assert "class weights: CNV=" in out and "NORMAL=" in out
    patients = {s: {it["patient_id"] for it in datalist[s]} for s in ("training", "validation", "test")}
    assert not patients["training"] & patients["test"]
    assert not patients["training"] & patients["validation"]


def test_datalist_reports_a_bad_file_and_keeps_the_rest(oct2017_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for label in ("NORMAL", "CNV"):
        (root / label).mkdir(parents=True)
        for src in sorted((oct2017_dir / label).glob("*.jpeg"))[:4]:
            shutil.copy(src, root / label / src.name)
    bad = root / "CNV" / "CNV-999-1.jpeg"
    bad.write_bytes((oct2017_dir / "CNV" / "CNV-1016042-1.jpeg").read_bytes()[:500])  # truncated JPEG
    output = tmp_path / "dl.json"
    proc = run_cli("datalist", str(root), "--output", str(output))
    datalist = json.loads(output.read_text())
    assert sum(len(datalist[s]) for s in ("training", "validation", "test")) == 8
    assert [Path(e["image"]).name for e in datalist["excluded"]] == ["CNV-999-1.jpeg"]
    assert "CNV-999-1.jpeg" in proc.stderr + proc.stdout

    strict = run_cli("datalist", str(root), "--output", str(tmp_path / "strict.json"), "--strict", check=False)
    assert strict.returncode != 0
    assert "CNV-999-1.jpeg" in strict.stderr
    assert not (tmp_path / "strict.json").exists()


def test_datalist_on_an_empty_folder_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run_cli("datalist", str(tmp_path / "empty"), "--output", str(tmp_path / "x.json"), check=False)
    assert proc.returncode != 0
    assert "empty" in proc.stderr and "no image files" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_phantom_command_writes_png_and_dicom_data_sets_with_datalists(tmp_path: Path) -> None:
    import pydicom

    png = tmp_path / "png"
    out = run_cli("phantom", str(png), "--exams", "6", "--height", "64", "--width", "128", "--seed", "5").stdout
    datalist = json.loads((png / "datalist.json").read_text())
    assert datalist["labels"] == {"0": "healthy", "1": "benign", "2": "melanoma"}
    items = [it for s in ("training", "validation", "test") for it in datalist[s]]
    assert len(items) == 6 * 12 and len(list((png / "images").rglob("*.png"))) == 72
    assert {it["plane_angle"] for it in items} == {30.0 * k for k in range(12)}
    assert "total" in out and str(72) in out
    assert len(list((png / "ground_truth").glob("*.npz"))) == 6

    dcm = tmp_path / "dcm"
    run_cli("phantom", str(dcm), "--exams", "3", "--fmt", "dicom", "--height", "64", "--width", "128")
    files = sorted((dcm / "images").rglob("*.dcm"))
    assert len(files) == 3
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.5.4" and int(ds.NumberOfFrames) == 12
    datalist = json.loads((dcm / "datalist.json").read_text())
    assert sum(len(datalist[s]) for s in ("training", "validation", "test")) == 36

    # a second run into the same folder would mix two data sets: refused, unless --overwrite
    again = run_cli("phantom", str(png), "--exams", "2", check=False)
    assert again.returncode == 2 and "already holds a phantom data set" in again.stderr
    run_cli("phantom", str(png), "--exams", "2", "--height", "64", "--width", "128", "--overwrite")
    assert len(list((png / "images").rglob("*.png"))) == 24


def test_multiply_command_refuses_a_missing_checkpoint_before_any_work(tmp_path: Path) -> None:
    phantom = tmp_path / "ph"
    run_cli("phantom", str(phantom), "--exams", "3", "--height", "64", "--width", "128")
    out = tmp_path / "mult"
    proc = run_cli(
        "multiply", str(phantom / "datalist.json"), str(out), "--ckpt_path", str(tmp_path / "none.pt"), check=False
    )
    assert proc.returncode == 2
    assert "none.pt: checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(out.rglob("*.png"))


def test_label_app_dir_and_the_accepted_only_datalists_of_multiply(tmp_path: Path) -> None:
    from medicraft_monai.cli import _write_accepted
    from medicraft_monai.data.datalist import load_datalist, write_datalist
    from medicraft_monai.data.phantom import make_phantom_dataset

    app = Path(run_cli("label", "app-dir").stdout.strip())
    assert (app / "main.py").is_file() and (app / "lib").is_dir()

    make_phantom_dataset(tmp_path / "real", exams=3, height=32, width=64, progress=False)
    real = load_datalist(tmp_path / "real" / "datalist.json")
    # three images standing in for multiply's synthetic output; the experts accepted only the second
    fake = [dict(it, synthetic=True, patient_id=f"synthetic-{k}") for k, it in enumerate(real["training"][:3])]
    synth = write_datalist(
        tmp_path / "datalist_synthetic.json", {**real, "training": fake, "validation": [], "test": []}
    )
    combined = write_datalist(tmp_path / "datalist_real_synthetic.json", {**real, "training": real["training"] + fake})
    reviews = tmp_path / "reviews.json"
    verdicts = ["reject", "accept", "reject"]
    reviews.write_text(
        json.dumps(
            {f"img{k}": {"sha256": it["sha256"], "decision": d} for k, (it, d) in enumerate(zip(fake, verdicts))}
        )
    )
    _write_accepted({"datalist_synthetic": str(synth), "datalist_combined": str(combined)}, str(reviews))

    kept = load_datalist(tmp_path / "datalist_synthetic_accepted.json", check=False)
    assert [it["sha256"] for it in kept["training"]] == [fake[1]["sha256"]]
    both = load_datalist(tmp_path / "datalist_real_synthetic_accepted.json", check=False)
    assert sum(bool(it.get("synthetic")) for it in both["training"]) == 1
    assert sum(not it.get("synthetic") for it in both["training"]) == len(real["training"])  # real images all stay
