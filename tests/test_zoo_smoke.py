"""A CPU smoke test per bundle in the style of the model zoo's ``ci/unit_tests/``: one tiny epoch, then inference.

Each bundle's own configs run in this process through ``monai.bundle.ConfigWorkflow`` (``initialize``, ``run``,
``finalize``), as the zoo's unit tests run them, with the tiny network and training settings of the bundle's own
end-to-end test (``test_oct_<bundle>.py``, which runs the same configs through ``python -m monai.bundle run``) on a
tiny datalist of real OCT2017 B-scans (patient-level splits). The inference step uses the weights the training step wrote, so a training
config that saves weights its inference config cannot load fails here. ``ConfigWorkflow.check_properties`` is not
called: MONAI 1.6 cannot check handler lists that hold ``@`` references (the zoo's unit tests leave it out too).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_oct_classifier as classifier
import test_oct_context_restoration as restoration
import test_oct_ddpm as ddpm
import test_oct_ldm as ldm
from _datalists import generator_output
from monai.bundle import ConfigWorkflow

from medicraft_monai.bundles import config_files

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]
datalist = restoration.datalist  # the fixture: 3 training, 1 validation, 2 test real B-scans per class
pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file")  # monai.bundle's trust notice


def workflow(name: str, config: str | list[str], workflow_type: str, root: Path, **overrides) -> None:
    """Run ``configs/common.json`` + ``configs/<config>`` (several: layered in order) of bundle ``name`` with
    ``bundle_root`` = ``root``."""
    bundle = REPO / "bundles" / name
    flow = ConfigWorkflow(
        config_file=[str(p) for p in config_files(bundle, *([config] if isinstance(config, str) else config))],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(root),
        **overrides,
    )
    flow.initialize()
    flow.run()
    flow.finalize()


def _files(folder: Path, pattern: str = "*") -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(pattern) if p.is_file())


def _assert_one_png_per_class(folder: Path) -> None:
    found = _files(folder, "*.png")
    assert {f.split("/")[0] for f in found} == set(CLASSES), found


def test_oct_ddpm_trains_an_epoch_then_samples_every_class(datalist: Path, tmp_path: Path) -> None:
    net = ddpm.TINY_NET
    workflow(
        "oct_ddpm", "train.json", "train", tmp_path, datalist=str(datalist), **net, **ddpm.TINY_TRAIN, max_epochs=1
    )
    assert {"model.pt", "diffusion.json"} <= set(_files(tmp_path / "models"))
    workflow("oct_ddpm", "inference.json", "infer", tmp_path, **net, num_inference_steps=2, num_images_per_class=1)
    _assert_one_png_per_class(tmp_path / "synthetic")


def test_oct_ldm_trains_both_stages_an_epoch_then_samples_every_class(datalist: Path, tmp_path: Path) -> None:
    common = {"datalist": str(datalist), **ldm.TINY_AE, "max_epochs": 1}
    workflow("oct_ldm", "train_autoencoder.json", "train", tmp_path, **common, **ldm.AE_TRAIN)
    assert "autoencoder.pt" in _files(tmp_path / "models")
    workflow("oct_ldm", "train.json", "train", tmp_path, **common, **ldm.TINY_UNET, **ldm.DIFF_TRAIN)
    assert {"model.pt", "latent.json", "diffusion.json"} <= set(_files(tmp_path / "models"))
    sampling = {**ldm.TINY_AE, **ldm.TINY_UNET, "num_inference_steps": 2, "num_images_per_class": 1}
    workflow("oct_ldm", "inference.json", "infer", tmp_path, **sampling)
    _assert_one_png_per_class(tmp_path / "synthetic")


def test_oct_classifier_trains_an_epoch_then_classifies_the_test_split(datalist: Path, tmp_path: Path) -> None:
    net = {**classifier.TINY, "class_names": CLASSES, "datalist": str(datalist)}
    workflow("oct_classifier", "train.json", "train", tmp_path, **net, **classifier.TRAIN, max_epochs=1)
    assert "model.pt" in _files(tmp_path / "models")
    workflow("oct_classifier", "inference.json", "infer", tmp_path, **net)
    written = _files(tmp_path / "predictions")
    assert written, "inference wrote no predictions"
    text = "\n".join((tmp_path / "predictions" / f).read_text() for f in written if f.endswith((".csv", ".json")))
    test = json.loads(datalist.read_text())["test"]
    assert all(Path(it["image"]).name in text for it in test) and len(test) == 8, written


def test_oct_context_restoration_trains_an_epoch_then_restores_held_out_images(datalist: Path, tmp_path: Path) -> None:
    settings = {**restoration.TINY, **restoration.CORRUPTION, "datalist": str(datalist)}
    workflow("oct_context_restoration", "train.json", "train", tmp_path, **settings, max_epochs=1)
    assert "model.pt" in _files(tmp_path / "models")
    workflow("oct_context_restoration", "inference.json", "infer", tmp_path, **settings)
    assert _files(tmp_path / "restoration"), "inference wrote nothing"


def test_oct_synthesis_eval_runs_its_per_image_inference(datalist: Path, tmp_path: Path) -> None:
    """The evaluation bundle trains nothing of its own: its inference config runs the per-image QA (anatomy, the
    shipped classifier's agreement, the distance to the nearest real training image) on each image."""
    bundle = REPO / "bundles" / "oct_synthesis_eval"
    data = json.loads(datalist.read_text())
    synthetic = tmp_path / "synthetic"  # stand-ins as a 64 x 128 generator writes them; one is a training image
    for it in [data["training"][0], *data["test"]]:
        generator_output(datalist.parent / it["image"], synthetic / it["class_name"] / f"{Path(it['image']).stem}.png")
    workflow(
        "oct_synthesis_eval",
        "inference.json",
        "infer",
        bundle,  # its shipped feature extractor; everything it writes goes to tmp_path
        images=str(synthetic),
        real_datalist=str(datalist),
        output_dir=str(tmp_path / "qa"),
        anatomy_profile="spectralis",
        image_size=[64, 128],
        progress=False,
    )
    assert {"qa.csv", "qa.json", "qa_summary.json"} <= set(_files(tmp_path / "qa"))
    table = json.loads((tmp_path / "qa" / "qa.json").read_text())
    rows = {Path(r["image"]).stem: r for r in table["images"]}
    assert len(rows) == 1 + len(data["test"])
    for row in rows.values():
        assert row["error"] is None and row["predicted"] in CLASSES and 0 <= row["confidence"] <= 1
    copy = rows[Path(data["training"][0]["image"]).stem]
    assert copy["memorised"] is True and copy["passed"] is False
    summary = table["summary"]
    assert summary["real"]["n"] == len(data["validation"]) and summary["n_memorised"] >= 1
