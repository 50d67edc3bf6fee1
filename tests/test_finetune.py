"""Fine-tuning the shipped generators to a clinic's own classes (``configs/finetune.json`` of oct_ddpm and oct_ldm).

Every run goes through ``monai.bundle`` with the shipped weights as the parent and the phantom's class names
(healthy, benign, melanoma: none of which the parent knows), on a few phantom B-scans with small batches, as a
user would fine-tune. Checked: the class embedding is re-made (null row kept), ``diffusion.json`` records the
parent's checksum and every synthetic image's provenance carries it, the encoder stays fixed while frozen, a time
budget stops cleanly with a checkpoint and ``--resume true`` continues, and wrong settings are refused before
anything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _subprocess import monai_bundle_cmd, run_checked
from test_zoo_smoke import workflow

from medicraft_monai.data.datalist import load_datalist, write_datalist
from medicraft_monai.data.phantom import make_phantom_dataset
from medicraft_monai.engines import FreezeModulesHandler, ParentGenerator, TimeBudgetHandler
from medicraft_monai.engines.records import GeneratorError
from medicraft_monai.networks import latest_checkpoint, load_state_dict
from medicraft_monai.networks.release import export_bundle
from medicraft_monai.synthesis import DiffusionGenerator
from medicraft_monai.utils import file_sha256

REPO = Path(__file__).resolve().parents[1]
FINETUNE = ["train.json", "finetune.json"]
CLASSES = ["healthy", "benign", "melanoma"]
#: a few small batches of the shipped network: what a test can afford on 2 cores
SMALL = {
    "batch_size": 4,
    "num_workers": 0,
    "val_interval": 1,
    "grid_interval": 1,
    "grid_steps": 2,
    "grid_per_class": 1,
    "log_interval": 1,
    "ckpt_interval": 2,
}


def _messages(err: BaseException) -> str:
    """The messages of an error and its causes (MONAI's config parser wraps the error a component raised)."""
    found = []
    while err is not None:
        found.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(found)


def _finetune_ddpm(root: Path, datalist: Path, parent: Path, **overrides) -> None:
    """oct_ddpm's finetune.json run in-process (``ConfigWorkflow``) with ``bundle_root`` = ``root``: the phantom's
    classes, ``parent`` as the parent weights, small batches and one epoch unless overridden."""
    settings = {"max_epochs": 1, **SMALL, **overrides}
    workflow(
        "oct_ddpm",
        FINETUNE,
        "train",
        root,
        datalist=str(datalist),
        class_names=CLASSES,
        parent_ckpt_path=str(parent),
        **settings,
    )


def _configs(bundle: str, *names: str) -> list[str]:
    return [str(REPO / "bundles" / bundle / "configs" / n) for n in ("common.json", *names)]


@pytest.fixture(scope="module")
def phantom_datalist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 training and 3 validation phantom B-scans of the three phantom classes (other names than the parent's)."""
    root = tmp_path_factory.mktemp("phantom")
    make_phantom_dataset(root / "phantom", exams=9, seed=0, height=64, width=128, progress=False)
    full = load_datalist(root / "phantom" / "datalist.json")
    pick = {}
    for split, n in (("training", 8), ("validation", 3)):
        items = sorted(full[split], key=lambda it: (it["label"], it["image"]))
        by_class = [[it for it in items if it["label"] == c] for c in range(3)]
        chosen = [it for group in zip(*[g[: n // 3 + 1] for g in by_class if g]) for it in group][:n]
        pick[split] = chosen or items[:n]
    out = root / "small.json"
    write_datalist(out, {"labels": full["labels"], "training": pick["training"], "validation": pick["validation"]})
    assert {it["label"] for it in pick["training"]} == {0, 1, 2}
    return out


@pytest.fixture(scope="module")
def parent_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped oct_ddpm weights and diffusion.json (tests that try to misuse the parent's folder
    must never risk the repository's own weights)."""
    folder = tmp_path_factory.mktemp("parent") / "models"
    folder.mkdir()
    for name in ("model.pt", "diffusion.json"):
        shutil.copy2(REPO / "bundles" / "oct_ddpm" / "models" / name, folder / name)
    return folder / "model.pt"


def test_class_embedding_keeps_known_names_and_the_null_row(parent_copy: Path, tmp_path: Path) -> None:
    parent = ParentGenerator(parent_copy, tmp_path / "out", seed=3)
    table = load_state_dict(parent_copy)["class_embedding.weight"].float()
    assert parent.class_names == ["CNV", "DME", "DRUSEN", "NORMAL"]
    new = parent.class_embedding(table, ["NORMAL", "melanoma"])
    assert new.shape == (3, table.shape[1])
    assert torch.equal(new[0], table[3])  # a class the parent knows keeps its row
    assert torch.equal(new[-1], table[-1])  # the null class of guidance is the parent's
    assert not any(torch.allclose(new[1], row) for row in table)  # a new class gets a fresh row
    again = ParentGenerator(parent_copy, tmp_path / "out", seed=3).class_embedding(table, ["NORMAL", "melanoma"])
    assert torch.equal(new, again)  # seeded


def test_ddpm_finetune_through_monai_bundle_run(phantom_datalist: Path, tmp_path: Path) -> None:
    """The shipped oct_ddpm fine-tuned to three new classes with `python -m monai.bundle run`, exported, sampled."""
    ckpt_dir, logs = tmp_path / "models", tmp_path / "logs"
    cmd = monai_bundle_cmd(
        _configs("oct_ddpm", "train.json", "finetune.json"),
        REPO / "bundles" / "oct_ddpm",
        datalist=str(phantom_datalist),
        class_names=CLASSES,
        ckpt_dir=str(ckpt_dir),
        log_dir=str(logs),
        max_epochs=1,
        **SMALL,
    )
    run_checked(cmd)
    shipped = REPO / "bundles" / "oct_ddpm" / "models" / "model.pt"
    record = json.loads((ckpt_dir / "diffusion.json").read_text())
    assert record["class_names"] == CLASSES
    assert record["parent"]["model_sha256"] == file_sha256(shipped)
    assert record["parent"]["class_names"] == ["CNV", "DME", "DRUSEN", "NORMAL"]
    assert list((logs / "samples").glob("*.png")), "no TensorBoard sample grid written"
    # the null row of the fine-tuned (EMA) weights started from the parent's and moved little in 2 iterations
    parent_null = load_state_dict(shipped)["class_embedding.weight"][-1].float()
    tuned = load_state_dict(ckpt_dir / "model.pt")["class_embedding.weight"].float()
    assert tuned.shape[0] == len(CLASSES) + 1
    assert torch.allclose(tuned[-1], parent_null, atol=0.05)

    # exported with no settings given: the classes come from diffusion.json; provenance names the parent
    exported = export_bundle(REPO / "bundles" / "oct_ddpm", ckpt_dir / "model.pt", tmp_path / "my_oct_ddpm")
    gen = DiffusionGenerator.from_bundle(exported["bundle_root"], device="cpu")
    assert gen.class_names == CLASSES
    images = gen.generate(["melanoma", "healthy"], [0, 1], num_inference_steps=2)
    assert images.shape == (2, 1, 32, 64) and np.isfinite(images).all()
    prov = gen.provenance("melanoma", 0)
    assert prov["parent_sha256"] == file_sha256(shipped)
    assert prov["model_sha256"] == file_sha256(ckpt_dir / "model.pt")


def test_frozen_encoder_stays_the_parents(phantom_datalist: Path, parent_copy: Path, tmp_path: Path) -> None:
    _finetune_ddpm(tmp_path, phantom_datalist, parent_copy, freeze_encoder_epochs=1)
    parent = load_state_dict(parent_copy)
    state = load_state_dict(latest_checkpoint(tmp_path / "finetune" / "models" / "training"))  # the online network
    encoder = [k for k in parent if k.startswith(("conv_in.", "down_blocks."))]
    decoder = [k for k in parent if k.startswith("up_blocks.") and k.endswith("weight")]
    assert encoder and decoder
    assert all(torch.equal(state[k], parent[k].float()) for k in encoder), "the frozen encoder changed"
    assert any(not torch.equal(state[k], parent[k].float()) for k in decoder), "the decoder did not train"


def test_time_budget_stops_with_a_checkpoint_and_resume_continues(
    phantom_datalist: Path, parent_copy: Path, tmp_path: Path
) -> None:
    _finetune_ddpm(tmp_path, phantom_datalist, parent_copy, max_epochs=2, max_minutes=1e-5)  # stops after 1 iteration
    train_dir = tmp_path / "finetune" / "models" / "training"
    first = latest_checkpoint(train_dir)
    assert Path(first).name == "checkpoint_final_iteration=1.pt"
    assert (tmp_path / "finetune" / "models" / "model.pt").is_file()
    _finetune_ddpm(tmp_path, phantom_datalist, parent_copy, max_epochs=2, resume=True)
    # 8 training images in batches of 4: 2 iterations per epoch, 2 epochs
    assert Path(latest_checkpoint(train_dir)).name == "checkpoint_final_iteration=4.pt"
    record = json.loads((tmp_path / "finetune" / "models" / "diffusion.json").read_text())
    assert record["parent"]["model_sha256"] == file_sha256(parent_copy)


def test_refuses_to_write_into_the_parents_folder(phantom_datalist: Path, parent_copy: Path, tmp_path: Path) -> None:
    before = file_sha256(parent_copy)
    with pytest.raises(Exception) as caught:
        _finetune_ddpm(tmp_path, phantom_datalist, parent_copy, ckpt_dir=str(parent_copy.parent))
    assert "would overwrite the parent's" in _messages(caught.value)
    assert file_sha256(parent_copy) == before
    assert sorted(p.name for p in parent_copy.parent.iterdir()) == ["diffusion.json", "model.pt"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"prediction_type": "epsilon"}, "prediction_type"),
        ({"channels": [32, 64, 128, 256]}, "do not fit the configured network"),
    ],
)
def test_refuses_settings_other_than_the_parents(
    phantom_datalist: Path, parent_copy: Path, tmp_path: Path, override: dict, message: str
) -> None:
    with pytest.raises(Exception) as caught:
        _finetune_ddpm(tmp_path, phantom_datalist, parent_copy, **override)
    assert message in _messages(caught.value)
    assert not (tmp_path / "finetune" / "models" / "model.pt").exists()


def test_parent_without_diffusion_json_is_refused(tmp_path: Path) -> None:
    shutil.copy2(REPO / "bundles" / "oct_ddpm" / "models" / "model.pt", tmp_path / "model.pt")
    with pytest.raises(GeneratorError, match="no diffusion.json"):
        ParentGenerator(tmp_path / "model.pt", tmp_path / "out")
    with pytest.raises(GeneratorError, match="not found"):
        ParentGenerator(tmp_path / "missing.pt", tmp_path / "out")


def test_ldm_finetune_keeps_the_parents_autoencoder_and_scale(phantom_datalist: Path, tmp_path: Path) -> None:
    parent_dir = REPO / "bundles" / "oct_ldm" / "models"
    ckpt_dir = tmp_path / "models"
    workflow(
        "oct_ldm",
        ["train.json", "finetune.json"],
        "train",
        tmp_path,
        datalist=str(phantom_datalist),
        class_names=CLASSES,
        parent_ckpt_path=str(parent_dir / "model.pt"),
        ckpt_dir=str(ckpt_dir),
        log_dir=str(tmp_path / "logs"),
        max_epochs=1,
        **SMALL,
    )
    parent_latent = json.loads((parent_dir / "latent.json").read_text())
    latent = json.loads((ckpt_dir / "latent.json").read_text())
    assert latent["scale_factor"] == parent_latent["scale_factor"]  # the parent's, not re-estimated on 8 images
    assert file_sha256(ckpt_dir / "autoencoder.pt") == file_sha256(parent_dir / "autoencoder.pt")
    record = json.loads((ckpt_dir / "diffusion.json").read_text())
    assert record["class_names"] == CLASSES
    assert record["parent"]["model_sha256"] == file_sha256(parent_dir / "model.pt")
    gen = DiffusionGenerator.from_bundle(
        export_bundle(REPO / "bundles" / "oct_ldm", ckpt_dir / "model.pt", tmp_path / "my_oct_ldm")["bundle_root"],
        device="cpu",
    )
    images = gen.generate(["benign"], [0], num_inference_steps=2)
    assert images.shape[:2] == (1, 1) and np.isfinite(images).all()
    assert gen.provenance("benign", 0)["parent_sha256"] == file_sha256(parent_dir / "model.pt")


def test_handler_arguments_are_checked() -> None:
    net = torch.nn.Sequential()
    with pytest.raises(ValueError, match="no module"):
        FreezeModulesHandler(net, epochs=1)
    with pytest.raises(ValueError, match=">= 0"):
        TimeBudgetHandler(-1)
