"""Dataset multiplication: plans, every output format, manifests and datalists, resume after kill -9, torchrun
sharding, the bundle config, and bad input rejected before any work.

A tiny generator bundle (16x32 images, a two-level UNet with random weights) is built in a temporary folder, so
these tests do not depend on a trained model. Its class order is the reverse of the real datalist's, to prove that
labels follow the datalist and classes are passed to the generator by name.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from _subprocess import run_group
from monai.networks.nets import DiffusionModelUNet

from medicraft_monai.data import OCTDataError, UnknownLabelError, load_datalist, read_bscan, write_datalist
from medicraft_monai.engines.records import GeneratorError
from medicraft_monai.networks import randomise_zero_weights
from medicraft_monai.synthesis.generator import DiffusionGenerator
from medicraft_monai.synthesis.job import MANIFEST_FIELDS
from medicraft_monai.synthesis.multiply import multiply
from medicraft_monai.synthesis.plan import image_seed, parse_target, plan_counts, plan_tasks
from medicraft_monai.synthesis.writers import to_uint

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]  # the datalist's label order
GEN_CLASSES = list(reversed(CLASSES))  # the generator's (different on purpose)
TRAIN = {"CNV": 5, "DME": 3, "DRUSEN": 2, "NORMAL": 1}  # imbalanced training split
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
NAME = re.compile(r"^synthetic_(?P<cls>[A-Za-z0-9_-]+)_(?P<index>\d{6})_s(?P<seed>\d+)\.(png|nii\.gz|dcm)$")


def tiny_unet(num_classes: int, channels: tuple[int, int] = (8, 16)) -> DiffusionModelUNet:
    torch.manual_seed(0)
    net = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=channels,
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=8,
        num_class_embeds=num_classes + 1,
    )
    return randomise_zero_weights(net, std=0.1)  # MONAI zero-initialises output convolutions: outputs must vary


def make_tiny_bundle(root: Path, class_names: list[str] = GEN_CLASSES) -> Path:
    """A generator bundle following the DiffusionGenerator contract, with random weights and multiply.json."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    config = {
        "imports": ["$import torch", "$import medicraft_monai.inferers"],
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "class_names": class_names,
        "image_size": [16, 32],
        "in_channels": 1,
        "sampler": "ddim",
        "num_inference_steps": 3,
        "guidance_scale": 1.0,
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "network_def": {
            "_target_": "DiffusionModelUNet",
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 1,
            "channels": [8, 16],
            "attention_levels": [False, False],
            "num_res_blocks": 1,
            "norm_num_groups": 8,
            "num_class_embeds": "$len(@class_names) + 1",
        },
        "sampling_scheduler": {
            "_target_": "medicraft_monai.schedulers.make_scheduler",
            "sampler": "@sampler",
            "num_train_timesteps": 1000,
        },
        "inferer": {
            "_target_": "medicraft_monai.inferers.ClassConditionedDiffusionInferer",
            "scheduler": "@sampling_scheduler",
            "null_class": "$len(@class_names)",
        },
    }
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    shutil.copy(REPO / "bundles" / "oct_ddpm" / "configs" / "multiply.json", root / "configs" / "multiply.json")
    torch.save(tiny_unet(len(class_names)).state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle"))


@pytest.fixture(scope="module")
def gen(bundle: Path) -> DiffusionGenerator:
    return DiffusionGenerator.from_bundle(bundle, device="cpu")


def real_item(row: dict[str, str], root: Path) -> dict:
    return {
        "image": str(root / row["file"]),
        "label": CLASSES.index(row["label"]),
        "class_name": row["label"],
        "patient_id": row["patient_id"],
        "exam_id": row["patient_id"],
        "plane_angle": None,
        "laterality": "",
        "frame": 0,
        "synthetic": False,
        "sha256": row["sha256"],
    }


@pytest.fixture(scope="module")
def real_datalist(tmp_path_factory, oct2017_dir: Path, oct2017_manifest, real_bscan_paths) -> Path:
    """An imbalanced datalist of real B-scans: training 5/3/2/1 (CNV/DME/DRUSEN/NORMAL), validation and test real."""
    rows = {r["file"]: r for r in oct2017_manifest}
    by_class: dict[str, list[dict]] = {c: [] for c in CLASSES}
    for p in real_bscan_paths:
        row = rows[p.relative_to(oct2017_dir).as_posix()]
        by_class[row["label"]].append(row)
    datalist = {
        "name": "oct2017-imbalanced",
        "labels": {str(i): c for i, c in enumerate(CLASSES)},
        "num_classes": len(CLASSES),
        "training": [],
        "validation": [],
        "test": [],
    }
    for c in CLASSES:  # the first image of each class comes first: DRUSEN and NORMAL share patient 1001666 there
        n = TRAIN[c]
        datalist["training"] += [real_item(r, oct2017_dir) for r in by_class[c][:n]]
        datalist["validation"] += [real_item(r, oct2017_dir) for r in by_class[c][n : n + 1]]
        datalist["test"] += [real_item(r, oct2017_dir) for r in by_class[c][n + 1 : n + 2]]
    path = tmp_path_factory.mktemp("real") / "datalist.json"
    write_datalist(path, datalist)
    load_datalist(path)  # a valid, leak-free datalist
    return path


def visible_files(out: Path) -> list[Path]:
    return sorted(p for p in (out / "images").rglob("*") if p.is_file() and not p.name.startswith("."))


def hidden_files(out: Path) -> list[Path]:
    return sorted(p for p in (out / "images").rglob(".*") if p.is_file())


def read_manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]


def expected_pixels(
    gen: DiffusionGenerator, records: list[dict], steps: int, batch_size: int, bits: int = 8
) -> dict[str, np.ndarray]:
    """What each manifest record's file must hold: the generator's image for that class and seed, sampled (as
    multiply does) in batches of ``batch_size``, whatever the other images in the batch."""
    out = {}
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        padded = batch + [batch[-1]] * (batch_size - len(batch))
        images = gen.generate([r["class_name"] for r in padded], [r["seed"] for r in padded], steps)
        out.update({r["path"]: to_uint(img[0], bits) for r, img in zip(batch, images)})
    return out


def assert_pixels_match(out: Path, expected: dict[str, np.ndarray]) -> None:
    for rel, want in expected.items():
        got, _ = read_bscan(out / rel)
        assert got.dtype == want.dtype and got.shape == want.shape, rel
        assert np.array_equal(got, want), rel


# ----------------------------------------------------------------------------------------------------------------
# plans
# ----------------------------------------------------------------------------------------------------------------
def test_plan_counts_for_every_target(real_datalist: Path) -> None:
    dl = load_datalist(real_datalist)
    assert plan_counts(dl, "balance") == {"CNV": 0, "DME": 2, "DRUSEN": 3, "NORMAL": 4}
    assert plan_counts(dl, "multiply:2") == {"CNV": 5, "DME": 3, "DRUSEN": 2, "NORMAL": 1}
    assert plan_counts(dl, 2) == plan_counts(dl, "multiply=2") == plan_counts(dl, "x2")
    # 1.5 x: 7.5 -> 8, 4.5 -> 5, 3 -> 3, 1.5 -> 2 (half up)
    assert plan_counts(dl, "multiply:1.5") == {"CNV": 3, "DME": 2, "DRUSEN": 1, "NORMAL": 1}
    assert plan_counts(dl, 1) == dict.fromkeys(CLASSES, 0)
    assert plan_counts(dl, {"NORMAL": 7}) == {"CNV": 0, "DME": 0, "DRUSEN": 0, "NORMAL": 7}
    assert plan_counts(dl, '{"DME": 2, "NORMAL": 0}') == {"CNV": 0, "DME": 2, "DRUSEN": 0, "NORMAL": 0}
    # another split counts that split's images: validation has one per class, already balanced
    assert plan_counts(dl, "balance", split="validation") == dict.fromkeys(CLASSES, 0)
    # synthetic items in the datalist are not counted as real images
    with_synth = {**dl, "training": dl["training"] + [{**dl["training"][-1], "synthetic": True, "image": "x.png"}] * 3}
    assert plan_counts(with_synth, "balance") == plan_counts(dl, "balance")
    # the generator's class order does not matter, only its names
    assert plan_counts(dl, "balance", class_names=GEN_CLASSES) == plan_counts(dl, "balance")
    assert parse_target("multiply:2.5").describe() == "multiply:2.5"


@pytest.mark.parametrize(
    ("target", "error", "words"),
    [
        ({"MELANOMA": 3}, UnknownLabelError, "unknown class name"),
        ({"DME": -2}, ValueError, "negative"),
        ({"DME": 2.5}, ValueError, "whole number"),
        ("multiply:0.5", ValueError, ">= 1"),
        (0, ValueError, ">= 1"),
        ("triple", ValueError, "unknown target"),
        ('{"DME": 3', ValueError, "not valid JSON"),
    ],
)
def test_plan_counts_rejects_bad_targets(real_datalist: Path, target, error, words: str) -> None:
    with pytest.raises(error, match=words):
        plan_counts(load_datalist(real_datalist), target)


def test_plan_counts_rejects_classes_the_generator_does_not_know(real_datalist: Path) -> None:
    dl = load_datalist(real_datalist)
    with pytest.raises(UnknownLabelError, match=r"generator does not know class\(es\) \['NORMAL'\]"):
        plan_counts(dl, "balance", class_names=["CNV", "DME", "DRUSEN"])
    with pytest.raises(UnknownLabelError, match="generator does not know"):
        plan_counts(dl, {"NORMAL": 2}, class_names=["CNV", "DME", "DRUSEN"])
    # a class that needs no images may be missing from the generator
    assert plan_counts(dl, "balance", class_names=["DME", "DRUSEN", "NORMAL"])["CNV"] == 0


def test_tasks_have_stable_distinct_seeds_and_synthetic_names() -> None:
    tasks = plan_tasks({"CNV": 3, "DME": 2}, CLASSES, base_seed=7)
    assert [(t.class_name, t.label, t.index) for t in tasks] == [
        ("CNV", 0, 0),
        ("CNV", 0, 1),
        ("CNV", 0, 2),
        ("DME", 1, 0),
        ("DME", 1, 1),
    ]
    assert [t.seed for t in tasks] == [t.seed for t in plan_tasks({"CNV": 3, "DME": 2}, CLASSES, base_seed=7)]
    assert len({t.seed for t in tasks}) == 5
    assert tasks[0].seed == image_seed(7, "CNV", 0) != image_seed(8, "CNV", 0) != image_seed(7, "DME", 0)
    # a larger target keeps the first images' seeds (it only adds images)
    assert [t.seed for t in plan_tasks({"CNV": 5}, CLASSES, base_seed=7)][:3] == [t.seed for t in tasks[:3]]
    for t in tasks:
        m = NAME.match(Path(t.relpath).name)
        assert m and m["cls"] == t.class_name and int(m["index"]) == t.index and int(m["seed"]) == t.seed
        assert t.relpath.startswith(f"images/{t.class_name}/")


# ----------------------------------------------------------------------------------------------------------------
# a whole job
# ----------------------------------------------------------------------------------------------------------------
def test_balance_writes_images_manifest_datalists_and_counts(
    real_datalist: Path, bundle: Path, gen: DiffusionGenerator, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    result = multiply(real_datalist, out, bundle, target="balance", batch_size=4, device="cpu")
    plan = {"CNV": 0, "DME": 2, "DRUSEN": 3, "NORMAL": 4}
    assert result["planned"] == plan and result["total"] == 9 and result["generated"] == 9
    assert result["counts_before"] == TRAIN

    files = visible_files(out)
    assert Counter(p.parent.name for p in files) == {c: n for c, n in plan.items() if n}
    assert all(NAME.match(p.name) for p in files) and not hidden_files(out)

    records = read_manifest(out)
    assert sorted(r["path"] for r in records) == sorted(p.relative_to(out).as_posix() for p in files)
    for r in records:
        assert set(MANIFEST_FIELDS) <= set(r)
        assert r["model_sha256"] == gen.checksum and r["sampler"] == "ddim" and r["steps"] == 3
        assert r["guidance_scale"] == 1.0 and r["format"] == "png" and (r["height"], r["width"]) == (16, 32)
        assert r["label"] == CLASSES.index(r["class_name"])  # the datalist's order, not the generator's
        assert r["seed"] == image_seed(0, r["class_name"], r["index"])
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["path"] for row in rows] == [r["path"] for r in records]
    assert list(rows[0]) == list(MANIFEST_FIELDS) and rows[0]["model_sha256"] == gen.checksum

    # every file holds the generator's image for its class (asked by name) and seed, and says it is synthetic
    assert_pixels_match(out, expected_pixels(gen, records[::-1], 3, batch_size=4))
    pixels, meta = read_bscan(out / records[0]["path"])
    assert meta["synthetic"] is True
    prov = meta["provenance"]
    assert prov["seed"] == records[0]["seed"] and prov["class_name"] == records[0]["class_name"]
    assert prov["model_sha256"] == gen.checksum and prov["steps"] == 3 and prov["sampler"] == "ddim"

    real = load_datalist(real_datalist)
    synthetic = load_datalist(out / "datalist_synthetic.json")
    combined = load_datalist(out / "datalist_real_synthetic.json")  # leak-checked on load
    assert synthetic["labels"] == combined["labels"] == real["labels"]
    assert len(synthetic["training"]) == 9 and synthetic["validation"] == synthetic["test"] == []
    for item in synthetic["training"]:
        assert item["synthetic"] is True and Path(item["image"]).is_file()
        assert item["patient_id"].startswith("synthetic-") and item["label"] == CLASSES.index(item["class_name"])
    assert len({it["patient_id"] for it in synthetic["training"]}) == 9
    assert combined["validation"] == real["validation"] and combined["test"] == real["test"]
    assert combined["training"] == real["training"] + synthetic["training"]
    after = Counter(it["class_name"] for it in combined["training"])
    assert after == dict.fromkeys(CLASSES, 5)  # balanced

    counts = (out / "counts.txt").read_text()
    assert "before" in counts and "after" in counts and "NORMAL: +4" in counts
    assert counts in capsys.readouterr().out

    # the same job again: nothing to do, nothing changes
    before = {p: p.read_bytes() for p in files}
    again = multiply(real_datalist, out, bundle, target="balance", batch_size=4, device="cpu", progress=False)
    assert again["generated"] == 0 and again["skipped"] == 9
    assert {p: p.read_bytes() for p in visible_files(out)} == before
    assert read_manifest(out) == records

    # the same job in another folder gives the same images, byte for byte; another seed gives other images
    twin = multiply(real_datalist, tmp_path / "twin", bundle, batch_size=4, device="cpu", progress=False)
    assert twin["generated"] == 9
    assert {p.relative_to(tmp_path / "twin"): p.read_bytes() for p in visible_files(tmp_path / "twin")} == {
        p.relative_to(out): b for p, b in before.items()
    }
    other = multiply(real_datalist, tmp_path / "other", bundle, seed=1, device="cpu", progress=False)
    first = read_bscan(next(iter(visible_files(tmp_path / "other"))))[0]
    assert not any(np.array_equal(first, read_bscan(p)[0]) for p in files) and other["generated"] == 9

    # a larger target in the same folder only adds images
    more = multiply(real_datalist, out, bundle, target="multiply:2", device="cpu", progress=False)
    assert more["skipped"] == 2 + 2 + 1 and more["generated"] == 5 + 1
    assert len(visible_files(out)) == 9 + 5 + 1  # the 4th NORMAL image stays on disk, outside this plan
    assert len(read_manifest(out)) == 11


@pytest.mark.parametrize(("fmt", "bits"), [("png", 16), ("nifti", 8), ("dicom", 8), ("dicom", 16)])
def test_output_formats(
    real_datalist: Path, bundle: Path, gen: DiffusionGenerator, tmp_path: Path, fmt: str, bits: int
) -> None:
    out = tmp_path / "out"
    result = multiply(
        real_datalist,
        out,
        bundle,
        target={"NORMAL": 2, "DME": 1},
        fmt=fmt,
        bit_depth=bits,
        device="cpu",
        progress=False,
    )
    assert result["generated"] == 3
    suffix = {"png": ".png", "nifti": ".nii.gz", "dicom": ".dcm"}[fmt]
    files = visible_files(out)
    assert len(files) == 3 and all(p.name.endswith(suffix) and NAME.match(p.name) for p in files)
    records = read_manifest(out)
    assert {r["format"] for r in records} == {fmt} and {r["bit_depth"] for r in records} == {bits}
    assert_pixels_match(out, expected_pixels(gen, records, 3, batch_size=3, bits=bits))
    assert load_datalist(out / "datalist_real_synthetic.json")["numTraining"] == sum(TRAIN.values()) + 3

    if fmt == "nifti":
        import nibabel as nib

        img = nib.load(str(out / records[0]["path"]))
        assert img.header["descrip"].tobytes().startswith(b"SYNTHETIC")
        prov = json.loads(img.header.extensions[0].get_content())["medicraft_provenance"]
        assert prov["seed"] == records[0]["seed"] and prov["model_sha256"] == gen.checksum
    if fmt == "dicom":
        seen_uids = set()
        for r in records:
            ds = pydicom.dcmread(out / r["path"])
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.5.4"  # Ophthalmic Tomography Image Storage
            assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
            assert ds.SeriesDescription.startswith("SYNTHETIC") and r["class_name"] in ds.SeriesDescription
            assert str(ds.PatientName) == "SYNTHETIC" and ds.PatientIdentityRemoved == "YES"
            assert not ds.PatientBirthDate and ds.PatientID.startswith("SYN-")
            assert int(ds.NumberOfFrames) == 1 and (ds.Rows, ds.Columns) == (16, 32) and ds.BitsAllocated == bits
            prov = json.loads(ds.ImageComments)["medicraft_provenance"]
            assert prov["seed"] == r["seed"] and prov["class_name"] == r["class_name"]
            assert prov["model_sha256"] == gen.checksum and prov["guidance_scale"] == 1.0
            assert np.array_equal(ds.pixel_array, read_bscan(out / r["path"])[0])
            seen_uids.add(ds.SOPInstanceUID)
        assert len(seen_uids) == 3


# ----------------------------------------------------------------------------------------------------------------
# crash and resume
# ----------------------------------------------------------------------------------------------------------------
def test_killed_job_resumes_without_duplicates_or_partial_files(
    real_datalist: Path, bundle: Path, gen: DiffusionGenerator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    target = {"CNV": 10, "DME": 10, "DRUSEN": 10, "NORMAL": 10}
    steps, journal = 40, out / ".manifest_parts" / "part-w1-r0.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "medicraft_monai.synthesis.multiply",
        "--datalist",
        str(real_datalist),
        "--output_dir",
        str(out),
        "--bundle_root",
        str(bundle),
        "--target",
        json.dumps(target),
        "--num_inference_steps",
        str(steps),
        "--batch_size",
        "2",
        "--device",
        "cpu",
        "--progress",
        "False",
    ]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.is_file() and journal.read_bytes().count(b"\n") >= 4:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # kill -9 mid-job
    finally:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    done = visible_files(out)
    assert 4 <= len(done) < 40, "the job should have been killed mid-way"
    for p in done:  # a file under its final name is always complete
        assert read_bscan(p)[0].shape == (16, 32)

    # make the crash as bad as it can be: the last batch renamed but not journaled, a journal line cut short,
    # and a temporary file cut short
    lines = journal.read_text().splitlines(keepends=True)
    unjournaled = [json.loads(line)["path"] for line in lines[-2:]]
    journal.write_text("".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])
    leftover = out / "images" / "CNV" / f".{Path(plan_tasks(target, CLASSES)[9].relpath).name[:-4]}.tmp999.png"
    leftover.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert all((out / p).is_file() for p in unjournaled)

    result = multiply(
        real_datalist, out, bundle, target=target, num_inference_steps=steps, batch_size=2, device="cpu", progress=False
    )
    assert result["total"] == 40 and result["generated"] + result["skipped"] == 40
    assert result["skipped"] >= len(done) and result["recovered"] >= 2
    files = visible_files(out)
    assert Counter(p.parent.name for p in files) == dict.fromkeys(CLASSES, 10)
    assert not hidden_files(out) and not leftover.exists()
    records = read_manifest(out)
    assert len(records) == 40 and len({r["path"] for r in records}) == 40
    assert sorted(r["path"] for r in records) == sorted(p.relative_to(out).as_posix() for p in files)
    assert len({(r["class_name"], r["seed"]) for r in records}) == 40
    assert len(load_datalist(out / "datalist_synthetic.json")["training"]) == 40
    # every image, made before or after the crash, is the one its seed gives
    assert_pixels_match(out, expected_pixels(gen, records, steps, batch_size=2))


# ----------------------------------------------------------------------------------------------------------------
# sharding with torchrun
# ----------------------------------------------------------------------------------------------------------------
def test_torchrun_two_processes_shard_the_job(
    real_datalist: Path, bundle: Path, gen: DiffusionGenerator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "medicraft_monai.synthesis.multiply",
        "--datalist",
        str(real_datalist),
        "--output_dir",
        str(out),
        "--bundle_root",
        str(bundle),
        "--target",
        "multiply:2",
        "--batch_size",
        "2",
        "--device",
        "cpu",
        "--progress",
        "False",
    ]
    proc = run_group(cmd, 180, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])  # printed once, by rank 0
    assert summary["world_size"] == 2 and summary["total"] == 11 and summary["generated"] == 11

    records = read_manifest(out)
    assert len(records) == 11 and len({r["path"] for r in records}) == 11
    parts = sorted((out / ".manifest_parts").glob("*.jsonl"))
    assert [p.name for p in parts] == ["part-w2-r0.jsonl", "part-w2-r1.jsonl"]
    shards = [{json.loads(line)["path"] for line in p.read_text().splitlines()} for p in parts]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert shards[0] | shards[1] == {r["path"] for r in records}
    files = visible_files(out)
    assert sorted(p.relative_to(out).as_posix() for p in files) == sorted(r["path"] for r in records)
    # the same file names and images as one process makes
    single = {t.relpath: t.seed for t in plan_tasks(TRAIN, CLASSES, 0)}
    assert {r["path"]: r["seed"] for r in records} == single
    assert_pixels_match(out, expected_pixels(gen, records, 3, batch_size=2))
    combined = load_datalist(out / "datalist_real_synthetic.json")
    assert Counter(it["class_name"] for it in combined["training"]) == {c: 2 * n for c, n in TRAIN.items()}


# ----------------------------------------------------------------------------------------------------------------
# the bundle config
# ----------------------------------------------------------------------------------------------------------------
def test_bundle_config_runs_through_monai_bundle(real_datalist: Path, bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/multiply.json",
        "--bundle_root",
        str(bundle),
        "--datalist",
        str(real_datalist),
        "--output_dir",
        str(out),
        "--target",
        "balance",
        "--fmt",
        "dicom",
        "--batch_size",
        "3",
        "--progress",
        "False",
        "--strip_source_names",
        "True",
    ]
    proc = subprocess.run(cmd, env=ENV, cwd=bundle, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = visible_files(out)
    assert Counter(p.parent.name for p in files) == {"DME": 2, "DRUSEN": 3, "NORMAL": 4}
    assert json.loads((out / "datalist_synthetic.json").read_text())["name"] == "synthetic"  # the config key
    assert json.loads((out / "job.json").read_text())["bundle_root"] == bundle.name
    assert all(p.suffix == ".dcm" for p in files)
    ds = pydicom.dcmread(files[0])
    assert ds.SeriesDescription.startswith("SYNTHETIC") and "DERIVED" in list(ds.ImageType)
    combined = load_datalist(out / "datalist_real_synthetic.json")
    assert Counter(it["class_name"] for it in combined["training"]) == dict.fromkeys(CLASSES, 5)
    assert len(read_manifest(out)) == 9


def test_every_bundle_config_key_is_documented() -> None:
    config = json.loads((REPO / "bundles" / "oct_ddpm" / "configs" / "multiply.json").read_text())
    docs = (REPO / "docs" / "multiply.md").read_text()
    missing = [k for k in config if k not in ("imports", "run") and f"`{k}`" not in docs]
    assert not missing, f"keys of multiply.json not documented in docs/multiply.md: {missing}"


# ----------------------------------------------------------------------------------------------------------------
# bad input: a clear error before any work
# ----------------------------------------------------------------------------------------------------------------
def test_bad_input_fails_before_any_work(real_datalist: Path, bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    def fails(error, words: str, **kwargs) -> None:
        args = {"datalist": real_datalist, "output_dir": out, "bundle_root": bundle, "device": "cpu", **kwargs}
        with pytest.raises(error, match=words):
            multiply(**args, progress=False)
        assert not (out / "images").exists() and not (out / "job.json").exists()

    fails(UnknownLabelError, "unknown class name", target={"MELANOMA": 5})
    fails(ValueError, "negative", target={"DME": -1})
    fails(ValueError, ">= 1", target="multiply:0.9")
    fails(ValueError, "unknown output format", fmt="jpeg")
    fails(ValueError, "bit_depth", bit_depth=12)
    fails(ValueError, "batch_size", batch_size=0)
    fails(OCTDataError, "datalist file not found", datalist=tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    fails(OCTDataError, "not valid JSON", datalist=broken)
    fails(GeneratorError, "checkpoint not found", ckpt_path=tmp_path / "missing.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save(tiny_unet(4, channels=(16, 32)).state_dict(), wrong)
    fails(GeneratorError, "does not (match|fit)", ckpt_path=wrong)
    fails(GeneratorError, "bundle config not found", bundle_root=tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OCTDataError, match="not writable|not a folder"):
        multiply(real_datalist, blocker / "out", bundle, device="cpu", progress=False)
    with pytest.raises(OCTDataError, match="not a folder"):
        multiply(real_datalist, blocker, bundle, device="cpu", progress=False)

    # a class the generator does not know
    small = make_tiny_bundle(tmp_path / "three_classes", ["CNV", "DME", "DRUSEN"])
    fails(UnknownLabelError, r"does not know class\(es\) \['NORMAL'\]", bundle_root=small)

    # another job's folder: a different seed would mix two jobs' images
    multiply(real_datalist, out, bundle, target={"DME": 1}, device="cpu", progress=False)
    with pytest.raises(OCTDataError, match="different job.*job_seed"):
        multiply(real_datalist, out, bundle, target={"DME": 2}, seed=5, device="cpu", progress=False)
    assert len(visible_files(out)) == 1


def test_memory_stays_flat_as_the_count_grows(real_datalist: Path, gen: DiffusionGenerator, tmp_path: Path) -> None:
    """Images are sampled, written and dropped batch by batch: at most the previous batch is still alive when the
    next one is sampled, however many images the job makes."""

    def max_alive_batches(n: int, name: str, keep: list | None = None) -> int:
        counting = copy.copy(gen)
        alive = {"now": 0, "max": 0}

        def released() -> None:
            alive["now"] -= 1

        def generate(*args, **kwargs):
            alive["max"] = max(alive["max"], alive["now"])
            images = gen.generate(*args, **kwargs)
            alive["now"] += 1
            weakref.finalize(images, released)
            if keep is not None:
                keep.append(images)
            return images

        counting.generate = generate
        multiply(real_datalist, tmp_path / name, generator=counting, target={"DME": n}, batch_size=2, progress=False)
        assert len(visible_files(tmp_path / name)) == n
        return alive["max"]

    assert max_alive_batches(4, "small") <= 1
    assert max_alive_batches(40, "large") <= 1
    assert max_alive_batches(8, "leaky", keep=[]) == 3  # the probe does see images that are kept


# ----------------------------------------------------------------------------------------------------------------
# the real bundle's configs (bundles/oct_ddpm), shrunk by overrides
# ----------------------------------------------------------------------------------------------------------------
TINY_OVERRIDES = {
    "class_names": GEN_CLASSES,
    "image_size": [16, 32],
    "channels": [8, 16],
    "attention_levels": [False, False],
    "num_res_blocks": 1,
    "norm_num_groups": 8,
    "num_head_channels": 8,
    "num_inference_steps": 2,
}


def test_oct_ddpm_bundle_multiplies_through_monai_bundle(real_datalist: Path, tmp_path: Path) -> None:
    from monai.bundle import ConfigParser

    root = tmp_path / "oct_ddpm"
    shutil.copytree(REPO / "bundles" / "oct_ddpm" / "configs", root / "configs")
    (root / "models").mkdir()
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "common.json"), str(root / "configs" / "inference.json")])
    parser.update(dict(TINY_OVERRIDES))
    net = parser.get_parsed_content("network_def")
    randomise_zero_weights(net, std=0.1)  # random output so images vary
    torch.save(net.state_dict(), root / "models" / "model.pt")

    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/multiply.json",
        "--datalist",
        str(real_datalist),
        "--output_dir",
        str(out),
        "--target",
        "multiply:2",
        "--fmt",
        "nifti",
        "--progress",
        "False",
        "--generator_overrides",
        repr(TINY_OVERRIDES),
    ]
    proc = subprocess.run(cmd, env=ENV, cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_manifest(out)
    assert Counter(r["class_name"] for r in records) == TRAIN  # x2: as many again as there are
    assert {(r["height"], r["width"], r["steps"], r["bundle"]) for r in records} == {(16, 32, 2, "oct_ddpm")}
    assert len(visible_files(out)) == 11 and all(p.name.endswith(".nii.gz") for p in visible_files(out))

    # the bundle's sampler switch reaches the manifest (its sampling scheduler follows "sampler")
    ddpm = multiply(
        real_datalist,
        tmp_path / "ddpm",
        root,
        target={"NORMAL": 2},
        overrides={**TINY_OVERRIDES, "sampler": "ddpm"},
        device="cpu",
        progress=False,
    )
    assert ddpm["generated"] == 2
    assert {r["sampler"] for r in read_manifest(tmp_path / "ddpm")} == {"ddpm"}


# ----------------------------------------------------------------------------------------------------------------
# privacy: no absolute path of the real data, and no source names with --strip_source_names
# ----------------------------------------------------------------------------------------------------------------
CLINIC = "StMary_Eye_Clinic_DrSmith"  # a source folder name that could identify patients


@pytest.fixture(scope="module")
def clinic_datalist(real_datalist: Path, tmp_path_factory) -> Path:
    """The real datalist, named after a clinic folder and stored in it (as `medicraft datalist` names it)."""
    data = load_datalist(real_datalist)
    data["name"], data["description"] = CLINIC, f"OCT B-scans from {CLINIC} (folder)"
    data["reference"] = f"{CLINIC} export 2026"  # a key the user added
    path = tmp_path_factory.mktemp("sites") / CLINIC / "datalist.json"
    write_datalist(path, data)
    return path


def _files_naming(out: Path, text: str) -> list[str]:
    return sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and text.encode() in p.read_bytes()
    )


def test_synthetic_datalist_records_a_relative_real_datalist_and_its_checksum(
    clinic_datalist: Path, gen: DiffusionGenerator, tmp_path: Path
) -> None:
    from medicraft_monai.utils import file_sha256

    out = tmp_path / "out"
    multiply(clinic_datalist, out, generator=gen, target={"DME": 1}, device="cpu", progress=False)
    info = json.loads((out / "datalist_synthetic.json").read_text())["synthetic"]
    assert not Path(info["real_datalist"]).is_absolute()
    assert (out / info["real_datalist"]).resolve() == clinic_datalist.resolve()
    assert info["real_datalist_sha256"] == file_sha256(clinic_datalist)
    for name in ("datalist_synthetic.json", "datalist_real_synthetic.json"):
        assert str(clinic_datalist.parent.parent) not in (out / name).read_text()  # no absolute path of the source


def test_strip_source_names_writes_no_source_name_next_to_the_synthetic_images(
    clinic_datalist: Path, bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).with_name("medicraft")), "multiply", str(clinic_datalist), str(out)]
    cmd += ["--bundle_root", str(bundle), "--target", '{"DME": 2}', "--device", "cpu", "--progress", "False"]
    proc = run_group([*cmd, "--strip_source_names"], timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _files_naming(out, CLINIC) == []  # images, manifest, datalists, counts, job.json
    assert _files_naming(out, str(bundle.parent)) == []  # no absolute path of the bundle either
    synthetic = json.loads((out / "datalist_synthetic.json").read_text())
    assert synthetic["name"] == "synthetic" and "real_datalist" not in synthetic["synthetic"]
    assert "reference" not in synthetic and synthetic["labels"] == {str(i): c for i, c in enumerate(CLASSES)}
    assert json.loads((out / "job.json").read_text())["bundle_root"] == bundle.name
    combined = load_datalist(out / "datalist_real_synthetic.json")  # still a usable, leak-free datalist
    assert combined["name"] == "real+synthetic" and len(combined["training"]) == sum(TRAIN.values()) + 2

    plain = tmp_path / "plain"  # without the option the clinic's name travels (what the option is for)
    proc = run_group([*cmd[:3], str(plain), *cmd[4:]], timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "datalist_synthetic.json" in _files_naming(plain, CLINIC)
