"""Datalists and patient-level splits, on the real OCT2017 sample and on deliberately broken copies of it."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medicraft_monai.data.datalist import (
    SPLITS,
    build_datalist,
    check_splits,
    class_weights,
    count_table,
    detect_source_kind,
    load_datalist,
    split_by_patient,
    subsample_classes,
    write_datalist,
)
from medicraft_monai.data.errors import (
    CorruptImageError,
    DataProblems,
    DimensionalityError,
    EmptyDatasetError,
    OCTDataError,
    SplitLeakError,
    UnknownLabelError,
    UnsupportedFormatError,
)

CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]


def _all_items(datalist: dict) -> list[dict]:
    return [it for s in SPLITS for it in datalist[s]]


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _copy_tree(dest: Path, paths: list[Path]) -> list[Path]:
    """Copy real B-scans into dest/<class folder>/<same name>; returns the copies."""
    out = []
    for p in paths:
        target = dest / p.parent.name / p.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)
        out.append(target)
    return out


def _copy_renamed(dest: Path, paths: list[Path], name) -> None:
    """Copy real B-scans into dest/<class folder>/<name(i)> (file names without a Kermany patient id)."""
    for i, p in enumerate(paths):
        target = dest / p.parent.name / name(i)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)


# ---------------------------------------------------------------------------------------------------- real sample
@pytest.fixture(scope="module")
def real(oct2017_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("real") / "oct2017.json"
    return build_datalist(oct2017_dir, out, seed=0), out


def test_real_sample_every_file_with_manifest_patient(real, oct2017_dir, oct2017_manifest):
    datalist, _ = real
    items = _all_items(datalist)
    assert len(items) == len(oct2017_manifest) == 689
    assert datalist["excluded"] == [] and datalist["duplicates"] == []
    assert datalist["labels"] == {str(i): c for i, c in enumerate(CLASSES)} and datalist["num_classes"] == 4
    manifest = {str((oct2017_dir / r["file"]).resolve()): r for r in oct2017_manifest}
    assert {it["image"] for it in items} == set(manifest)
    for it in items:
        row = manifest[it["image"]]
        assert it["patient_id"] == row["patient_id"]
        assert it["class_name"] == row["label"] and CLASSES[it["label"]] == row["label"]
        assert it["sha256"] == row["sha256"]
        assert it["frame"] == 0 and it["plane_angle"] is None and it["laterality"] == "" and it["synthetic"] is False
        assert it["exam_id"] == row["patient_id"]


def test_real_sample_split_is_patient_safe_and_stratified(real, oct2017_dir, oct2017_manifest):
    datalist, _ = real
    sha_of = {str((oct2017_dir / r["file"]).resolve()): r["sha256"] for r in oct2017_manifest}
    patients = {s: {it["patient_id"] for it in datalist[s]} for s in SPLITS}
    hashes = {s: {sha_of[it["image"]] for it in datalist[s]} for s in SPLITS}
    for a, b in (("training", "validation"), ("training", "test"), ("validation", "test")):
        assert not patients[a] & patients[b]
        assert not hashes[a] & hashes[b]
    for s in SPLITS:
        assert {it["class_name"] for it in datalist[s]} == set(CLASSES), s
    # patients with images of two classes stay whole
    classes_of = defaultdict(set)
    for r in oct2017_manifest:
        classes_of[r["patient_id"]].add(r["label"])
    multi = {p for p, c in classes_of.items() if len(c) > 1}
    assert multi
    for p in multi:
        assert sum(p in patients[s] for s in SPLITS) == 1
    # patient fractions close to 0.7 / 0.15 / 0.15
    n = sum(len(patients[s]) for s in SPLITS)
    assert n == len(classes_of)
    for s, f in zip(SPLITS, (0.7, 0.15, 0.15)):
        assert abs(len(patients[s]) / n - f) < 0.03, (s, len(patients[s]))
    check_splits(datalist)


def test_real_sample_seed_is_deterministic(real):
    datalist, _ = real
    items = _all_items(datalist)
    again = split_by_patient(list(reversed(items)), seed=0)
    assert {s: [it["image"] for it in again[s]] for s in SPLITS} == {
        s: [it["image"] for it in datalist[s]] for s in SPLITS
    }
    other = split_by_patient(items, seed=1)
    assert {it["patient_id"] for it in other["test"]} != {it["patient_id"] for it in datalist["test"]}
    for s in SPLITS:
        assert {it["class_name"] for it in other[s]} == set(CLASSES)


def test_count_table_numbers_equal_datalist(real):
    datalist, _ = real
    table = count_table(datalist)
    rows = {}
    for line in table.splitlines():
        nums = re.findall(r"\d+", line)
        name = line.split()[0] if line.split() else ""
        if len(nums) == 8 and (name in CLASSES or name == "total"):
            rows[name] = [int(v) for v in nums]
    assert set(rows) == {*CLASSES, "total"}
    for cls in CLASSES:
        expected = []
        for s in SPLITS:
            its = [it for it in datalist[s] if it["class_name"] == cls]
            expected += [len(its), len({it["patient_id"] for it in its})]
        its = [it for it in _all_items(datalist) if it["class_name"] == cls]
        expected += [len(its), len({it["patient_id"] for it in its})]
        assert rows[cls] == expected, cls
    expected = []
    for s in SPLITS:
        expected += [len(datalist[s]), len({it["patient_id"] for it in datalist[s]})]
    expected += [689, len({it["patient_id"] for it in _all_items(datalist)})]
    assert rows["total"] == expected


def test_written_file_loads_with_monai_and_ours(real):
    from monai.data import load_decathlon_datalist

    datalist, path = real
    raw = json.loads(path.read_text())
    assert all(not Path(it["image"]).is_absolute() for s in SPLITS for it in raw[s])
    assert raw["seed"] == 0 and raw["fractions"] == {"training": 0.7, "validation": 0.15, "test": 0.15}
    ours = load_datalist(path)
    for s in SPLITS:
        monai_items = load_decathlon_datalist(path, is_segmentation=False, data_list_key=s)
        assert [it["image"] for it in monai_items] == [it["image"] for it in datalist[s]]
        assert [it["label"] for it in monai_items] == [it["label"] for it in datalist[s]]
        assert all(Path(it["image"]).is_file() for it in monai_items)
        assert load_datalist(path, split=s) == ours[s] == datalist[s]


def test_loaded_datalist_with_a_patient_in_two_splits_raises(real, tmp_path):
    datalist, path = real
    raw = json.loads(path.read_text())
    moved = raw["training"][0]
    raw["test"].append(dict(moved))  # the same patient (and image) now also in test
    leaky = tmp_path / "leaky.json"
    # keep the images reachable from the new folder
    for s in SPLITS:
        for it in raw[s]:
            it["image"] = str((path.parent / it["image"]).resolve())
    leaky.write_text(json.dumps(raw))
    with pytest.raises(SplitLeakError) as e:
        load_datalist(leaky)
    assert repr(moved["patient_id"]) in str(e.value) and "training" in str(e.value) and "test" in str(e.value)


def test_check_splits_names_the_patient(real):
    datalist, _ = real
    bad = {s: [dict(it) for it in datalist[s]] for s in SPLITS}
    victim = next(it for it in bad["validation"] if it["patient_id"] not in {i["patient_id"] for i in bad["test"]})
    other = dict(bad["test"][0])
    other["patient_id"] = victim["patient_id"]  # a different image, same patient id
    bad["test"][0] = other
    with pytest.raises(SplitLeakError, match=rf"patient '{victim['patient_id']}' is in"):
        check_splits(bad)


# ---------------------------------------------------------------------------------------------------- bad inputs
@pytest.fixture()
def broken_tree(tmp_path: Path, real_bscan_paths: list[Path]) -> tuple[Path, list[Path], dict[str, type]]:
    """Real copies (3 per class) plus one of each kind of broken file; returns root, good copies, {bad: error}."""
    root = tmp_path / "data"
    good = []
    for cls in CLASSES:
        good += _copy_tree(root, [p for p in real_bscan_paths if p.parent.name == cls][:3])
    rng = np.random.default_rng(0)
    bad: dict[str, type] = {}

    src = good[0].read_bytes()
    (root / "CNV" / "CNV-900001-1.jpeg").write_bytes(src[: len(src) // 2])
    bad["CNV/CNV-900001-1.jpeg"] = CorruptImageError
    (root / "DME" / "DME-900002-1.png").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    bad["DME/DME-900002-1.png"] = CorruptImageError
    (root / "DRUSEN" / "DRUSEN-900003-1.jpeg").write_bytes(b"")
    bad["DRUSEN/DRUSEN-900003-1.jpeg"] = CorruptImageError
    (root / "NORMAL" / "notes.txt").write_text("reader notes, not an image\n")
    bad["NORMAL/notes.txt"] = UnsupportedFormatError
    Image.fromarray(np.asarray(Image.open(good[-1]).convert("L"))).save(root / "NORMAL" / "NORMAL-900004-1.bmp")
    bad["NORMAL/NORMAL-900004-1.bmp"] = UnsupportedFormatError
    grey = np.asarray(Image.open(good[3]).convert("L"))
    colour = np.stack([grey, np.roll(grey, 7, axis=1), 255 - grey], axis=-1)
    Image.fromarray(colour, mode="RGB").save(root / "DME" / "DME-900005-1.png")
    bad["DME/DME-900005-1.png"] = DimensionalityError
    import nibabel as nib

    volume = np.stack([grey[:64, :64].T] * 6, axis=-1).reshape(64, 64, 3, 2)  # (x, y, frames, 2): 4-D
    nib.save(nib.Nifti1Image(volume, np.eye(4)), root / "DRUSEN" / "DRUSEN-900006-1.nii.gz")
    bad["DRUSEN/DRUSEN-900006-1.nii.gz"] = DimensionalityError
    stack = np.stack([np.roll(grey, 5 * k, axis=1).T for k in range(3)], axis=-1)  # a valid 3-frame stack
    nib.save(nib.Nifti1Image(stack, np.eye(4)), root / "NORMAL" / "NORMAL-900007-1.nii.gz")
    good.append(root / "NORMAL" / "NORMAL-900007-1.nii.gz")
    (root / ".DS_Store").write_bytes(b"\x00\x01")  # hidden files are ignored
    (root / "README.md").write_text("not data\n")  # root-level non-images are ignored
    return root, good, bad


def test_bad_files_are_excluded_and_the_rest_kept(broken_tree, caplog):
    root, good, bad = broken_tree
    with caplog.at_level(logging.WARNING, logger="medicraft_monai.data.datalist"):
        datalist = build_datalist(root, fractions=(0.5, 0.25, 0.25))
    items = _all_items(datalist)
    assert sorted(it["image"] for it in items) == sorted(str(p.resolve()) for p in good + good[-1:] * 2)
    stack = sorted((it for it in items if it["image"].endswith(".nii.gz")), key=lambda it: it["frame"])
    assert [it["frame"] for it in stack] == [0, 1, 2] and {it["patient_id"] for it in stack} == {"900007"}
    excluded = {str(Path(e["image"]).relative_to(root.resolve())): e for e in datalist["excluded"]}
    assert set(excluded) == set(bad)
    for name, err in bad.items():
        assert excluded[name]["error"] == err.__name__, (name, excluded[name])
        assert excluded[name]["reason"]
        assert name.split("/")[-1] in caplog.text
    assert "0 bytes" in excluded["DRUSEN/DRUSEN-900003-1.jpeg"]["reason"]
    assert "excluded: 7 file(s)" in count_table(datalist)


def test_strict_raises_all_problems_at_once(broken_tree):
    root, _, bad = broken_tree
    with pytest.raises(DataProblems) as e:
        build_datalist(root, strict=True)
    found = {str(Path(p.path).relative_to(root.resolve())): type(p) for p in e.value.problems}
    assert found == bad
    for name in bad:
        assert name.split("/")[-1] in str(e.value)


def test_check_images_off_still_catches_empty_files(broken_tree):
    root, good, _ = broken_tree
    datalist = build_datalist(root, check_images=False)
    excluded = {Path(e["image"]).name: e["error"] for e in datalist["excluded"]}
    assert excluded == {
        "DRUSEN-900003-1.jpeg": "CorruptImageError",
        "notes.txt": "UnsupportedFormatError",
        "NORMAL-900004-1.bmp": "UnsupportedFormatError",
    }
    # the undetected broken files are still in; the stack is not opened, so it is one item (frame 0)
    assert len(_all_items(datalist)) == len(good) + 4


def test_unknown_label_is_excluded(tmp_path, real_bscan_paths):
    root = tmp_path / "data"
    good = _copy_tree(root, real_bscan_paths[::2])
    datalist = build_datalist(root, classes=["NORMAL", "CNV", "DME"])
    assert datalist["labels"] == {"0": "NORMAL", "1": "CNV", "2": "DME"}
    drusen = {str(p.resolve()) for p in good if p.parent.name == "DRUSEN"}
    assert drusen and {e["image"] for e in datalist["excluded"]} == drusen
    assert all(e["error"] == "UnknownLabelError" and "'DRUSEN'" in e["reason"] for e in datalist["excluded"])
    assert all(it["label"] == ["NORMAL", "CNV", "DME"].index(it["class_name"]) for it in _all_items(datalist))
    with pytest.raises(DataProblems) as e:
        build_datalist(root, classes=["NORMAL", "CNV", "DME"], strict=True)
    assert {type(p) for p in e.value.problems} == {UnknownLabelError}


def test_empty_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDatasetError, match="empty"):
        build_datalist(tmp_path / "empty")
    (tmp_path / "classes" / "CNV").mkdir(parents=True)
    (tmp_path / "classes" / "CNV" / "notes.txt").write_text("x")
    with pytest.raises(EmptyDatasetError, match="notes.txt"):
        build_datalist(tmp_path / "classes", kind="folder")
    (tmp_path / "empty.csv").write_text("image,label,patient_id\n")
    with pytest.raises(EmptyDatasetError, match="empty.csv"):
        build_datalist(tmp_path / "empty.csv")
    with pytest.raises(OCTDataError, match="not found"):
        build_datalist(tmp_path / "missing")


def test_identical_image_under_two_patients_stays_in_one_split(tmp_path, real_bscan_paths, caplog):
    root = tmp_path / "data"
    _copy_tree(root, real_bscan_paths)
    same = real_bscan_paths[-1]
    shutil.copyfile(same, root / "NORMAL" / "NORMAL-800001-1.jpeg")
    shutil.copyfile(same, root / "NORMAL" / "NORMAL-800002-7.jpeg")
    copies = {str((root / "NORMAL" / same.name).resolve())}
    copies |= {str((root / "NORMAL" / n).resolve()) for n in ("NORMAL-800001-1.jpeg", "NORMAL-800002-7.jpeg")}
    with caplog.at_level(logging.WARNING, logger="medicraft_monai.data.datalist"):
        datalist = build_datalist(root)
    assert datalist["duplicates"] == [sorted(copies)]
    assert "identical bytes" in caplog.text and "800001" in caplog.text
    for seed in range(6):
        splits = split_by_patient(_all_items(datalist), seed=seed)
        where = {s for s in SPLITS for it in splits[s] if it["image"] in copies}
        assert len(where) == 1, (seed, where)
    # forcing the copies apart is a leak naming the image
    bad = {s: [it for it in datalist[s] if it["image"] not in copies] for s in SPLITS}
    a, b, c = (next(it for it in _all_items(datalist) if it["image"] == p) for p in sorted(copies))
    bad["training"].append(a)
    bad["test"] += [b, c]
    with pytest.raises(SplitLeakError, match="identical image") as e:
        check_splits(bad)
    assert Path(a["image"]).name in str(e.value) or Path(b["image"]).name in str(e.value)
    # without the stored hash the files are hashed
    for s in SPLITS:
        bad[s] = [{k: v for k, v in it.items() if k != "sha256"} for it in bad[s]]
    with pytest.raises(SplitLeakError, match="identical image"):
        check_splits(bad)
    with pytest.raises(DataProblems) as e:
        build_datalist(root, strict=True)
    assert [type(p) for p in e.value.problems] == [SplitLeakError]


# ---------------------------------------------------------------------------------------------------- sources
def test_folder_without_manifest_uses_kermany_names(tmp_path, real_bscan_paths):
    root = tmp_path / "data"
    copies = _copy_tree(root, real_bscan_paths)
    assert detect_source_kind(root) == "folder"
    datalist = build_datalist(root)
    expected = {str(p.resolve()): p.name.split("-")[1] for p in copies}
    assert {it["image"]: it["patient_id"] for it in _all_items(datalist)} == expected


def test_patient_regex_and_stem_fallback(tmp_path, real_bscan_paths, caplog):
    root = tmp_path / "data"
    _copy_renamed(root, real_bscan_paths[:8], lambda i: f"subj{i % 3}_scan{i}.jpeg")
    datalist = build_datalist(root, patient_regex=r"subj(\d+)_")
    assert {it["patient_id"] for it in _all_items(datalist)} == {"0", "1", "2"}
    with caplog.at_level(logging.WARNING, logger="medicraft_monai.data.datalist"):
        datalist = build_datalist(root)
    assert "8 file(s) have no patient id" in caplog.text and "patient-safe" in caplog.text
    assert {it["patient_id"] for it in _all_items(datalist)} == {f"subj{i % 3}_scan{i}" for i in range(8)}


def test_csv_with_relative_paths_and_own_columns(tmp_path, real_bscan_paths, caplog):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i, p in enumerate(real_bscan_paths[:12]):
        shutil.copyfile(p, images / f"b{i}.jpeg")
        rows.append(
            {
                "path": f"../images/b{i}.jpeg",
                "dx": p.parent.name,
                "subject": f"S{i // 2}",
                "eye": "OD" if i % 2 else "OS",
                "angle": str(30 * i - 30),
            }
        )
    rows.append({"path": "../images/missing.jpeg", "dx": "CNV", "subject": "S99", "eye": "OD", "angle": "0"})
    rows.append({"path": "../images/b0.jpeg", "dx": "CNV", "subject": "S98", "eye": "up", "angle": "0"})
    rows.append(dict(rows[3]))  # the same row twice
    table = tmp_path / "lists" / "scans.csv"
    table.parent.mkdir()
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert detect_source_kind(table) == "csv"
    columns = {"image": "path", "label": "dx", "patient_id": "subject", "laterality": "eye"}
    with caplog.at_level(logging.WARNING, logger="medicraft_monai.data.datalist"):
        datalist = build_datalist(table, tmp_path / "out", csv_columns=columns, fractions=(0.5, 0.25, 0.25))
    assert (tmp_path / "out" / "datalist.json").is_file()
    items = {Path(it["image"]).name: it for it in _all_items(datalist)}
    assert len(items) == 12
    for i, p in enumerate(real_bscan_paths[:12]):
        it = items[f"b{i}.jpeg"]
        assert it["image"] == str((images / f"b{i}.jpeg").resolve())
        assert it["class_name"] == p.parent.name and it["patient_id"] == f"S{i // 2}"
        assert it["laterality"] == ("R" if i % 2 else "L")
        assert it["exam_id"] == f"S{i // 2}_{it['laterality']}"
        assert it["plane_angle"] == pytest.approx((30 * i - 30) % 360)
    reasons = {Path(e["image"].split(":")[0]).name: e for e in datalist["excluded"]}
    assert reasons["missing.jpeg"]["error"] == "OCTDataError" and "not found" in reasons["missing.jpeg"]["reason"]
    assert "laterality" in reasons["scans.csv"]["reason"]
    assert "more than once" in reasons["b3.jpeg"]["reason"] and len(reasons) == 3
    with pytest.raises(OCTDataError, match="no 'label' column"):
        build_datalist(table)


def test_dicom_folder(tmp_path, caplog):
    from medicraft_monai.data.dicom import write_oct_dicom

    rng = np.random.default_rng(3)
    angles = [float(a) for a in range(0, 360, 30)]
    root = tmp_path / "dicom"
    expected = {}
    for k, (cls, pid, lat) in enumerate(
        [("healthy", "P1", "R"), ("healthy", "P2", "L"), ("healthy", "P3", "R"), ("nevus", "P4", "L"),
         ("nevus", "P5", "R"), ("nevus", "P6", "R"), ("nevus", "P7", "L")]
    ):  # fmt: skip
        path = root / cls / f"exam{k}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = rng.integers(0, 256, (12, 48, 64), dtype=np.uint8)
        uid = f"1.2.826.0.1.3680043.8.498.{k + 1}"
        write_oct_dicom(path, frames, plane_angles=angles, laterality=lat, patient_id=pid, study_instance_uid=uid)
        expected[str(path.resolve())] = (cls, pid, lat, uid)
    first = next(iter(expected))
    (root / "healthy" / "truncated.dcm").write_bytes(Path(first).read_bytes()[:3000])
    (root / "nevus" / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4)
    assert detect_source_kind(root) == "dicom"
    with caplog.at_level(logging.WARNING, logger="medicraft_monai.data.datalist"):
        datalist = build_datalist(root, fractions=(0.6, 0.2, 0.2))
    assert datalist["source_kind"] == "dicom" and datalist["labels"] == {"0": "healthy", "1": "nevus"}
    items = _all_items(datalist)
    assert len(items) == 7 * 12
    excluded = {Path(e["image"]).name: e["error"] for e in datalist["excluded"]}
    assert excluded["truncated.dcm"] == "CorruptImageError"
    assert excluded["garbage.dcm"] in ("CorruptImageError", "UnsupportedFormatError") and len(excluded) == 2
    assert "no patient id" not in caplog.text
    for path, (cls, pid, lat, _) in expected.items():
        its = sorted((it for it in items if it["image"] == path), key=lambda it: it["frame"])
        assert [it["frame"] for it in its] == list(range(12))
        assert [it["plane_angle"] for it in its] == pytest.approx(angles)
        assert {(it["class_name"], it["patient_id"], it["laterality"]) for it in its} == {(cls, pid, lat)}
    for s in SPLITS:
        assert {it["class_name"] for it in datalist[s]} == {"healthy", "nevus"}
    # labels from a CSV keyed by study uid (one exam relabelled) or patient id
    labels = tmp_path / "labels.csv"
    lines = ["study_uid,patient_id,label"]
    for i, (cls, pid, _, uid) in enumerate(expected.values()):
        lines.append(f"{uid},,{'melanoma' if i == 6 else cls}" if i % 2 == 0 else f",{pid},{cls}")
    labels.write_text("\n".join(lines) + "\n")
    relabelled = build_datalist(root, labels_csv=labels, fractions=(1.0, 0.0, 0.0))
    assert relabelled["labels"] == {"0": "healthy", "1": "melanoma", "2": "nevus"}
    assert Counter(it["class_name"] for it in relabelled["training"]) == {"healthy": 36, "nevus": 36, "melanoma": 12}


# ---------------------------------------------------------------------------------------------------- splitting
def _synthetic_items(spec: dict[str, list[str]], images_per_patient: int = 2) -> list[dict]:
    """Items without files: {patient: [class names]} -> items (one per image)."""
    names = sorted({c for cs in spec.values() for c in cs})
    items = []
    for pid, cs in spec.items():
        for c in cs:
            for k in range(images_per_patient):
                items.append(
                    {"image": f"/x/{pid}-{c}-{k}.png", "label": names.index(c), "class_name": c, "patient_id": pid}
                )
    return items


def test_split_small_classes_reach_every_split_and_patients_stay_whole():
    spec = {f"a{i}": ["A"] for i in range(40)}
    spec |= {f"r{i}": ["R"] for i in range(3)}  # exactly 3 patients: one in each split
    spec |= {f"m{i}": ["A", "B"] for i in range(4)}  # B only on patients that also have A
    spec |= {"lonely": ["C"]}  # fewer than 3 patients: no guarantee, but kept
    items = _synthetic_items(spec)
    for seed in range(10):
        splits = split_by_patient(items, seed=seed)
        assert sum(len(v) for v in splits.values()) == len(items)
        for s in SPLITS:
            names = {it["class_name"] for it in splits[s]}
            assert {"A", "R", "B"} <= names, (seed, s, names)
        owner = {}
        for s in SPLITS:
            for it in splits[s]:
                assert owner.setdefault(it["patient_id"], s) == s
        check_splits(splits)
    assert split_by_patient(items, seed=4) == split_by_patient(items[::-1], seed=4)


def test_split_groups_identical_images_and_honours_zero_fractions():
    items = _synthetic_items({f"p{i}": ["A" if i % 2 else "B"] for i in range(30)}, images_per_patient=1)
    items[0]["sha256"] = items[1]["sha256"] = "f" * 64  # p0 and p1 share an image
    for seed in range(8):
        splits = split_by_patient(items, fractions=(0.8, 0.0, 0.2), seed=seed)
        assert splits["validation"] == []
        where = {s for s in SPLITS for it in splits[s] if it["patient_id"] in ("p0", "p1")}
        assert len(where) == 1
    with pytest.raises(ValueError, match="fractions"):
        split_by_patient(items, fractions=(0.8, 0.3, 0.1))
    with pytest.raises(EmptyDatasetError):
        split_by_patient([])


# ---------------------------------------------------------------------------------------------------- weights, files
def test_class_weights():
    counts = [10, 30, 0, 60]
    items = [{"label": c, "patient_id": str(i)} for c, n in enumerate(counts) for i in range(n)]
    inv = class_weights(items, "inverse", num_classes=4)
    assert inv[2] == 0.0
    assert np.mean([inv[0], inv[1], inv[3]]) == pytest.approx(1.0)
    assert inv[0] / inv[1] == pytest.approx(3.0) and inv[0] / inv[3] == pytest.approx(6.0)
    beta = 0.9
    eff = class_weights(items, "effective", beta=beta, num_classes=4)
    raw = [(1 - beta) / (1 - beta**n) for n in (10, 30, 60)]
    assert [eff[0], eff[1], eff[3]] == pytest.approx(list(np.array(raw) / np.mean(raw)))
    assert eff[0] > eff[1] > eff[3] and eff[0] / eff[3] < inv[0] / inv[3]  # milder than inverse
    assert class_weights(items, "effective", beta=0.0) == pytest.approx([1.0, 1.0, 0.0, 1.0])
    assert class_weights(items, "none") == [1.0, 1.0, 0.0, 1.0]
    datalist = {"num_classes": 5, "training": items, "validation": [], "test": []}
    assert len(class_weights(datalist)) == 5
    with pytest.raises(ValueError, match="mode"):
        class_weights(items, "sqrt")


def test_class_weights_on_real_training_split(real):
    datalist, _ = real
    w = class_weights(datalist)
    n = Counter(it["label"] for it in datalist["training"])
    assert len(w) == 4 and np.mean(w) == pytest.approx(1.0)
    rarest, commonest = min(n, key=n.get), max(n, key=n.get)
    assert w[rarest] / w[commonest] == pytest.approx(n[commonest] / n[rarest])


def test_write_and_load_round_trip_and_class_name_clash_warning(real, oct2017_dir, tmp_path, caplog):
    datalist, _ = real
    path = write_datalist(tmp_path / "nested" / "dl.json", datalist)
    assert load_datalist(path) == datalist
    with pytest.raises(ValueError, match="'holdout'"):
        load_datalist(path, split="holdout")
    # next to the class folders, class names are also folder names: warn about monai's loader
    clash = tmp_path / "tree"
    (clash / "CNV").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="medicraft_monai.data.datalist"):
        write_datalist(clash / "dl.json", {**datalist, "validation": [], "test": []})
    assert "load_decathlon_datalist" in caplog.text and "'CNV'" in caplog.text


# ------------------------------------------------------------------------------------- issue 14: outputs, unreadable
def _medicraft(*args: str) -> subprocess.CompletedProcess:
    """``medicraft ARGS`` as a user runs it (the installed console script)."""
    exe = Path(sys.executable).with_name("medicraft")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def user_inputs(tmp_path: Path, real_bscan_paths: list[Path]) -> dict[str, Path]:
    """A folder of class folders (with a manifest.csv), a CSV listing the same images, and a labels CSV."""
    root = tmp_path / "data"
    copies = []
    for cls in ("CNV", "NORMAL"):
        copies += _copy_tree(root, [p for p in real_bscan_paths if p.parent.name == cls][:3])
    with open(root / "manifest.csv", "w", newline="") as f:
        f.write("file,patient_id\n" + "".join(f"{c.parent.name}/{c.name},{c.name.split('-')[1]}\n" for c in copies))
    table = tmp_path / "scans.csv"
    table.write_text("image,label\n" + "".join(f"data/{c.parent.name}/{c.name},{c.parent.name}\n" for c in copies))
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label\n1,CNV\n")
    return {"root": root, "csv": table, "labels": labels, "image": copies[0]}


@pytest.mark.parametrize(
    ("source", "output", "extra", "problem"),
    [
        ("csv", "csv", (), "is the source CSV"),
        ("csv", "image", (), "must be a .json file, not '.jpeg'"),
        ("root", "image", (), "inside the source's class folder 'CNV'"),
        ("root", "manifest", (), "is the source's manifest.csv"),
        ("root", "labels", ("--labels_csv",), "is the labels CSV (--labels_csv)"),
        ("root", "txt", (), "must be a .json file, not '.txt'"),
        ("root", "in_class_folder", (), "inside the source's class folder 'CNV'"),
    ],
)
def test_datalist_refuses_an_output_that_is_an_input_or_lies_among_them(user_inputs, source, output, extra, problem):
    root = user_inputs["root"]
    targets = {
        "csv": user_inputs["csv"],
        "image": user_inputs["image"],
        "manifest": root / "manifest.csv",
        "labels": user_inputs["labels"],
        "txt": root.parent / "datalist.txt",
        "in_class_folder": root / "CNV" / "datalist.json",
    }
    target = targets[output]
    args = [str(user_inputs[source]), "-o", str(target)]
    if extra:
        args += [extra[0], str(user_inputs["labels"])]
    before = _snapshot(root.parent)
    proc = _medicraft("datalist", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert str(target) in lines[0] and problem in lines[0] and "--output" in lines[0]
    assert _snapshot(root.parent) == before  # every file as it was, and nothing new


@pytest.fixture
def unreadable(monkeypatch: pytest.MonkeyPatch):
    """Make folders unreadable for real, even for root (which ignores permission bits): ``os.scandir`` of any of
    the folders added to the returned set raises PermissionError, as it does for a user without read access."""
    import os

    blocked: set[Path] = set()
    scandir = os.scandir

    def guarded(path=".", *args, **kwargs):
        if Path(path).resolve() in blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", guarded)
    return blocked


def test_unreadable_class_folder_and_subtree_are_excluded_entries_and_strict_stops(
    user_inputs, unreadable, caplog, capsys
):
    from medicraft_monai.cli import main

    root = user_inputs["root"]
    sub = root / "CNV" / "exam2"
    sub.mkdir()
    shutil.copyfile(user_inputs["image"], sub / "CNV-77-1.jpeg")
    (root / "DME").mkdir()
    shutil.copyfile(user_inputs["image"], root / "DME" / "DME-78-1.jpeg")
    unreadable.update({(root / "DME").resolve(), sub.resolve()})
    with caplog.at_level(logging.WARNING, logger="medicraft_monai.data.datalist"):
        datalist = build_datalist(root)
    excluded = {e["image"]: e for e in datalist["excluded"]}
    for folder in (root / "DME", sub):
        assert "cannot read the folder (Permission denied)" in excluded[str(folder)]["reason"]
        assert f"excluded {folder}: cannot read the folder" in caplog.text
    assert len(_all_items(datalist)) == 6  # the readable images are kept
    with pytest.raises(DataProblems, match="DME: cannot read the folder"):
        build_datalist(root, strict=True)

    before = _snapshot(root.parent)
    out = root.parent / "strict.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["datalist", str(root), "--output", str(out), "--strict"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medicraft: error: ") and "\n" not in err and "Traceback" not in err  # one line
    named = {f"{f}: cannot read the folder (Permission denied)" in err for f in (root / "DME", sub)}
    assert named == {True, False} and ("and 1 more problem(s): DME" in err or "and 1 more problem(s): exam2" in err)
    assert _snapshot(root.parent) == before


def test_unreadable_root_is_an_error_naming_it(user_inputs, unreadable, capsys):
    from medicraft_monai.cli import main

    root = user_inputs["root"]
    unreadable.add(root.resolve())
    for kind in (None, "folder"):
        with pytest.raises(OCTDataError, match="cannot read the datalist source folder") as err:
            build_datalist(root, kind=kind)
        assert err.value.path == str(root) and "no image files" not in str(err.value)
    with pytest.raises(SystemExit) as exit_info:
        main(["datalist", str(root), "--output", str(root.parent / "dl.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"medicraft: error: {root}: cannot read the datalist source folder (Permission denied)"
    assert not (root.parent / "dl.json").exists()

    unreadable.clear()  # a readable root whose class folders all cannot be read: not "no image files found"
    unreadable.update({(root / "CNV").resolve(), (root / "NORMAL").resolve()})
    with pytest.raises(OCTDataError, match=r"2 folder\(s\) cannot be read, first .*CNV: cannot read the folder"):
        build_datalist(root)


def test_label_typo_class_of_one_image_warns_how_to_pin_classes(user_inputs, caplog):
    table = user_inputs["csv"]
    lines = table.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",CNVV"  # a typo: one image would make a class of its own
    table.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="medicraft_monai.data.datalist"):
        datalist = build_datalist(table)
    assert datalist["labels"] == {"0": "CNV", "1": "CNVV", "2": "NORMAL"}
    assert "class 'CNVV' has a single image" in caplog.text and "a typo of 'CNV'?" in caplog.text
    assert "--classes CNV,NORMAL" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medicraft_monai.data.datalist"):
        pinned = build_datalist(table, classes=["CNV", "NORMAL"])
    assert "single image" not in caplog.text
    assert [e["error"] for e in pinned["excluded"]] == ["UnknownLabelError"]


def test_class_missing_from_validation_or_test_split_warns(user_inputs, real_bscan_paths, caplog):
    root = user_inputs["root"]
    dme = next(p for p in real_bscan_paths if p.parent.name == "DME")
    _copy_tree(root, [dme])  # one patient of DME: it can reach one split only
    with caplog.at_level(logging.WARNING, logger="medicraft_monai.data.datalist"):
        datalist = build_datalist(root, fractions=(0.7, 0.3, 0.0))
    assert [it["class_name"] for it in datalist["validation"]].count("DME") == 0
    assert re.search(r"class\(es\) 'DME' have no image in the validation split", caplog.text)
    assert "test split" not in caplog.text  # a split with fraction 0 is not asked for


def test_no_patient_id_count_counts_only_kept_files(tmp_path, real_bscan_paths, caplog):
    root = tmp_path / "data"
    _copy_renamed(root, real_bscan_paths[:4], lambda i: f"scan{i}.jpeg")
    (root / "CNV" / "scan_empty.jpeg").write_bytes(b"")  # left out: must not be counted
    (root / "CNV" / "scan_cut.jpeg").write_bytes(real_bscan_paths[0].read_bytes()[:300])
    with caplog.at_level(logging.WARNING, logger="medicraft_monai.data.datalist"):
        datalist = build_datalist(root)
    assert len(datalist["excluded"]) == 2
    assert "4 file(s) have no patient id" in caplog.text


# ---------------------------------------------------------------------------- issue 16: a deliberately imbalanced copy
def test_subsample_writes_the_studys_subset_and_leaves_the_other_splits(real, tmp_path):
    datalist, path = real
    out = tmp_path / "drusen10.json"
    proc = _medicraft("subsample", str(path), str(out), "--fractions", '{"DRUSEN": 0.1}', "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert "subsampled datalist written to" in proc.stdout and "DRUSEN" in proc.stdout  # the count table
    cut = load_datalist(out)
    drusen = CLASSES.index("DRUSEN")
    n = sum(it["label"] == drusen for it in datalist["training"])
    kept = [it for it in cut["training"] if it["label"] == drusen]
    assert len(kept) == max(1, round(0.1 * n)) < n
    # the very subset the utility study's imbalance experiments draw with the same seed (imbalance_seed)
    expected = subsample_classes(datalist["training"], {"DRUSEN": 0.1}, CLASSES, 3)
    assert [it["image"] for it in cut["training"]] == [it["image"] for it in expected]
    others = [it["image"] for it in datalist["training"] if it["label"] != drusen]
    assert sorted(it["image"] for it in cut["training"] if it["label"] != drusen) == sorted(others)
    for split in ("validation", "test"):
        assert cut[split] == datalist[split]
    assert cut["numTraining"] == len(cut["training"])
    assert cut["subsampled"] == {
        "source": str(path.resolve()),
        "source_sha256": _sha(path),
        "fractions": {"DRUSEN": 0.1},
        "seed": 3,
        "dropped": [],
    }
    other_seed = subsample_classes(datalist["training"], {"DRUSEN": 0.1}, CLASSES, 4)
    assert [it["image"] for it in other_seed] != [it["image"] for it in expected]  # the seed matters


def test_subsample_drop_removes_a_class_from_every_split_and_keeps_the_patients_where_they_were(real, tmp_path):
    datalist, path = real
    out = tmp_path / "parent.json"
    proc = _medicraft("subsample", str(path), str(out), "--drop", "DRUSEN")
    assert proc.returncode == 0, proc.stderr
    parent = load_datalist(out)
    keep = ["CNV", "DME", "NORMAL"]
    assert parent["labels"] == {"0": "CNV", "1": "DME", "2": "NORMAL"} and parent["num_classes"] == 3
    for split in SPLITS:
        expected = sorted(
            (it["image"], keep.index(it["class_name"]), it["patient_id"])
            for it in datalist[split]
            if it["class_name"] != "DRUSEN"
        )
        assert sorted((it["image"], it["label"], it["patient_id"]) for it in parent[split]) == expected
        assert parent["num" + split.capitalize()] == len(expected)
    assert parent["subsampled"]["dropped"] == ["DRUSEN"] and parent["subsampled"]["fractions"] == {}


@pytest.mark.parametrize(
    ("output", "args", "problem"),
    [
        ("source", ["--fractions", '{"DRUSEN": 0.1}'], "is the source datalist"),
        ("existing", ["--fractions", '{"DRUSEN": 0.1}'], "exists; pass overwrite=True (--overwrite)"),
        ("new", ["--fractions", '{"DRUSN": 0.1}'], "unknown classes ['DRUSN']"),
        ("new", ["--fractions", '{"DRUSEN": 0}'], "must be in (0, 1], got 0.0"),
        ("new", ["--fractions", '{"DRUSEN": 1.5}'], "must be in (0, 1], got 1.5"),
        ("txt", ["--fractions", '{"DRUSEN": 0.1}'], "must be a .json file, not '.txt'"),
        ("new", [], "nothing to do"),
        ("new", ["--drop", "DRUSN"], "cannot drop unknown classes ['DRUSN']"),
        ("new", ["--drop", "DRUSEN", "--fractions", '{"DRUSEN": 0.1}'], "both cut and dropped"),
        ("new", ["--drop", "CNV,DME,DRUSEN,NORMAL"], "every class would be dropped"),
    ],
)
def test_subsample_refuses_bad_arguments_before_writing(real, tmp_path, output, args, problem):
    _, path = real
    source = path.parent / f"source_{tmp_path.name}.json"  # beside the original: its image paths are relative
    shutil.copyfile(path, source)
    existing = tmp_path / "existing.json"
    existing.write_text("{}")
    target = {"source": source, "existing": existing, "new": tmp_path / "new.json", "txt": tmp_path / "cut.txt"}[output]
    before = {source: source.read_bytes(), existing: existing.read_bytes()}
    proc = _medicraft("subsample", str(source), str(target), *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert problem in lines[0]
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "new.json").exists() and not (tmp_path / "cut.txt").exists()
