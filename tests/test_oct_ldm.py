"""The oct_ldm bundle end to end through ``python -m monai.bundle run`` (and torchrun) on real OCT B-scans.

Tiny settings (32 x 64 images, a two-level autoencoder with 2 latent channels, a two-level UNet, 8 training and 4
validation B-scans of the 4 OCT2017 classes), given as command-line overrides as a user would. Stage 1 trains with
the adversarial loss switched on from epoch 2, is resumed and evaluated; stage 2 caches the latents, is resumed
(reusing the cache) and evaluated; its weights are then sampled by inference.json, by DiffusionGenerator and by
multiply, with the same code path as oct_ddpm.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _subprocess import monai_bundle_cmd, run_checked
from monai.bundle import ConfigParser
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medicraft_monai.data import build_datalist, load_datalist, read_bscan, write_datalist
from medicraft_monai.engines.records import GeneratorError
from medicraft_monai.synthesis import DiffusionGenerator, multiply
from medicraft_monai.synthesis.sample import synthetic_png_path
from medicraft_monai.utils import file_sha256

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "oct_ldm"
CONFIGS = BUNDLE / "configs"
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]
TINY_AE = {
    "class_names": CLASSES,
    "image_size": [32, 64],
    "autoencoder_channels": [8, 16],
    "autoencoder_attention_levels": [False, False],
    "autoencoder_num_res_blocks": 1,
    "autoencoder_norm_num_groups": 8,
    "latent_channels": 2,
}
TINY_UNET = {
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
    "val_interval": 1,
    "log_interval": 1,
    "ckpt_interval": 2,
    "grid_interval": 1,
}
AE_TRAIN = {
    **TINY_TRAIN,
    "ssim_kernel_size": 7,
    "msssim_kernel_size": 7,
    "disc_channels": 8,
    "recon_grid_images": 2,
    "adversarial": "true",
    "adv_start_epoch": 2,
}
DIFF_TRAIN = {
    **TINY_TRAIN,
    "ema_momentum": 0.5,
    "ema_momentum_warmup": 0.5,
    "ema_warmup_iters": 2,
    "grid_steps": 2,
    "grid_per_class": 1,
}
EPOCH_LENGTH = 4  # 8 training images, batch 2
SAMPLING = {**TINY_AE, **TINY_UNET, "num_inference_steps": 4, "num_images_per_class": 2, "seed": 7}


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
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}, ea.Tags()["images"]


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


# --------------------------------------------------------------------------------------------------------------------
# fixtures: a tiny real datalist, both stages trained and resumed, two sampling runs
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def datalist(oct2017_dir: Path, tmp_path_factory) -> Path:
    """2 training and 1 validation B-scan per OCT2017 class (patient-level splits of the real sample)."""
    full = build_datalist(oct2017_dir, check_images=False)

    def pick(split: str, n: int) -> list[dict]:
        return [it for c in range(len(CLASSES)) for it in [i for i in full[split] if i["label"] == c][:n]]

    small = {k: v for k, v in full.items() if k not in ("training", "validation", "test")}
    small.update(training=pick("training", 2), validation=pick("validation", 1), test=[])
    small.update(numTraining=len(small["training"]), numValidation=len(small["validation"]), numTest=0)
    return write_datalist(tmp_path_factory.mktemp("data") / "datalist.json", small)


@pytest.fixture(scope="module")
def autoencoder(datalist: Path, tmp_path_factory) -> dict:
    """Stage 1: one epoch (no adversarial loss yet), then resumed for a second (adversarial loss on)."""
    root = tmp_path_factory.mktemp("oct_ldm")
    common = {"datalist": str(datalist), **TINY_AE, **AE_TRAIN}
    run_a = run(bundle_cmd(["train_autoencoder.json"], root, **common, max_epochs=1))
    run_b = run(bundle_cmd(["train_autoencoder.json"], root, **common, max_epochs=2, resume="true"))
    return {
        "root": root,
        "common": common,
        "log_a": run_a.stdout + run_a.stderr,
        "log_b": run_b.stdout + run_b.stderr,
        "ckpt": root / "models" / "autoencoder.pt",
    }


@pytest.fixture(scope="module")
def diffusion(autoencoder: dict) -> dict:
    """Stage 2 on the stage-1 autoencoder: two epochs, then resumed for a third."""
    root = autoencoder["root"]
    common = {"datalist": autoencoder["common"]["datalist"], **TINY_AE, **TINY_UNET, **DIFF_TRAIN}
    run_c = run(bundle_cmd(["train.json"], root, **common, max_epochs=2))
    cache_dir = root / "models" / "training" / "latent_cache"
    caches = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in cache_dir.glob("latents_*.pt")}
    # train.json is the diffusion stage: resuming through it continues the same run
    run_d = run(bundle_cmd(["train.json"], root, **common, max_epochs=3, resume="true"))
    return {
        "root": root,
        "common": common,
        "log_c": run_c.stdout + run_c.stderr,
        "log_d": run_d.stdout + run_d.stderr,
        "caches": caches,
        "cache_dir": cache_dir,
        "model": root / "models" / "model.pt",
    }


@pytest.fixture(scope="module")
def sampled(diffusion: dict) -> dict[str, Path]:
    """inference.json with seed 7, batch 3 (the generator test draws the same seeds in a batch of 4)."""
    out = {"a": diffusion["root"] / "samples_a"}
    run(bundle_cmd(["inference.json"], diffusion["root"], **SAMPLING, batch_size=3, output_dir=str(out["a"])))
    return out


# --------------------------------------------------------------------------------------------------------------------
# stage 1
# --------------------------------------------------------------------------------------------------------------------
def test_autoencoder_trains_resumes_and_logs_losses_ssim_and_reconstructions(autoencoder: dict) -> None:
    root = autoencoder["root"]
    first, last = event_files(root / "logs" / "autoencoder")
    scalars_a, _ = tensorboard(first)
    scalars_b, images_b = tensorboard(last)
    assert {"train/loss", "train/recon_loss", "train/kl_loss", "train/adv_loss", "train/disc_loss"} <= set(scalars_a)
    assert [s for s, _ in scalars_a["train/loss"]] == list(range(1, EPOCH_LENGTH + 1))
    # the resumed run goes on from iteration 4, and the adversarial loss starts with epoch 2
    assert [s for s, _ in scalars_b["train/loss"]] == list(range(EPOCH_LENGTH + 1, 2 * EPOCH_LENGTH + 1))
    assert all(v == 0 for _, v in scalars_a["train/adv_loss"] + scalars_a["train/disc_loss"])
    assert all(v > 0 for _, v in scalars_b["train/adv_loss"] + scalars_b["train/disc_loss"])
    assert "Restored all variables from" in autoencoder["log_b"]
    for name in ("val_ssim", "val_msssim"):
        (step, value), *_ = scalars_b[name]
        assert step == 2 and 0.0 < value <= 1.0, (name, value)
    assert "reconstructions" in images_b
    grid = png(root / "logs" / "autoencoder" / "reconstructions" / "reconstructions_epoch_0002.png")
    assert grid.shape[0] >= 2 * 32, "a row of real images and a row of reconstructions"

    final = torch.load(
        root / "models" / "training" / "autoencoder" / f"checkpoint_final_iteration={2 * EPOCH_LENGTH}.pt",
        map_location="cpu",
        weights_only=True,
    )
    assert {"network", "discriminator", "optimizer", "disc_optimizer", "trainer"} <= set(final)
    state = torch.load(autoencoder["ckpt"], map_location="cpu", weights_only=True)
    assert all(torch.equal(state[k], final["network"][k]) for k in state)


def test_autoencoder_evaluation_reports_ssim_and_msssim(autoencoder: dict) -> None:
    root = autoencoder["root"]
    run(bundle_cmd(["train_autoencoder.json", "evaluate.json"], root, **autoencoder["common"]))
    rows = dict(re.split(r"[,\t]", line) for line in (root / "eval" / "metrics.csv").read_text().split())
    assert set(rows) == {"val_ssim", "val_msssim", "val_l1"}
    assert all(0.0 < float(v) <= 1.0 for v in rows.values()), rows


# --------------------------------------------------------------------------------------------------------------------
# stage 2
# --------------------------------------------------------------------------------------------------------------------
def test_diffusion_encodes_the_latents_once_and_the_resumed_run_reuses_them(diffusion: dict, autoencoder: dict) -> None:
    log_c, log_d = diffusion["log_c"], diffusion["log_d"]
    # two epochs, but each split was encoded once; the resumed run encodes nothing
    assert log_c.count("latent cache: encoded 8 training images (2 views)") == 1
    assert log_c.count("latent cache: encoded 4 validation images (1 views)") == 1
    assert "latent cache: encoded" not in log_d and log_d.count("latent cache: reusing") == 2
    now = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in diffusion["cache_dir"].glob("latents_*.pt")}
    assert now == diffusion["caches"] and len(now) == 2, "the cache files must not be rewritten"

    cache = torch.load(next(diffusion["cache_dir"].glob("latents_training_*.pt")), weights_only=True)
    assert cache["autoencoder_sha256"] == file_sha256(autoencoder["ckpt"])
    assert cache["mu"].shape == (8, 2, 2, 16, 32)
    info = json.loads((diffusion["root"] / "models" / "latent.json").read_text())
    var = (cache["mu"].double() ** 2 + cache["sigma"].double() ** 2).mean() - cache["mu"].double().mean() ** 2
    assert info["scale_factor"] == pytest.approx(1 / math.sqrt(float(var)))
    assert info["autoencoder_sha256"] == cache["autoencoder_sha256"] and info["latent_shape"] == [2, 16, 32]


def test_diffusion_resumes_saves_the_ema_weights_and_logs_decoded_grids(diffusion: dict) -> None:
    root = diffusion["root"]
    assert "Restored all variables from" in diffusion["log_d"]
    first, last = event_files(root / "logs" / "diffusion")
    assert [s for s, _ in tensorboard(last)[0]["train/loss"]] == list(range(2 * EPOCH_LENGTH + 1, 3 * EPOCH_LENGTH + 1))
    scalars, images = tensorboard(last)
    assert "samples_per_class" in images and all(math.isfinite(v) for _, v in scalars["val_loss"])
    grid = png(root / "logs" / "diffusion" / "samples" / "samples_epoch_0003.png")
    assert grid.shape[0] >= len(CLASSES) * 32, "decoded images (32 rows each), not latents (16 rows), per class"
    final = torch.load(
        root / "models" / "training" / "diffusion" / f"checkpoint_final_iteration={3 * EPOCH_LENGTH}.pt",
        map_location="cpu",
        weights_only=True,
    )
    state = torch.load(diffusion["model"], map_location="cpu", weights_only=True)
    assert all(torch.equal(state[k], final["ema"][k]) for k in state), "model.pt must hold the EMA weights"
    assert state["conv_in.conv.weight"].shape[1] == 2, "the UNet works on the 2 latent channels"

    run(bundle_cmd(["train.json", "evaluate.json"], root, **diffusion["common"], output_dir=str(root / "eval_d")))
    name, value = re.split(r"[,\t]", (root / "eval_d" / "metrics.csv").read_text().split()[0])
    assert name == "val_loss" and 0.0 < float(value) < 10.0


def test_train_json_is_the_diffusion_stage() -> None:
    assert not (CONFIGS / "train.json").is_symlink(), "a link breaks in a zip archive of the bundle"
    assert not (CONFIGS / "train_diffusion.json").exists(), "one diffusion-stage config: train.json"
    a = ConfigParser.load_config_file(CONFIGS / "train.json")
    assert a["inferer"]["_target_"] == "medicraft_monai.inferers.latent.LatentClassConditionedInferer"


def test_the_multi_gpu_overlay_fits_both_stages() -> None:
    from monai.bundle.reference_resolver import ReferenceResolver

    for train in ("train_autoencoder.json", "train.json"):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / n) for n in ("common.json", train, "multi_gpu_train.json")])
        parser.parse(reset=True)
        refs = ReferenceResolver.find_refs_in_config(parser.get(), id="")
        assert not sorted(r for r in refs if r not in parser), train
        assert parser.get("network")["_target_"].endswith("DistributedDataParallel")
        assert "train#sampler" in parser and "validate#sampler" in parser


def test_two_process_diffusion_training_with_torchrun(autoencoder: dict, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "autoencoder.pt").write_bytes(autoencoder["ckpt"].read_bytes())
    common = {"datalist": autoencoder["common"]["datalist"], **TINY_AE, **TINY_UNET, **DIFF_TRAIN}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += bundle_cmd(["train.json", "multi_gpu_train.json"], tmp_path, **common, max_epochs=1)[1:]
    proc = run(cmd)
    out = proc.stdout + proc.stderr
    # both ranks trained (each on half the latents: 1 epoch x 4 images / batch 2) and both read the same cache
    assert out.count("SupervisedTrainer - INFO - Engine run resuming from iteration 0, epoch 0 until 1 epochs") == 2
    assert (models / "training" / "diffusion" / "checkpoint_final_iteration=2.pt").is_file()
    assert (models / "model.pt").is_file() and (models / "latent.json").is_file()
    assert len(event_files(tmp_path / "logs" / "diffusion")) == 1, "only rank 0 writes TensorBoard logs"


# --------------------------------------------------------------------------------------------------------------------
# sampling through the DiffusionGenerator contract
# --------------------------------------------------------------------------------------------------------------------
def test_inference_writes_decoded_images_marked_with_both_checksums(
    diffusion: dict, autoencoder: dict, sampled: dict[str, Path]
) -> None:
    for cls in CLASSES:
        assert sorted(p.name for p in (sampled["a"] / cls).iterdir()) == [
            f"synthetic_{cls}_seed7.png",
            f"synthetic_{cls}_seed8.png",
        ]
        for seed in (7, 8):
            a = synthetic_png_path(sampled["a"], cls, seed)
            image, meta = read_bscan(a)
            assert image.shape == (32, 64) and meta["synthetic"] is True
            prov = meta["provenance"]
            assert (prov["class_name"], prov["seed"], prov["steps"], prov["sampler"]) == (cls, seed, 4, "dpmpp_2m")
            assert prov["model_sha256"] == file_sha256(diffusion["model"])
            assert prov["autoencoder_sha256"] == file_sha256(autoencoder["ckpt"])
    a7, a8 = png(synthetic_png_path(sampled["a"], "CNV", 7)), png(synthetic_png_path(sampled["a"], "CNV", 8))
    assert np.abs(a7 - a8).mean() > 0.5 and a7.std() > 1.0, "different seeds, non-constant images"


def test_generator_and_multiply_use_this_bundle_unchanged(diffusion: dict, sampled: dict[str, Path], tmp_path) -> None:
    root = diffusion["root"]
    overrides = {**TINY_AE, **TINY_UNET, "ckpt_dir": str(root / "models"), "num_inference_steps": 4}
    gen = DiffusionGenerator.from_bundle(BUNDLE, device="cpu", overrides=overrides)
    assert gen.image_shape == (1, 32, 64) and gen.noise_shape() == (2, 16, 32)
    images = gen.generate(CLASSES, [7] * len(CLASSES))  # batch 4; the bundle drew them in batches of 3
    for cls, image in zip(CLASSES, images):  # same seed, other batch: the same image
        expected = png(synthetic_png_path(sampled["a"], cls, 7))
        assert np.abs(np.round(image[0] * 255).astype(int) - expected).max() <= 1, cls
    guided = gen.generate(CLASSES, [7] * len(CLASSES), guidance_scale=4.0)
    assert np.abs(guided - images).mean() > 1e-3, "guidance changes the images"

    result = multiply(
        datalist=diffusion["common"]["datalist"],
        output_dir=tmp_path / "multiplied",
        bundle_root=BUNDLE,
        target="multiply:1.5",
        batch_size=2,
        overrides=overrides,
        device="cpu",
        progress=False,
    )
    synthetic = load_datalist(result["datalist_synthetic"], "training")
    assert len(synthetic) == result["total"] == 4, "one more image for each class of 2"
    for item in synthetic:
        image, meta = read_bscan(item["image"])
        assert image.shape == (32, 64) and meta["synthetic"] is True
    # another autoencoder than the one the latents were made with is refused
    bad = tmp_path / "other_autoencoder.pt"
    state = torch.load(root / "models" / "autoencoder.pt", weights_only=True)
    torch.save({k: v + 0.01 for k, v in state.items()}, bad)
    with pytest.raises(GeneratorError, match="not the one the diffusion model was trained with"):
        DiffusionGenerator.from_bundle(BUNDLE, device="cpu", overrides={**overrides, "autoencoder_ckpt_path": str(bad)})
