"""Release archives of a bundle (``medicraft bundle pack``), installed with MONAI's own ``monai.bundle.download``.

The archive is packed from a copy of the classifier bundle holding weights of its own network and the clutter a run
leaves (logs, training checkpoints, outputs, ``__pycache__``); MONAI's ``download(url=file://...)`` installs it into
an empty folder, the checksum of ``model_info.json`` is checked with MONAI's ``check_hash``, and the installed bundle
classifies real OCT B-scans through ``monai.bundle.ConfigWorkflow`` with no other change than the data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import test_oct_ddpm as ddpm
import test_oct_ldm as ldm
import torch
from _generators import train_tiny_ddpm
from monai.apps.utils import check_hash
from monai.bundle import ConfigWorkflow, download
from test_bundle_metadata import SCHEMA
from test_zoo_smoke import CLASSES, workflow

from medicraft_monai.bundles import config_files
from medicraft_monai.data import build_datalist, write_datalist
from medicraft_monai.networks import bundle_parser, verify_bundle
from medicraft_monai.networks.release import export_bundle, pack_bundle, parse_overrides

REPO = Path(__file__).resolve().parents[1]
datalist = ddpm.datalist  # the fixture: 2 training and 1 validation real B-scan per OCT2017 class
pytestmark = [
    pytest.mark.filterwarnings("ignore:parsing config_file"),  # monai.bundle's trust notice
    pytest.mark.filterwarnings("ignore:No hash value provided"),  # download(url=...) takes no hash: checked after
]


def medicraft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medicraft_monai.cli", *args], capture_output=True, text=True)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A copy of oct_classifier with weights of its own network for the 4 OCT2017 classes (the classes come from
    the datalist it classifies), and what training and a run leave."""
    root = Path(shutil.copytree(REPO / "bundles" / "oct_classifier", tmp_path / "src" / "oct_classifier"))
    torch.manual_seed(0)
    network = bundle_parser(root, overrides={"class_names": ["CNV", "DME", "DRUSEN", "NORMAL"]}).get_parsed_content(
        "network_def"
    )
    torch.save(network.state_dict(), root / "models" / "model.pt")
    clutter = ["logs/events.out.tfevents.1", "models/training/checkpoint_iteration=4.pt", "predictions/a.csv"]
    clutter += ["models/checkpoint_final_iteration=4.pt", "scripts/__pycache__/x.pyc", "configs/.inference.json.swp"]
    for rel in clutter:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"not for release")
    return root


def test_pack_writes_the_zoo_archive_and_its_model_info_entry(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "release"
    (out / "model_info.json").parent.mkdir()
    (out / "model_info.json").write_text(json.dumps({"other_v1.0.0": {"checksum": "x", "source": "y"}}))
    packed = pack_bundle(bundle, out, source="https://example.org/oct_classifier_v0.2.0.zip")
    version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    archive = out / f"oct_classifier_v{version}.zip"
    assert packed["archive"] == archive and archive.is_file()
    names = zipfile.ZipFile(archive).namelist()
    assert all(n.startswith("oct_classifier/") for n in names), names
    wanted = {"LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md", "models/model.pt"}
    assert wanted <= {n.removeprefix("oct_classifier/") for n in names}
    for unwanted in ("logs/", "training/", "predictions/", "checkpoint_", "__pycache__", ".swp", ".gitkeep"):
        assert not [n for n in names if unwanted in n], (unwanted, names)
    info = json.loads((out / "model_info.json").read_text())
    assert info[f"oct_classifier_v{version}"] == {
        "checksum": packed["checksum"],
        "source": "https://example.org/oct_classifier_v0.2.0.zip",
    }
    assert "other_v1.0.0" in info, "the other entries of model_info.json are kept"
    assert check_hash(archive, packed["checksum"], "md5")
    # the same files give the same bytes: a repacked archive has the same checksum
    assert pack_bundle(bundle, tmp_path / "again")["checksum"] == packed["checksum"]


def test_pack_refuses_to_overwrite_an_archive_and_names_it(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "release"
    first = medicraft("bundle", "pack", str(bundle), "--output_dir", str(out))
    assert first.returncode == 0, first.stderr
    archive = next(out.glob("*.zip"))
    archive.write_bytes(b"a user's file")
    again = medicraft("bundle", "pack", str(bundle), "--output_dir", str(out))
    assert again.returncode == 2 and f"{archive}: exists already; give --overwrite" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr and archive.read_bytes() == b"a user's file"
    forced = medicraft("bundle", "pack", str(bundle), "--output_dir", str(out), "--overwrite")
    assert forced.returncode == 0 and zipfile.is_zipfile(archive), forced.stderr


def test_pack_checks_its_arguments_before_writing(bundle: Path, tmp_path: Path) -> None:
    inside = medicraft("bundle", "pack", str(bundle), "--output_dir", str(bundle / "release"))
    assert inside.returncode == 2 and "inside the bundle" in inside.stderr and not (bundle / "release").exists()
    out = tmp_path / "release"
    out.mkdir()
    (out / "model_info.json").write_text("{not json")
    bad = medicraft("bundle", "pack", str(bundle), "--output_dir", str(out))
    assert bad.returncode == 2 and f"{out / 'model_info.json'}: not a model_info JSON file" in bad.stderr
    assert not list(out.glob("*.zip")) and (out / "model_info.json").read_text() == "{not json"
    meta = bundle / "configs" / "metadata.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "version": ""}))
    no_version = medicraft("bundle", "pack", str(bundle), "--output_dir", str(tmp_path / "x"))
    assert no_version.returncode == 2 and f"{meta}: states no 'version'" in no_version.stderr
    assert not (tmp_path / "x").exists()


def test_monai_installs_the_archive_and_runs_its_inference(bundle: Path, tmp_path: Path, oct2017_dir: Path) -> None:
    packed = pack_bundle(bundle, tmp_path / "release")
    installed_dir = tmp_path / "installed"
    installed_dir.mkdir()
    # MONAI's own installer, its url source, a local file: nothing of medicraft_monai in the way
    download(name="oct_classifier", url=packed["archive"].as_uri(), bundle_dir=installed_dir, progress=False)
    installed = installed_dir / "oct_classifier"
    assert check_hash(installed_dir / "oct_classifier.zip", packed["checksum"], "md5")
    assert sorted(p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file()) == sorted(
        packed["files"]
    )
    assert (installed / "models" / "model.pt").read_bytes() == (bundle / "models" / "model.pt").read_bytes()

    full = build_datalist(oct2017_dir, check_images=False)
    tiny = {**{k: v for k, v in full.items() if k not in ("training", "validation")}, "test": full["test"][:2]}
    tiny_list = write_datalist(tmp_path / "datalist.json", tiny)
    flow = ConfigWorkflow(
        config_file=[str(p) for p in config_files(installed, "inference.json")],
        meta_file=str(installed / "configs" / "metadata.json"),
        logging_file=str(installed / "configs" / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(installed),
        datalist=str(tiny_list),
    )
    flow.initialize()
    flow.run()
    flow.finalize()
    written = [p for p in (installed / "predictions").rglob("*") if p.is_file()]
    text = "\n".join(p.read_text() for p in written if p.suffix in (".csv", ".json"))
    assert all(Path(it["image"]).name in text for it in tiny["test"]), written


# --------------------------------------------------------------------------------------------------------------------
# a trained model is a bundle: medicraft bundle export
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ddpm(datalist: Path, tmp_path_factory) -> Path:
    """oct_ddpm trained one tiny epoch on real B-scans with network overrides (as the demo trains it)."""
    return train_tiny_ddpm(tmp_path_factory.mktemp("trained"), datalist)


def test_export_makes_a_bundle_that_runs_with_no_overrides(tiny_ddpm: Path, datalist: Path, tmp_path: Path) -> None:
    new = tmp_path / "my_oct_ddpm"
    made = medicraft(
        "bundle", "export", "--from", "oct_ddpm", "--ckpt_path", str(tiny_ddpm), "--output_dir", str(new),
        "--override", json.dumps(ddpm.TINY_NET), "--version", "1.0.0",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    common = json.loads((new / "configs" / "common.json").read_text())
    assert {k: common[k] for k in ddpm.TINY_NET} == ddpm.TINY_NET
    assert (new / "models" / "model.pt").read_bytes() == tiny_ddpm.read_bytes()
    assert json.loads((new / "models" / "diffusion.json").read_text()) == json.loads(
        (tiny_ddpm.parent / "diffusion.json").read_text()
    )
    meta = json.loads((new / "configs" / "metadata.json").read_text())
    assert meta["version"] == "1.0.0" and "exported from oct_ddpm" in meta["changelog"]["1.0.0"]
    labels = meta["network_data_format"]["inputs"]["class_labels"]["channel_def"]
    assert [labels[str(i)] for i in range(4)] == CLASSES and "null" in labels["4"]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == ddpm.TINY_NET["image_size"]
    card = (new / "docs" / "README.md").read_text()
    for heading in ("## Intended use", "## Data", "## Training", "## How to run", "## Limitations", "## Changelog"):
        assert heading in card, heading
    # the model zoo's checks hold for it: the metadata tells the truth about the exported configs and weights
    checks = {c.name: c for c in verify_bundle(new, schema=SCHEMA)}
    assert all(c.status == "pass" for c in checks.values()), checks
    assert "diffusion.json matches the config" in checks["weights"].detail

    # python -m monai.bundle run, with the bundle's own configs and nothing else
    configs = [str(new / "configs" / "common.json"), str(new / "configs" / "inference.json")]
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(new), "--config_file", repr(configs)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.parent.name for p in (new / "synthetic").rglob("*.png")) == sorted(CLASSES * 4)
    # medicraft multiply --bundle_root: the user's options only
    out = tmp_path / "multiplied"
    mult = medicraft(
        "multiply", str(datalist), str(out), "--bundle_root", str(new), "--target", "multiply:2",
        "--num_inference_steps", "2", "--device", "cpu", "--noprogress",
    )  # fmt: skip
    assert mult.returncode == 0, mult.stderr[-3000:]
    synthetic = json.loads((out / "datalist_synthetic.json").read_text())["training"]
    real = json.loads(datalist.read_text())["training"]
    assert sorted({it["label"] for it in synthetic}) == [0, 1, 2, 3] and len(synthetic) == len(real)  # doubled

    # weights recorded with other classes than the config's fail the weights check, naming diffusion.json
    record = json.loads((new / "models" / "diffusion.json").read_text())
    (new / "models" / "diffusion.json").write_text(json.dumps({**record, "class_names": CLASSES[::-1]}))
    weights = {c.name: c for c in verify_bundle(new, mode="full")}["weights"]
    assert weights.status == "fail" and "diffusion.json" in weights.detail and "class_names" in weights.detail


def test_export_checks_its_arguments_before_writing(tiny_ddpm: Path, tmp_path: Path) -> None:
    new = tmp_path / "my_oct_ddpm"
    base = ["bundle", "export", "--from", "oct_ddpm", "--ckpt_path", str(tiny_ddpm), "--output_dir", str(new)]
    unknown = medicraft(*base, "--override", json.dumps({**ddpm.TINY_NET, "learning_rate": 0.1}))
    assert unknown.returncode == 2 and "common.json: defines no learning_rate" in unknown.stderr, unknown.stderr
    partial = medicraft(*base, "--channels", "[8,16]")  # the other settings it was trained with are missing
    assert partial.returncode == 2 and "do not build network_def" in partial.stderr, partial.stderr
    misfit = medicraft(*base, "--override", json.dumps({**ddpm.TINY_NET, "channels": [16, 16]}))
    assert misfit.returncode == 2 and str(tiny_ddpm) in misfit.stderr and "does not fit" in misfit.stderr
    assert "Traceback" not in partial.stderr + misfit.stderr
    missing = medicraft(*base[:5], str(tmp_path / "none.pt"), *base[6:])
    assert missing.returncode == 2 and "none.pt" in missing.stderr
    assert not new.exists(), "nothing is written before the arguments are checked"
    new.mkdir()
    (new / "notes.txt").write_text("a user's file")
    taken = medicraft(*base, "--override", json.dumps(ddpm.TINY_NET), "--overwrite")
    assert taken.returncode == 2 and "not written by an export" in taken.stderr
    assert (new / "notes.txt").read_text() == "a user's file"
    (new / "notes.txt").unlink()
    assert medicraft(*base, "--override", json.dumps(ddpm.TINY_NET)).returncode == 0
    again = medicraft(*base, "--override", json.dumps(ddpm.TINY_NET))
    assert again.returncode == 2 and "give --overwrite" in again.stderr
    assert medicraft(*base, "--override", json.dumps(ddpm.TINY_NET), "--overwrite").returncode == 0


def test_override_texts_are_read_as_values() -> None:
    parsed = parse_overrides(["channels=[8,16]", "use_flash_attention=false", "class_names=['A','B']", "x=text"])
    assert parsed == {"channels": [8, 16], "use_flash_attention": False, "class_names": ["A", "B"], "x": "text"}
    with pytest.raises(ValueError, match="must be key=value"):
        parse_overrides("channels")


def test_export_of_a_latent_model_carries_the_autoencoder_and_latent_shapes(datalist: Path, tmp_path: Path) -> None:
    trained = tmp_path / "trained"
    common = {"datalist": str(datalist), **ldm.TINY_AE, "max_epochs": 1}
    workflow("oct_ldm", "train_autoencoder.json", "train", trained, **common, **ldm.AE_TRAIN)
    workflow("oct_ldm", "train.json", "train", trained, **common, **ldm.TINY_UNET, **ldm.DIFF_TRAIN)
    new = tmp_path / "my_oct_ldm"
    made = export_bundle(
        REPO / "bundles" / "oct_ldm", trained / "models" / "model.pt", new, {**ldm.TINY_AE, **ldm.TINY_UNET}
    )
    assert {"models/model.pt", "models/autoencoder.pt", "models/latent.json", "models/diffusion.json"} <= set(
        made["files"]
    )
    image = json.loads((new / "configs" / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    factor = 2 ** (len(ldm.TINY_AE["autoencoder_channels"]) - 1)
    assert image["spatial_shape"] == [s // factor for s in ldm.TINY_AE["image_size"]]
    assert image["num_channels"] == len(image["channel_def"]) == ldm.TINY_AE["latent_channels"]
    checks = {c.name: c for c in verify_bundle(new, schema=SCHEMA)}
    assert all(c.status == "pass" for c in checks.values()), checks
    assert "models/autoencoder.pt -> autoencoder_def" in checks["weights"].detail
    flow = ConfigWorkflow(  # inference from the exported bundle's own configs, no overrides
        config_file=[str(p) for p in config_files(new, "inference.json")],
        meta_file=str(new / "configs" / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(new),
    )
    flow.initialize()
    flow.run()
    flow.finalize()
    assert sorted({p.parent.name for p in (new / "synthetic").rglob("*.png")}) == CLASSES
