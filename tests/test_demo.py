"""The README's main command, ``medicraft demo``, end to end with tiny settings (``--quick``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from medicraft_monai.data import load_datalist, read_bscan
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.utils import file_sha256

MEDICRAFT = Path(sys.executable).with_name("medicraft")
REPO = Path(__file__).resolve().parents[1]


def test_quick_demo_finetunes_multiplies_compares_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [str(MEDICRAFT), "demo", "--output_dir", str(out), "--quick"], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6"):
        assert f"[medicraft demo] {stage}" in proc.stdout

    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["counts_before"], summary["counts_after"]
    classes = ["healthy", "benign", "melanoma"]
    assert list(before) == classes
    # the phantom is imbalanced on purpose, yet every class has eyes in every split
    assert len(set(before.values())) > 1
    assert summary["missing_classes"] == {}
    datalist = load_datalist(out / "phantom" / "datalist.json")
    for split in ("training", "validation", "test"):
        assert {it[OCTKeys.LABEL] for it in datalist[split]} == {0, 1, 2}, split
    # the multiplied training split is balanced to the largest class
    assert set(after.values()) == {max(before.values())}
    combined = load_datalist(out / "synthetic" / "datalist_real_synthetic.json")
    synthetic = [it for it in combined["training"] if it.get(OCTKeys.SYNTHETIC)]
    assert len(synthetic) == sum(after.values()) - sum(before.values())
    image, meta = read_bscan(synthetic[0][OCTKeys.IMAGE])
    assert image.shape == (32, 64) and meta["synthetic"]  # the shipped generator's size
    assert not any(it.get(OCTKeys.SYNTHETIC) for s in ("validation", "test") for it in combined[s])

    # the fine-tuned generator started from the shipped weights; the scratch one did not
    shipped = REPO / "bundles" / "oct_ddpm" / "models" / "model.pt"
    tuned = json.loads((out / "finetuned" / "model" / "diffusion.json").read_text())
    assert tuned["class_names"] == classes and tuned["parent"]["model_sha256"] == file_sha256(shipped)
    assert "parent" not in json.loads((out / "scratch" / "model" / "diffusion.json").read_text())
    assert json.loads((out / "finetuned" / "bundle" / "configs" / "common.json").read_text())["class_names"] == classes
    for route in ("finetuned", "scratch"):
        assert list((out / route / "logs").rglob("events.out.tfevents.*")), route
        # every class is sampled from both routes, the healthy class too (balancing needs none of it)
        samples = load_datalist(out / route / "samples" / "datalist_synthetic.json", check=False)["training"]
        assert {it[OCTKeys.LABEL] for it in samples} == {0, 1, 2}, route
    # every synthetic image's provenance names the weights its generator was fine-tuned from
    assert meta["provenance"]["parent_sha256"] == file_sha256(shipped)
    assert combined["synthetic"]["parent_sha256"] == file_sha256(shipped)

    report = (out / "report.md").read_text()
    assert "| class | real | synthetic added | total |" in report
    for name, n in before.items():
        assert f"| {name} | {n} | {after[name] - n} | {after[name]} |" in report
    comparison = summary["comparison"]
    assert set(comparison["routes"]) == {"finetuned", "scratch"}
    for route in comparison["routes"].values():
        assert set(route["anatomy_pass_rate_per_class"]) == set(classes)
        assert route["iterations"] > 0 and route["frechet_distance"] is not None
    assert "| | finetuned | scratch | real test images |" in report
    for name in classes:
        assert f"| ... {name} |" in report
    grid, _ = read_bscan(out / "samples.png")
    assert grid.shape[0] > 3 * 60  # three rows of tiles: real, fine-tuned, scratch
    # the demo ends with the evaluation of the fine-tuned images, and its report points there
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert {"utility", "fidelity", "diversity", "privacy", "anatomy"} <= set(metrics)
    assert metrics["utility"]["experiments"]["TSTR"]["not_comparable"] is None  # every class was synthesised
    assert "[evaluation/report.md](evaluation/report.md)" in report
    assert "## Utility" in (out / "evaluation" / "report.md").read_text()
    assert (out / "scratch" / "evaluation" / "metrics.json").is_file()
