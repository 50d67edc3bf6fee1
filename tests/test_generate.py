"""Generate from Python in one call (``medicraft_monai.generate``) and from the command line (``medicraft generate``).

The generator is oct_ddpm trained one tiny epoch on real OCT2017 B-scans and exported to a bundle folder
(``_generators.py``). The same seeds must give the images ``medicraft multiply`` writes, bit for bit; the bundle may
be given as a folder, a packed release archive or a shipped bundle's name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_oct_ddpm as ddpm
import torch
from _generators import CLASSES, IMAGE_SIZE, tiny_generator_bundle
from monai.data import MetaTensor

import medicraft_monai
from medicraft_monai.bundles import bundle_cache_dir
from medicraft_monai.data import OCTDataError, read_bscan
from medicraft_monai.engines.records import GeneratorError
from medicraft_monai.networks.release import pack_bundle
from medicraft_monai.synthesis import multiply
from medicraft_monai.synthesis.plan import image_seed
from medicraft_monai.synthesis.writers import to_uint
from medicraft_monai.utils import file_sha256

REPO = Path(__file__).resolve().parents[1]
datalist = ddpm.datalist  # the fixture: 2 training and 1 validation real B-scan per OCT2017 class
STEPS = 3


@pytest.fixture(scope="module")
def bundle(datalist: Path, tmp_path_factory) -> Path:
    return tiny_generator_bundle(tmp_path_factory.mktemp("generators") / "tiny_oct_ddpm", datalist)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch) -> None:
    """Archives unpack into the test's own cache folder, not the user's."""
    monkeypatch.setenv("MEDICRAFT_CACHE", str(tmp_path / "cache"))


def medicraft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medicraft_monai.cli", *args], capture_output=True, text=True, timeout=300
    )


def pixels(path: Path) -> np.ndarray:
    return read_bscan(path)[0]


def test_generate_returns_metatensors_with_provenance_and_the_images_multiply_writes(
    bundle: Path, datalist: Path, tmp_path: Path
) -> None:
    images = medicraft_monai.generate(bundle, class_name="DME", num_samples=3, seed=11, steps=STEPS, device="cpu")
    assert len(images) == 3 and all(isinstance(im, MetaTensor) for im in images)
    assert all(im.shape == (1, *IMAGE_SIZE) and im.dtype == torch.float32 for im in images)
    assert all(0.0 <= float(im.min()) and float(im.max()) <= 1.0 for im in images)
    meta = images[1].meta
    assert meta["class_name"] == "DME" and meta["label"] == CLASSES.index("DME") and meta["synthetic"] is True
    assert meta["seed"] == image_seed(11, "DME", 1) and meta["job_seed"] == 11 and meta["index"] == 1
    assert meta["model_sha256"] == file_sha256(bundle / "models" / "model.pt") and meta["steps"] == STEPS
    assert meta["bundle"] == bundle.name and meta["filename_or_obj"].startswith("synthetic_DME_000001_s")

    # medicraft multiply with the same seed, steps and class: the same images, in the same files
    out = tmp_path / "multiplied"
    result = multiply(
        datalist, out, bundle, target={"DME": 3}, seed=11, num_inference_steps=STEPS, device="cpu", progress=False
    )
    records = [json.loads(line) for line in Path(result["manifest"]).read_text().splitlines()]
    assert [r["seed"] for r in records] == [im.meta["seed"] for im in images]
    for image, record in zip(images, records):
        assert Path(record["path"]).name == image.meta["filename_or_obj"]
        assert np.array_equal(pixels(out / record["path"]), to_uint(image.numpy()[0], 8))

    # the same call again gives the same tensors; another seed other images
    again = medicraft_monai.generate(bundle, class_name="DME", num_samples=3, seed=11, steps=STEPS, device="cpu")
    assert all(torch.equal(a.as_tensor(), b.as_tensor()) for a, b in zip(images, again))
    other = medicraft_monai.generate(bundle, class_name="DME", num_samples=1, seed=12, steps=STEPS, device="cpu")
    assert not torch.equal(other[0].as_tensor(), images[0].as_tensor())


def test_generate_to_a_folder_writes_multiply_files_a_datalist_and_resumes(
    bundle: Path, datalist: Path, tmp_path: Path
) -> None:
    out = tmp_path / "generated"
    files = medicraft_monai.generate(
        bundle, class_name=["CNV", "NORMAL"], num_samples=2, seed=5, steps=STEPS, output_dir=out, device="cpu"
    )
    assert [f.parent.name for f in files] == ["CNV", "CNV", "NORMAL", "NORMAL"] and all(f.is_file() for f in files)
    reference = tmp_path / "multiplied"
    multiply(
        datalist,
        reference,
        bundle,
        target={"CNV": 2, "NORMAL": 2},
        seed=5,
        num_inference_steps=STEPS,
        device="cpu",
        progress=False,
    )
    # byte for byte: the same pixels and the same provenance in each file
    assert [file_sha256(f) for f in files] == [file_sha256(reference / f.relative_to(out)) for f in files]
    synthetic = json.loads((out / "datalist_synthetic.json").read_text())
    assert [it["label"] for it in synthetic["training"]] == [0, 0, 3, 3] and synthetic["labels"]["1"] == "DME"
    assert all(it["synthetic"] for it in synthetic["training"]) and synthetic["synthetic"]["steps"] == STEPS
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4

    stamps = [f.stat().st_mtime_ns for f in files]
    again = medicraft_monai.generate(
        bundle, class_name=["CNV", "NORMAL"], num_samples=2, seed=5, steps=STEPS, output_dir=out, device="cpu"
    )
    assert again == files and [f.stat().st_mtime_ns for f in files] == stamps, "a rerun samples nothing again"
    with pytest.raises(OCTDataError, match="different job"):
        medicraft_monai.generate(bundle, class_name="CNV", num_samples=1, seed=6, steps=STEPS, output_dir=out)


def test_generate_from_a_packed_archive_unpacks_it_once(bundle: Path, tmp_path: Path) -> None:
    archive = pack_bundle(bundle, tmp_path / "release")["archive"]
    from_folder = medicraft_monai.generate(bundle, class_name="DRUSEN", num_samples=2, seed=1, steps=STEPS)
    from_archive = medicraft_monai.generate(archive, class_name="DRUSEN", num_samples=2, seed=1, steps=STEPS)
    assert all(torch.equal(a.as_tensor(), b.as_tensor()) for a, b in zip(from_folder, from_archive))
    unpacked = sorted(bundle_cache_dir().iterdir())
    assert len(unpacked) == 1 and (unpacked[0] / bundle.name / "models" / "model.pt").is_file()
    medicraft_monai.generate(archive, class_name="DRUSEN", num_samples=1, seed=1, steps=STEPS)
    assert sorted(bundle_cache_dir().iterdir()) == unpacked, "the second call reuses the unpacked bundle"


def test_generate_names_the_problem(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(GeneratorError, match=r"unknown class 'melanoma'; this generator knows \['CNV', 'DME'"):
        medicraft_monai.generate(bundle, class_name="melanoma")
    with pytest.raises(GeneratorError, match="no_such_bundle"):
        medicraft_monai.generate("no_such_bundle")
    with pytest.raises(GeneratorError, match=f"{tmp_path / 'none.zip'}: no such bundle folder or archive"):
        medicraft_monai.generate(tmp_path / "none.zip")
    (tmp_path / "notes.zip").write_text("not an archive")
    with pytest.raises(GeneratorError, match=f"{tmp_path / 'notes.zip'}: not a bundle archive"):
        medicraft_monai.generate(tmp_path / "notes.zip")
    with pytest.raises(ValueError, match="num_samples must be a whole number >= 0"):
        medicraft_monai.generate(bundle, num_samples=-1)
    no_weights = Path(shutil.copytree(bundle, tmp_path / "no_weights", ignore=shutil.ignore_patterns("model.pt")))
    with pytest.raises(GeneratorError, match="model.pt"):  # a bundle folder whose weights are not there
        medicraft_monai.generate(no_weights, class_name="CNV")


def test_medicraft_generate_writes_what_the_python_call_writes(bundle: Path, tmp_path: Path) -> None:
    python = medicraft_monai.generate(
        bundle, class_name="CNV", num_samples=2, seed=3, steps=STEPS, output_dir=tmp_path / "py", device="cpu"
    )
    done = medicraft(
        "generate", str(bundle), str(tmp_path / "cli"), "--class_name", "CNV", "--num_samples", "2", "--seed", "3",
        "--steps", str(STEPS), "--device", "cpu", "--noprogress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 synthetic image(s)" in done.stdout
    assert [file_sha256(tmp_path / "cli" / f.relative_to(tmp_path / "py")) for f in python] == [
        file_sha256(f) for f in python
    ]
    wrong = medicraft("generate", str(bundle), str(tmp_path / "x"), "--class_name", "melanoma")
    assert wrong.returncode == 2 and "unknown class 'melanoma'" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not (tmp_path / "x").exists(), "nothing is written before the class is checked"


def test_the_shipped_oct_ldm_generates_out_of_the_box() -> None:
    """The trained oct_ldm shipped in bundles/ (weights, autoencoder, latent.json) by its name alone."""
    root = REPO / "bundles" / "oct_ldm"
    classes = json.loads((root / "configs" / "common.json").read_text())["class_names"]
    images = medicraft_monai.generate("oct_ldm", class_name=classes[-1], num_samples=2, seed=0, steps=4, device="cpu")
    size = json.loads((root / "configs" / "common.json").read_text())["image_size"]
    assert [im.shape for im in images] == [(1, *size)] * 2 and all(0 <= im.min() <= im.max() <= 1 for im in images)
    assert all(float(im.std()) > 0.02 for im in images), "decoded B-scans, not a flat image"
    assert not torch.equal(images[0].as_tensor(), images[1].as_tensor())
    meta = images[0].meta
    assert meta["bundle"] == "oct_ldm" and meta["class_name"] == classes[-1] and meta["steps"] == 4
    assert meta["model_sha256"] == file_sha256(root / "models" / "model.pt")
    assert meta["autoencoder_sha256"] == file_sha256(root / "models" / "autoencoder.pt")
