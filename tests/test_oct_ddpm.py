"""The oct_ddpm bundle end to end, through ``python -m monai.bundle run`` (and torchrun) on real OCT B-scans.

Tiny settings throughout (32 x 64 images, a two-level UNet, 8 training images of the 4 OCT2017 classes), given as
command-line overrides exactly as a user would. One training run is killed after its first checkpoint and resumed;
the resumed run's weights are then evaluated, sampled and exported by the other tests.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _subprocess import monai_bundle_cmd, run_checked
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medicraft_monai.data import build_datalist, check_datalist_classes, read_bscan, write_datalist
from medicraft_monai.data.errors import EmptyDatasetError, OCTDataError, UnknownLabelError
from medicraft_monai.engines.records import GeneratorError
from medicraft_monai.networks import latest_checkpoint, verify_bundle_network
from medicraft_monai.synthesis import DiffusionGenerator
from medicraft_monai.synthesis.sample import sample_to_folder, synthetic_png_path
from medicraft_monai.utils import file_sha256

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "oct_ddpm"
CONFIGS = BUNDLE / "configs"
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]
TINY_NET = {
    "class_names": CLASSES,
    "image_size": [32, 64],
    "channels": [8, 16],
    "attention_levels": [False, True],
    "num_res_blocks": 1,
    "num_head_channels": 8,
    "norm_num_groups": 8,
}
TINY_TRAIN = {
    "batch_size": 2,
    "num_workers": 0,
    "learning_rate": 1e-3,
    "ema_momentum": 0.5,
    "ema_momentum_warmup": 0.5,
    "ema_warmup_iters": 2,
    "val_interval": 1,
    "log_interval": 1,
    "ckpt_interval": 2,
    "grid_interval": 1,
    "grid_steps": 2,
    "grid_per_class": 1,
}
TRAIN_PER_CLASS = 2
EPOCH_LENGTH = TRAIN_PER_CLASS * len(CLASSES) // TINY_TRAIN["batch_size"]
SAMPLING = {**TINY_NET, "num_inference_steps": 5, "num_images_per_class": 2, "seed": 7}


def bundle_cmd(configs: list[str], bundle_root: Path, **overrides) -> list[str]:
    return monai_bundle_cmd([CONFIGS / c for c in configs], bundle_root, **overrides)


def run(cmd: list[str], expect_ok: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_checked(cmd, expect_ok, timeout)


def event_files(log_dir: Path) -> list[Path]:
    """TensorBoard event files, oldest run first."""
    return sorted(log_dir.glob("events.out.tfevents.*"), key=lambda p: (int(p.name.split(".")[3]), p.stat().st_mtime))


def tensorboard(event_file: Path) -> tuple[dict[str, list[tuple[int, float]]], list[str]]:
    ea = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    scalars = {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}
    return scalars, ea.Tags()["images"]


def png_pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# --------------------------------------------------------------------------------------------------------------------
# fixtures: a tiny real datalist, one killed-and-resumed training run, three sampling runs
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def datalist(oct2017_dir: Path, tmp_path_factory) -> Path:
    """2 training and 1 validation B-scan per OCT2017 class (patient-level splits of the real sample)."""
    full = build_datalist(oct2017_dir, check_images=False)

    def pick(split: str, n: int) -> list[dict]:
        return [it for c in range(len(CLASSES)) for it in [i for i in full[split] if i["label"] == c][:n]]

    small = {k: v for k, v in full.items() if k not in ("training", "validation", "test")}
    small.update(training=pick("training", TRAIN_PER_CLASS), validation=pick("validation", 1), test=[])
    small.update(numTraining=len(small["training"]), numValidation=len(small["validation"]), numTest=0)
    assert [small["labels"][str(i)] for i in range(len(CLASSES))] == CLASSES
    return write_datalist(tmp_path_factory.mktemp("data") / "datalist.json", small)


@pytest.fixture(scope="module")
def trained(datalist: Path, tmp_path_factory) -> dict:
    """Run A trains for 'ever' and is killed (SIGTERM) after its first checkpoint; run B resumes it to the end."""
    root = tmp_path_factory.mktemp("oct_ddpm")
    common = {"datalist": str(datalist), **TINY_NET, **TINY_TRAIN}
    ckpt_dir = root / "models" / "training"
    log_a = root / "run_a.log"
    with open(log_a, "w") as log:
        proc = subprocess.Popen(
            bundle_cmd(["train.json"], root, **common, max_epochs=1000),
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 240
            while latest_checkpoint(ckpt_dir, required=False) is None:
                if proc.poll() is not None:
                    pytest.fail(f"run A ended ({proc.returncode}) before a checkpoint:\n{log_a.read_text()[-5000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"run A wrote no checkpoint in time:\n{log_a.read_text()[-5000:]}")
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    ckpt = latest_checkpoint(ckpt_dir)
    resumed_from = int(re.search(r"iteration=(\d+)\.pt$", ckpt)[1])
    model_after_kill = (root / "models" / "model.pt").exists()
    max_epochs = resumed_from // EPOCH_LENGTH + 2
    # lowercase "true" on purpose: the configs read switches through their switches entry (utils.flag)
    proc_b = run(bundle_cmd(["train.json"], root, **common, max_epochs=max_epochs, resume="true"))
    return {
        "root": root,
        "common": common,
        "returncode_a": proc.returncode,
        "ckpt": ckpt,
        "resumed_from": resumed_from,
        "final_iteration": max_epochs * EPOCH_LENGTH,
        "max_epochs": max_epochs,
        "model_after_kill": model_after_kill,
        "log_b": proc_b.stdout + proc_b.stderr,
        "model": root / "models" / "model.pt",
    }


@pytest.fixture(scope="module")
def sampled(trained: dict) -> dict[str, Path]:
    """inference.json three times: seed 7 (batch 3), seed 7 again (batch 5), seed 7 with guidance 4."""
    root = trained["root"]
    out = {}
    for name, extra in {
        "a": {"batch_size": 3, "guidance_scale": 1.0},  # the bundle's default (0.7.0), given explicitly
        "b": {"batch_size": 5, "guidance_scale": 1.0},
        "guided": {"batch_size": 3, "guidance_scale": 4.0},
    }.items():
        out[name] = root / f"samples_{name}"
        run(bundle_cmd(["inference.json"], root, **SAMPLING, **extra, output_dir=str(out[name])))
    return out


# --------------------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------------------
def test_training_saves_the_ema_weights_and_logs_loss_lr_validation_and_grids(trained: dict) -> None:
    root = trained["root"]
    assert not trained["model_after_kill"], "the killed run must not have written models/model.pt"
    state = torch.load(trained["model"], map_location="cpu", weights_only=True)
    final = torch.load(
        root / "models" / "training" / f"checkpoint_final_iteration={trained['final_iteration']}.pt",
        map_location="cpu",
        weights_only=True,
    )
    assert {"network", "ema", "optimizer", "trainer"} <= set(final)
    assert state.keys() == final["ema"].keys()
    assert all(torch.equal(state[k], final["ema"][k]) for k in state), "model.pt must hold the EMA weights"
    assert any(not torch.equal(state[k], final["network"][k]) for k in state), "EMA weights equal the online ones"

    last = event_files(root / "logs")[-1]
    scalars, images = tensorboard(last)
    assert {"train/loss", "train/lr", "val_loss"} <= set(scalars)
    assert "samples_per_class" in images
    assert all(math.isfinite(v) for _, v in scalars["train/loss"] + scalars["val_loss"])
    assert [v for _, v in scalars["train/lr"]] == pytest.approx(
        [TINY_TRAIN["learning_rate"]] * len(scalars["train/lr"])
    )
    assert [s for s, _ in scalars["val_loss"]] == list(
        range(trained["resumed_from"] // EPOCH_LENGTH + 1, trained["max_epochs"] + 1)
    )

    grid = root / "logs" / "samples" / f"samples_epoch_{trained['max_epochs']:04d}.png"
    assert grid.is_file()
    rows = png_pixels(grid).shape[0]
    assert rows >= len(CLASSES) * TINY_NET["image_size"][0], "one row of samples per class"


def test_a_killed_run_resumes_where_its_checkpoint_stopped(trained: dict) -> None:
    assert trained["returncode_a"] == -signal.SIGTERM, "run A should have been killed, not have finished"
    first, last = event_files(trained["root"] / "logs")
    steps_a = [s for s, _ in tensorboard(first)[0]["train/loss"]]
    steps_b = [s for s, _ in tensorboard(last)[0]["train/loss"]]
    assert steps_a[0] == 1 and steps_a[-1] >= trained["resumed_from"]
    # the resumed run goes on from the checkpoint's iteration, not from 0
    assert steps_b == list(range(trained["resumed_from"] + 1, trained["final_iteration"] + 1))
    assert f"Restored all variables from {trained['ckpt']}" in trained["log_b"]
    assert (
        trained["root"] / "models" / "training" / f"checkpoint_final_iteration={trained['final_iteration']}.pt"
    ).is_file()


def test_training_refuses_a_datalist_whose_classes_are_not_class_names(datalist: Path, tmp_path: Path) -> None:
    net = {**TINY_NET, "class_names": ["healthy", "benign", "melanoma"]}  # the phantom's, not the datalist's
    proc = run(bundle_cmd(["train.json"], tmp_path, datalist=str(datalist), **net, **TINY_TRAIN), expect_ok=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "UnknownLabelError" in out and "are not the bundle's class_names" in out and str(datalist) in out
    assert not (tmp_path / "models" / "model.pt").exists()


def test_two_process_training_with_torchrun_on_cpu(datalist: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *bundle_cmd(
            ["train.json", "multi_gpu_train.json"],
            tmp_path,
            datalist=str(datalist),
            **TINY_NET,
            **TINY_TRAIN,
            max_epochs=2,
        )[1:],
    ]
    proc = run(cmd)
    out = proc.stdout + proc.stderr
    # both ranks trained, each on half the images: 2 epochs x (4 images / batch 2) iterations
    assert out.count("SupervisedTrainer - INFO - Engine run resuming from iteration 0, epoch 0 until 2 epochs") == 2
    assert (tmp_path / "models" / "training" / f"checkpoint_final_iteration={2 * EPOCH_LENGTH // 2}.pt").is_file()
    assert (tmp_path / "models" / "model.pt").is_file()
    assert len(event_files(tmp_path / "logs")) == 1, "only rank 0 writes TensorBoard logs"


def test_evaluate_reports_a_finite_validation_loss(trained: dict) -> None:
    root = trained["root"]
    run(bundle_cmd(["train.json", "evaluate.json"], root, **trained["common"]))
    text = (root / "eval" / "metrics.csv").read_text()
    name, value = re.split(r"[,\t]", text.strip().splitlines()[0])
    assert name == "val_loss"
    assert math.isfinite(float(value)) and 0.0 < float(value) < 10.0


# --------------------------------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------------------------------
def test_inference_writes_marked_images_per_class_and_the_same_seed_gives_the_same_file(
    trained: dict, sampled: dict[str, Path]
) -> None:
    sha = file_sha256(trained["model"])
    for cls in CLASSES:
        names = sorted(p.name for p in (sampled["a"] / cls).iterdir())
        assert names == [f"synthetic_{cls}_seed7.png", f"synthetic_{cls}_seed8.png"]
        for seed in (7, 8):
            a, b = synthetic_png_path(sampled["a"], cls, seed), synthetic_png_path(sampled["b"], cls, seed)
            assert a.read_bytes() == b.read_bytes(), "same seed, other batch size: the file must be identical"
            image, meta = read_bscan(a)
            assert image.shape == tuple(TINY_NET["image_size"]) and meta["synthetic"] is True
            prov = meta["provenance"]
            assert (prov["class_name"], prov["seed"], prov["steps"], prov["sampler"]) == (cls, seed, 5, "dpmpp_2m")
            assert prov["model_sha256"] == sha and prov["guidance_scale"] == 1.0
    # different seeds give different images
    assert not np.array_equal(
        png_pixels(synthetic_png_path(sampled["a"], "CNV", 7)), png_pixels(synthetic_png_path(sampled["a"], "CNV", 8))
    )


def test_guidance_changes_the_images(sampled: dict[str, Path]) -> None:
    for cls in CLASSES:
        plain = png_pixels(synthetic_png_path(sampled["a"], cls, 7)).astype(int)
        guided = png_pixels(synthetic_png_path(sampled["guided"], cls, 7)).astype(int)
        assert np.abs(plain - guided).mean() > 0.5, cls
        assert read_bscan(synthetic_png_path(sampled["guided"], cls, 7))[1]["provenance"]["guidance_scale"] == 4.0


def test_generator_from_bundle_draws_the_same_images_as_the_bundle(
    trained: dict, sampled: dict[str, Path], tmp_path: Path
) -> None:
    gen = DiffusionGenerator.from_bundle(
        BUNDLE,
        ckpt_path=trained["model"],
        device="cpu",
        overrides={**TINY_NET, "num_inference_steps": 5, "guidance_scale": 1.0},
    )
    assert gen.class_names == CLASSES and gen.image_shape == (1, 32, 64) and gen.sampler == "dpmpp_2m"
    images = gen.generate(CLASSES, [7] * len(CLASSES))
    for cls, image in zip(CLASSES, images):
        expected = png_pixels(synthetic_png_path(sampled["a"], cls, 7)).astype(int)
        got = np.round(image[0] * 255).astype(int)
        assert np.abs(got - expected).max() <= 1, cls

    written = sample_to_folder(gen, tmp_path, classes=["NORMAL"], per_class=1, seed=7, batch_size=1, verbose=False)
    assert written == [tmp_path / "NORMAL" / "synthetic_NORMAL_seed7.png"]
    assert (
        np.abs(png_pixels(written[0]).astype(int) - png_pixels(synthetic_png_path(sampled["a"], "NORMAL", 7))).max()
        <= 1
    )
    with pytest.raises(GeneratorError, match="unknown class"):
        sample_to_folder(gen, tmp_path, classes=["melanoma"], per_class=1)
    with pytest.raises(ValueError, match="per_class"):
        sample_to_folder(gen, tmp_path, per_class=-1)


def test_trained_network_matches_its_metadata_and_exports_to_torchscript(trained: dict, tmp_path: Path) -> None:
    from monai.data import load_net_with_metadata

    result = verify_bundle_network(
        BUNDLE, ckpt_path=trained["model"], export_path=tmp_path / "model.ts", overrides=TINY_NET
    )
    assert result["output_shape"] == (1, 1, 32, 64) and result["max_abs_diff"] <= 1e-4  # metadata's shape
    ts, meta, extra = load_net_with_metadata(result["torchscript"], more_extra_files=["inference.json"])
    version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    assert meta["version"] == version and b"network_def" in extra["inference.json"]
    x = torch.zeros(2, 1, 32, 64)
    out = ts(x, torch.tensor([0, 999]), torch.tensor([0, len(CLASSES)]))
    assert out.shape == x.shape and torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------------------------------
# helpers the configs call
# --------------------------------------------------------------------------------------------------------------------
def test_check_datalist_classes_names_the_problem(datalist: Path, tmp_path: Path) -> None:
    import json

    assert check_datalist_classes(datalist, CLASSES) == CLASSES
    data = json.loads(datalist.read_text())
    with pytest.raises(UnknownLabelError, match="same classes in another order"):
        check_datalist_classes(data, ["DME", "CNV", "DRUSEN", "NORMAL"])
    with pytest.raises(UnknownLabelError, match="no 'labels' mapping"):
        check_datalist_classes({**data, "labels": {}}, CLASSES)
    with pytest.raises(EmptyDatasetError, match="'training' split is missing or empty"):
        check_datalist_classes({**data, "training": []}, CLASSES)
    with pytest.raises(UnknownLabelError, match=r"labels \['7'\] outside 0..3"):
        check_datalist_classes({**data, "training": [{**data["training"][0], "label": 7}]}, CLASSES)
    with pytest.raises(OCTDataError, match="datalist file not found"):
        check_datalist_classes(tmp_path / "missing.json", CLASSES)
