"""The trained weights that ship in ``bundles/oct_classifier/models/model.pt`` (no training here).

The weights are stored in float16 and loaded into the float32 network by the project's checkpoint loader and by
MONAI's ``CheckpointLoader`` (through ``python -m monai.bundle run``). The bundle runs out of the box: no datalist
and no overrides give the classes and image settings the weights were trained with.

The held-out images are those of the model card: the ``test`` split of the real OCT2017 sample, rebuilt here with
``medicraft_monai.data.build_datalist`` and its defaults (fractions 0.7/0.15/0.15, seed 0; patient-level), the same
split as ``medicraft datalist ../shared/data/oct2017``. No image of those 63 patients was trained on.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from _subprocess import monai_bundle_cmd, run_checked

from medicraft_monai.data import build_datalist, write_datalist
from medicraft_monai.networks.bundle import bundle_parser, load_bundle_network
from medicraft_monai.networks.checkpoint import load_state_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "oct_classifier"
CONFIGS = BUNDLE / "configs"
WEIGHTS = BUNDLE / "models" / "model.pt"
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]
PER_CLASS = 4
#: the shipped weights classify 93 of the 99 held-out test images right (accuracy 0.939, CNV the class most often
#: missed: 21 of 26). A handful of 4 images per class leaves room for 3 mistakes; a model that lost its training
#: (chance: 0.25) or a broken loading or pre-processing path falls far below.
MIN_ACCURACY = 0.8


@pytest.fixture(scope="module")
def held_out(oct2017_dir: Path) -> dict:
    """The OCT2017 sample's patient-level datalist (defaults of ``medicraft datalist``)."""
    datalist = build_datalist(oct2017_dir, check_images=False)
    assert [datalist["labels"][str(i)] for i in range(len(CLASSES))] == CLASSES
    return datalist


def _meta() -> dict:
    return json.loads((CONFIGS / "metadata.json").read_text())


def test_the_weights_are_float16_and_load_into_the_float32_network() -> None:
    assert WEIGHTS.stat().st_size <= 25 * 1024**2
    state = load_state_dict(WEIGHTS)
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    assert floats and all(v.dtype == torch.float16 for v in floats.values())
    # no overrides: the bundle's own classes and network settings fit the weights
    loaded = load_bundle_network(BUNDLE, what="classifier bundle")
    assert loaded.class_names == CLASSES
    params = loaded.network.state_dict()
    assert all(params[k].dtype == torch.float32 for k in floats)
    assert all(torch.equal(params[k], v.float()) for k, v in floats.items())
    assert all(torch.isfinite(v).all() for v in floats.values())


def test_the_defaults_are_those_of_the_weights() -> None:
    parser = bundle_parser(BUNDLE)
    meta = _meta()
    assert parser.get_parsed_content("class_names") == CLASSES
    assert parser.get_parsed_content("resize_mode") == "crop"
    assert (
        list(parser.get_parsed_content("image_size")) == meta["network_data_format"]["inputs"]["image"]["spatial_shape"]
    )
    assert list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values()) == CLASSES
    # without a datalist, inference reads the images under the bundle's data/ folder
    assert Path(parser.get_parsed_content("input")) == BUNDLE / "data"


def test_out_of_the_box_inference_classifies_held_out_patients(held_out: dict, tmp_path: Path) -> None:
    images = tmp_path / "scans"
    images.mkdir()
    truth = {}
    for c, name in enumerate(CLASSES):
        for item in [it for it in held_out["test"] if it["label"] == c][:PER_CLASS]:
            src = Path(item["image"])
            truth[str(shutil.copy(src, images / src.name))] = name
    out = tmp_path / "predictions"
    run_checked(monai_bundle_cmd([CONFIGS / "inference.json"], BUNDLE, input=str(images), output_dir=str(out)))
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["image"] for r in rows) == sorted(truth)
    correct = sum(r["predicted_class"] == truth[r["image"]] for r in rows)
    assert correct / len(rows) >= MIN_ACCURACY, rows
    for r in rows:
        assert abs(sum(float(r[f"prob_{c}"]) for c in CLASSES) - 1) < 1e-3


def test_the_held_out_figures_of_the_metadata_are_those_of_the_shipped_weights(held_out: dict, tmp_path: Path) -> None:
    """evaluate.json with the shipped weights, on all 99 held-out images, gives the metadata's figures (to one image:
    bf16 autocast on CPUs that have it may move a near tie)."""
    datalist = write_datalist(tmp_path / "datalist.json", held_out)
    out = tmp_path / "eval"
    cmd = monai_bundle_cmd(
        [CONFIGS / c for c in ("train.json", "evaluate.json")], BUNDLE, datalist=str(datalist), output_dir=str(out)
    )
    run_checked([*cmd, "--num_workers", "0"])
    found = json.loads((out / "metrics.json").read_text())
    claimed = _meta()["eval_metrics"]
    assert found["num_samples"] == claimed["test_images"] == len(held_out["test"])
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert found[key] == pytest.approx(claimed[key], abs=1.5 / found["num_samples"]), key
    for name in CLASSES:
        assert found["auc"][name] == pytest.approx(claimed[f"auc_{name}"], abs=0.01), name
