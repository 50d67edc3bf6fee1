"""The README's main command, ``medicraft demo``, end to end with tiny settings (``--quick``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from medicraft_monai.data import load_datalist, read_bscan
from medicraft_monai.data.keys import OCTKeys

MEDICRAFT = Path(sys.executable).with_name("medicraft")


def _added(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before}


def test_quick_demo_synthesises_multiplies_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [str(MEDICRAFT), "demo", "--output_dir", str(out), "--quick"], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"[medicraft demo] {stage}" in proc.stdout

    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["counts_before"], summary["counts_after"]
    assert set(before) == {"healthy", "benign", "melanoma"}
    # the phantom is imbalanced on purpose, and the multiplied training split is balanced to the largest class
    assert len(set(before.values())) > 1
    assert set(after.values()) == {max(before.values())}

    combined = load_datalist(out / "synthetic" / "datalist_real_synthetic.json")
    synthetic = [it for it in combined["training"] if it.get(OCTKeys.SYNTHETIC)]
    assert len(synthetic) == sum(after.values()) - sum(before.values())
    image, meta = read_bscan(synthetic[0][OCTKeys.IMAGE])
    assert image.shape == (16, 32) and meta["synthetic"]
    assert "synthetic" in Path(synthetic[0][OCTKeys.IMAGE]).name
    # validation and test stay real
    assert not any(it.get(OCTKeys.SYNTHETIC) for s in ("validation", "test") for it in combined[s])

    report = (out / "report.md").read_text()
    assert "| class | real | synthetic added | total |" in report
    for name, n in before.items():
        assert f"| {name} | {n} | {after[name] - n} | {after[name]} |" in report
    grid, _ = read_bscan(out / "samples.png")
    assert grid.shape[0] > 3 * 100  # three rows of tiles
    assert (out / "model" / "model.pt").is_file()
    # the trained model is a bundle of its own, holding the settings it was trained with (multiply sampled from it)
    exported = json.loads((out / "bundle" / "configs" / "common.json").read_text())
    assert exported["class_names"] == list(before) and exported["channels"] == [8, 16], exported
    assert (out / "bundle" / "models" / "model.pt").read_bytes() == (out / "model" / "model.pt").read_bytes()
    # the demo ends with the evaluation of its synthetic images, and its report points there
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert {"utility", "fidelity", "diversity", "privacy", "anatomy"} <= set(metrics)
    assert metrics["data"]["counts"]["synthetic"] == {k: min(v, 8) for k, v in _added(before, after).items()}
    assert "[evaluation/report.md](evaluation/report.md)" in report
    assert "## Utility" in (out / "evaluation" / "report.md").read_text()
    assert list((out / "logs").rglob("events.out.tfevents.*"))
