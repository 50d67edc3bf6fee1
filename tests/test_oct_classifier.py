"""The oct_classifier bundle end to end through ``python -m monai.bundle`` on real OCT B-scans.

Tiny settings given as command-line overrides exactly as a user would (32 x 64 images, a two-block DenseNet,
12 training, 4 validation and 8 test B-scans of the 4 OCT2017 classes, patient-disjoint splits). One training run
of 2 epochs is resumed to 3 epochs; its weights are then evaluated, used for inference and exported to
TorchScript.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _subprocess import cli_overrides, monai_bundle_cmd, run_checked
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medicraft_monai.data import build_datalist, write_datalist

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "oct_classifier"
CONFIGS = BUNDLE / "configs"
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]
TINY = {"image_size": [32, 64], "init_features": 8, "growth_rate": 8, "block_config": [2, 2]}
TRAIN = {"batch_size": 4, "num_workers": 0, "learning_rate": 3e-3, "log_interval": 1, "cpu_bf16": False}
PER_CLASS = {"training": 3, "validation": 1, "test": 2}
EPOCH_LENGTH = PER_CLASS["training"] * len(CLASSES) // TRAIN["batch_size"]


def bundle_cmd(configs: list[str], bundle_root: Path, **overrides) -> list[str]:
    return monai_bundle_cmd([CONFIGS / c for c in configs], bundle_root, **overrides)


def run(cmd: list[str], expect_ok: bool = True, timeout: int = 240) -> subprocess.CompletedProcess:
    return run_checked(cmd, expect_ok, timeout)


def scalars(log_dir: Path) -> list[dict[str, list[tuple[int, float]]]]:
    """TensorBoard scalars of each run under ``log_dir`` (one event file per run, oldest first)."""
    files = sorted(log_dir.glob("events.out.tfevents.*"), key=lambda p: int(p.name.split(".")[3]))
    out = []
    for f in files:
        ea = EventAccumulator(str(f), size_guidance={"scalars": 0})
        ea.Reload()
        out.append({t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]})
    return out


@pytest.fixture(scope="module")
def datalist(oct2017_dir: Path, tmp_path_factory) -> Path:
    full = build_datalist(oct2017_dir, check_images=False)
    small = {k: v for k, v in full.items() if k not in ("training", "validation", "test")}
    for split, n in PER_CLASS.items():
        small[split] = [it for c in range(len(CLASSES)) for it in [i for i in full[split] if i["label"] == c][:n]]
    assert [small["labels"][str(i)] for i in range(len(CLASSES))] == CLASSES
    return write_datalist(tmp_path_factory.mktemp("data") / "datalist.json", small)


@pytest.fixture(scope="module")
def trained(datalist: Path, tmp_path_factory) -> Path:
    """2 epochs, then resumed to 3 (with class weighting and balanced sampling switched on)."""
    root = tmp_path_factory.mktemp("oct_classifier")
    common = {"datalist": str(datalist), **TINY, **TRAIN}
    run(bundle_cmd(["train.json"], root, **common, max_epochs=2))
    ckpts = root / "models" / "training"
    assert (ckpts / f"checkpoint_final_iteration={2 * EPOCH_LENGTH}.pt").is_file()
    first = (root / "models" / "model.pt").read_bytes()
    resumed = run(
        bundle_cmd(
            ["train.json"],
            root,
            **common,
            max_epochs=3,
            resume="true",
            class_weighting="inverse",
            balanced_sampling="true",
        )
    )
    assert "resuming from" in resumed.stdout + resumed.stderr
    root.joinpath("first_model.pt").write_bytes(first)
    return root


def test_training_writes_the_model_checkpoints_and_tensorboard_logs(trained: Path) -> None:
    state = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert "class_layers.out.weight" in state and state["class_layers.out.weight"].shape[0] == len(CLASSES)
    assert any(k.startswith("features.") for k in state)  # a plain MONAI DenseNet state dict (the zoo convention)
    runs = scalars(trained / "logs")
    assert len(runs) == 2
    first, second = runs
    assert [s for s, _ in first["train/loss"]] == list(range(1, 2 * EPOCH_LENGTH + 1))
    assert all(math.isfinite(v) for _, v in first["train/loss"])
    assert [s for s, _ in first["val_balanced_accuracy"]] == [1, 2]
    assert all(0.0 <= v <= 1.0 for _, v in first["val_balanced_accuracy"])


def test_resume_continues_from_the_last_checkpoint(trained: Path) -> None:
    second = scalars(trained / "logs")[1]
    # the resumed run starts at iteration 2 * EPOCH_LENGTH + 1 and validates only epoch 3
    assert [s for s, _ in second["train/loss"]] == list(range(2 * EPOCH_LENGTH + 1, 3 * EPOCH_LENGTH + 1))
    assert [s for s, _ in second["val_balanced_accuracy"]] == [3]
    assert (trained / "models" / "training" / f"checkpoint_final_iteration={3 * EPOCH_LENGTH}.pt").is_file()
    # model.pt is the best validation so far: replaced only if epoch 3 beat epochs 1-2 (the saver's record resumed)
    vals = [v for _, v in scalars(trained / "logs")[0]["val_balanced_accuracy"]]
    changed = (trained / "models" / "model.pt").read_bytes() != (trained / "first_model.pt").read_bytes()
    assert changed == (second["val_balanced_accuracy"][0][1] > max(vals))


def test_evaluate_writes_metrics_and_the_confusion_matrix(trained: Path, datalist: Path) -> None:
    out = trained / "eval"
    run(bundle_cmd(["train.json", "evaluate.json"], trained, datalist=str(datalist), **TINY, num_workers=0))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"] == CLASSES
    assert metrics["num_samples"] == PER_CLASS["test"] * len(CLASSES)
    assert metrics["counts"]["true"] == dict.fromkeys(CLASSES, PER_CLASS["test"])
    cm = metrics["confusion_matrix"]
    assert [sum(row) for row in cm] == [PER_CLASS["test"]] * len(CLASSES)
    assert metrics["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(len(CLASSES))) / metrics["num_samples"])
    for key in ("balanced_accuracy", "macro_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["auc"]) == set(CLASSES) and all(0.0 <= v <= 1.0 for v in metrics["auc"].values())
    assert (out / "confusion_matrix.png").stat().st_size > 5000
    preds = json.loads((out / "predictions.json").read_text())["predictions"]
    assert len(preds) == metrics["num_samples"] and all(p["true_class"] in CLASSES for p in preds)


def test_inference_writes_per_image_probabilities(trained: Path, datalist: Path, real_bscan_paths: list[Path]) -> None:
    files = [str(p) for p in real_bscan_paths[::6]]  # one image of each class
    out = trained / "predictions"
    run(bundle_cmd(["inference.json"], trained, input=files, class_names=CLASSES, output_dir=str(out), **TINY))
    rows = json.loads((out / "predictions.json").read_text())["predictions"]
    assert [r["image"] for r in rows] == files
    for r in rows:
        assert list(r["probabilities"]) == CLASSES
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["predicted_class"] == max(r["probabilities"], key=r["probabilities"].get)
    csv_lines = (out / "predictions.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == ["image", "true_class", "predicted_class"] + [f"prob_{c}" for c in CLASSES]
    assert len(csv_lines) == len(files) + 1


def test_torchscript_export_matches_the_eager_network(trained: Path) -> None:
    ts = trained / "models" / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts)]
    cmd += ["--ckpt_file", str(trained / "models" / "model.pt"), "--meta_file", str(CONFIGS / "metadata.json")]
    cmd += ["--config_file", repr([str(CONFIGS / "common.json"), str(CONFIGS / "inference.json")])]
    cmd += ["--bundle_root", str(trained)]
    cmd += cli_overrides({**TINY, "class_names": CLASSES})
    run(cmd)
    from monai.bundle import ConfigParser
    from monai.data import load_net_with_metadata

    scripted, meta, extra = load_net_with_metadata(str(ts))
    assert meta["version"] == json.loads((CONFIGS / "metadata.json").read_text())["version"]
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "inference.json")])
    for k, v in {**TINY, "class_names": CLASSES}.items():
        parser[k] = v
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True))
    eager.eval()
    x = torch.rand(3, 1, 32, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = eager(x)
        got = scripted(x)
    assert got.shape == (3, len(CLASSES))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_an_unknown_label_fails_naming_the_file(datalist: Path, tmp_path: Path) -> None:
    data = json.loads(datalist.read_text())
    normal = next(it for it in data["training"] if it["class_name"] == "NORMAL")
    proc = run(
        bundle_cmd(
            ["train.json"], tmp_path, datalist=str(datalist), class_names=CLASSES[:3], max_epochs=1, **TINY, **TRAIN
        ),
        expect_ok=False,
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "UnknownLabelError" in text
    assert f"{Path(normal['image']).name}: class 'NORMAL' is not one of the classifier's class_names" in text
    assert not (tmp_path / "models" / "model.pt").exists()
