"""The oct_context_restoration bundle end to end through ``python -m monai.bundle run``, on real OCT B-scans.

Tiny settings (32 x 64 images, a small BasicUNet, 3 training images per OCT2017 class), given as command-line
overrides as a user would: pretraining (one epoch, then resumed to a second), evaluation, restoration inference
and the encoder export (in-process ``monai.bundle.run``), classification fine-tuning with the pretrained encoder
frozen, and segmentation fine-tuning on phantom B-scans. The label-efficiency config runs in tests/test_ssl.py.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _datalists import small_oct2017_datalist
from _subprocess import monai_bundle_cmd, run_group
from monai.bundle import ConfigParser
from monai.bundle import run as bundle_run
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medicraft_monai.networks import load_state_dict
from medicraft_monai.ssl import ENCODER_PREFIXES, load_encoder_meta

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "oct_context_restoration"
CONFIGS = BUNDLE / "configs"
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]
TINY = {"image_size": [32, 64], "features": [4, 4, 8, 8, 16, 4], "num_workers": 0, "batch_size": 4}
pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file")  # monai.bundle.run's trust notice
CORRUPTION = {"patch_size": [4, 4], "num_swaps": 6}
EPOCH_LENGTH = 3  # 12 training images, batch 4


def bundle(configs: list[str], root: Path, timeout: int = 180, **overrides) -> str:
    cmd = monai_bundle_cmd([CONFIGS / c for c in configs], root, **overrides)
    proc = run_group(cmd, timeout, cwd=REPO_ROOT)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)}\nfailed ({proc.returncode}):\n{out[-5000:]}", False)
    return out


@pytest.fixture(scope="module")
def datalist(oct2017_dir: Path, tmp_path_factory) -> Path:
    """3 training, 1 validation and 2 test B-scans per OCT2017 class (patient-level splits of the real sample)."""
    return small_oct2017_datalist(oct2017_dir, tmp_path_factory.mktemp("data") / "datalist.json", 3, 1, 2)


@pytest.fixture(scope="module")
def pretrained(datalist: Path, tmp_path_factory) -> dict:
    """Pretraining: one epoch, then ``--resume true`` continues from its checkpoint to a second epoch."""
    root = tmp_path_factory.mktemp("bundle")
    common = {"datalist": str(datalist), **TINY, **CORRUPTION, "ckpt_interval": 2, "log_interval": 1}
    first = bundle(["train.json"], root, **common, max_epochs=1)
    ckpt_dir = root / "models" / "pretrain_training"
    after_first = sorted(p.name for p in ckpt_dir.glob("*.pt"))
    second = bundle(["train.json"], root, **common, max_epochs=2, resume=True)
    return {"root": root, "first": first, "second": second, "after_first": after_first, "common": common}


def _scalars(log_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], list[str]]:
    scalars: dict[str, list[tuple[int, float]]] = {}
    images: list[str] = []
    for f in sorted(log_dir.glob("events.out.tfevents.*")):
        ea = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in ea.Scalars(tag))
        images += ea.Tags()["images"]
    return scalars, images


def test_pretraining_resumes_logs_ssim_and_pictures(pretrained: dict) -> None:
    root = pretrained["root"]
    assert f"checkpoint_final_iteration={EPOCH_LENGTH}.pt" in pretrained["after_first"]
    assert "Epoch: 1/2" not in pretrained["second"], "the resumed run trained the first epoch again"
    assert "Epoch: 2/2" in pretrained["second"]
    assert re.search(r"Restored all variables from \S*checkpoint_final_iteration=3\.pt", pretrained["second"])
    final = sorted((root / "models" / "pretrain_training").glob("checkpoint_final_iteration=*.pt"))
    assert final[-1].name == f"checkpoint_final_iteration={2 * EPOCH_LENGTH}.pt"
    state = load_state_dict(root / "models" / "model.pt")
    assert any(k.startswith("down_4.") for k in state) and "final_conv.weight" in state
    assert (root / "models" / "model_best.pt").is_file()
    scalars, images = _scalars(root / "logs" / "pretrain")
    assert {"val_ssim", "val_ms_ssim", "val_mse", "train/loss"} <= set(scalars)
    assert [s for s, _ in scalars["val_ssim"]] == [1, 2]  # one validation per epoch, the resumed one at epoch 2
    assert all(-1.0 <= v <= 1.0 for _, v in scalars["val_ssim"] + scalars["val_ms_ssim"])
    assert "val/restoration" in images and "train/restoration" in images


def test_evaluate_inference_and_encoder_export(pretrained: dict, datalist: Path) -> None:
    root = pretrained["root"]
    common = {"bundle_root": str(root), "datalist": str(datalist), **TINY, **CORRUPTION}
    bundle_run(config_file=[str(CONFIGS / n) for n in ("common.json", "train.json", "evaluate.json")], **common)
    with open(root / "eval" / "metrics.csv") as f:
        rows = {r[0]: float(r[1]) for r in csv.reader(f) if len(r) == 2}
    assert {"val_ssim", "val_ms_ssim", "val_mse"} <= set(rows) and 0 < rows["val_ssim"] <= 1
    assert (root / "eval" / "before_after_epoch1.png").is_file()

    bundle_run(config_file=[str(CONFIGS / n) for n in ("common.json", "inference.json")], split="test", **common)
    report = json.loads((root / "restoration" / "restoration_metrics.json").read_text())
    assert report["n_images"] == 8 and len(report["per_image"]) == 8
    assert 0 < report["ssim_corrupted"] < 1 and -1 <= report["ssim_restored"] <= 1
    grid = np.asarray(Image.open(root / "restoration" / "before_after.png"))
    assert grid.shape[0] > 3 * 128

    bundle_run(
        config_file=[str(CONFIGS / n) for n in ("common.json", "export_encoder.json")],
        bundle_root=str(root),
        image_size=[32, 64],
    )
    encoder = torch.jit.load(str(root / "models" / "encoder.ts"))
    assert encoder(torch.rand(3, 1, 64, 128)).shape == (3, 16)
    assert load_encoder_meta(root / "models" / "encoder.ts")["feature_dim"] == 16


def test_classification_finetuning_loads_the_pretrained_encoder(pretrained: dict, datalist: Path) -> None:
    root = pretrained["root"]
    pre = load_state_dict(root / "models" / "model.pt")
    # before training: the network the config builds holds the pretrained encoder (and not without it)
    for ckpt, expect_equal in ((str(root / "models" / "model.pt"), True), ("", False)):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "finetune_classification.json")])
        parser.update({"bundle_root": str(root), "datalist": str(datalist), **TINY, "pretrained_ckpt": ckpt})
        net = parser.get_parsed_content("network")
        w = net.encoder.down_2.convs.conv_0.conv.weight.detach().cpu()
        assert torch.equal(w, pre["down_2.convs.conv_0.conv.weight"]) is expect_equal

    out = bundle(
        ["finetune_classification.json"],
        root,
        datalist=str(datalist),
        **TINY,
        max_epochs=2,
        freeze_encoder=True,
        class_names=CLASSES,
    )
    assert "loaded 40 pretrained tensors (encoder)" in out and "froze the encoder" in out
    fine = load_state_dict(root / "models" / "classification" / "model.pt")
    enc = {k: v for k, v in fine.items() if k.startswith("encoder.")}
    assert len(enc) == 40
    for key, value in enc.items():  # frozen: still exactly the pretrained weights after training
        assert torch.equal(value, pre[key[len("encoder.") :]]), key
    assert fine["head.weight"].shape == (4, 16)
    scalars, _ = _scalars(root / "logs" / "classification")
    assert len(scalars["val_accuracy"]) == 2 and len(scalars["val_auc"]) == 2


def test_segmentation_finetuning_on_phantom_layers_and_lesions(pretrained: dict) -> None:
    root = pretrained["root"]
    pre = load_state_dict(root / "models" / "model.pt")
    out = bundle(
        ["finetune_segmentation.json"],
        root,
        **TINY,
        phantom_size=[32, 64],
        phantom_exams=8,
        phantom_planes=2,
        max_epochs=1,
        pretrained_part="all",
    )
    assert re.search(r"loaded \d+ pretrained tensors \(all\)", out)
    data = json.loads((root / "data" / "phantom_segmentation" / "datalist.json").read_text())
    assert data["training"] and data["validation"]
    label = np.asarray(Image.open(root / "data" / "phantom_segmentation" / data["training"][0]["label"]))
    assert label.shape == (32, 64) and set(np.unique(label)) >= {0, 1, 4}
    fine = load_state_dict(root / "models" / "segmentation" / "model.pt")
    assert fine["final_conv.weight"].shape[0] == 7
    assert all(fine[k].shape == pre[k].shape for k in pre if k.startswith(ENCODER_PREFIXES))
    scalars, _ = _scalars(root / "logs" / "segmentation")
    dice = scalars["val_mean_dice"]
    assert len(dice) == 1 and 0.0 <= dice[0][1] <= 1.0


def test_train_json_is_the_pretraining_config() -> None:
    """``train.json`` (the model-zoo name) is the pretraining config, and there is no second copy of it."""
    assert not (CONFIGS / "pretrain.json").exists(), "one pretraining config: train.json"
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "train.json")])
    assert parser["network_def"]["_target_"] == "medicraft_monai.ssl.ContextRestorationNet"
    assert parser["loss"]["_target_"] == "torch.nn.MSELoss"
