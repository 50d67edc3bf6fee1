"""The label-efficiency study (medicraft_monai.evaluation.label_efficiency) through its bundle config: it runs the
oct_context_restoration bundle's own pretraining and fine-tuning configs, and a rerun skips what is done."""

from __future__ import annotations

import json
from pathlib import Path

from _subprocess import monai_bundle_cmd, run_group

from medicraft_monai.data import build_datalist, load_datalist, write_datalist
from medicraft_monai.evaluation.label_efficiency import run_label_efficiency

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "oct_context_restoration"
FEATURES = (4, 4, 8, 8, 16, 4)


def test_label_efficiency_bundle_config_runs_and_resumes(oct2017_dir, tmp_path) -> None:
    full = build_datalist(oct2017_dir, check_images=False)
    datalist = write_datalist(tmp_path / "data" / "datalist.json", full)
    out = tmp_path / "le"
    overrides = {
        "datalist": str(datalist),
        "output_dir": str(out),
        "fractions": [0.5, 1.0],
        "seeds": [0, 1],
        "image_size": [32, 64],
        "features": list(FEATURES),
        "patch_size": [4, 4],
        "num_swaps": 4,
        "pretrain_epochs": 1,
        "finetune_epochs": 1,
        "finetune_steps_per_epoch": 2,
        "pretrain_batch_size": 8,
        "finetune_batch_size": 4,
        "max_per_class": 4,
        "device": "cpu",
    }
    cmd = monai_bundle_cmd([BUNDLE / "configs" / "label_efficiency.json"], tmp_path, layered=False, **overrides)
    proc = run_group(cmd, 240, cwd=REPO_ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads((out / "label_efficiency.json").read_text())
    runs = result["runs"]
    assert len(runs) == 2 * 2 * 2
    assert {(r["fraction"], r["seed"], r["init"]) for r in runs} == {
        (f, s, i) for f in (0.5, 1.0) for s in (0, 1) for i in ("pretrained", "scratch")
    }
    for r in runs:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["auc"] <= 1.0
    # labels by patient: half the patients (per class, rounded up) leaves fewer images than all of them
    n_half = {r["n_train_images"] for r in runs if r["fraction"] == 0.5}
    assert max(n_half) < 16 == min(r["n_train_images"] for r in runs if r["fraction"] == 1.0)
    # pretrained and scratch runs of the same seed see the same images
    for f in (0.5, 1.0):
        for s in (0, 1):
            pair = [r["n_train_images"] for r in runs if r["fraction"] == f and r["seed"] == s]
            assert pair[0] == pair[1]
    summary = result["summary"]
    assert summary["pretrained"]["1"]["auc"]["n"] == 2
    assert "ssim_restored" in result["pretraining"] and "ms_ssim_corrupted" in result["pretraining"]
    assert (out / "label_efficiency.png").stat().st_size > 10_000
    assert "| 50% |" in (out / "label_efficiency.md").read_text()
    assert "loaded" in proc.stdout + proc.stderr and "pretrained tensors" in proc.stdout + proc.stderr

    # resume: the same settings skip every finished run and the pretraining
    ckpt_time = (out / "pretrain" / "model.pt").stat().st_mtime_ns
    kwargs = {k: v for k, v in overrides.items() if k not in ("datalist", "output_dir")}
    again = run_label_efficiency(datalist, out, progress=False, **kwargs)
    assert (out / "pretrain" / "model.pt").stat().st_mtime_ns == ckpt_time
    assert again["runs"] == runs
    assert load_datalist(datalist)["name"] == full["name"]
