"""The bad-input corpus: every class of bad input a new user may hand to ``medicraft``, generated in a temporary
folder (nothing from ../shared is copied into the repository; real B-scans are copied into the temporary folder).

:func:`build_corpus` writes the files and returns one :class:`Case` per (class of bad input, command): the command
line, the file its error message must name, and words of the problem. tests/test_bad_inputs.py runs them all.

Classes (docs/datalists.md, "Bad input: what you see, what is kept"): corrupt, truncated, zero-byte, unsupported
format, wrong modality, 3-D volume, colour image, NaN, unknown label, unreadable, output equals input, interrupted
write, mistyped option.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import tifffile
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CLASSES = ("NORMAL", "CNV")
KINDS = (
    "corrupt",
    "truncated",
    "zero-byte",
    "unsupported format",
    "wrong modality",
    "3-D volume",
    "colour image",
    "NaN",
    "unknown label",
    "unreadable",
    "output equals input",
    "interrupted write",
    "mistyped option",
)


@dataclass
class Case:
    """One bad input given to one command: ``medicraft *args`` must exit 2 with a last stderr line naming ``names``
    (a path or a file name) and holding each of ``words``."""

    kind: str
    command: str
    args: list[str]
    names: str
    words: tuple[str, ...] = ()
    what: str = ""
    kept: str = "every file as it was"
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.kind.replace(' ', '_')}-{self.command.replace(' ', '_')}"


# ----------------------------------------------------------------------------------------------------- bad files
def write_random(path: Path, size: int = 4096) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def write_truncated(path: Path, source: Path, keep: int = 500) -> Path:
    path.write_bytes(source.read_bytes()[:keep])
    return path


def write_ct_dicom(path: Path) -> Path:
    """A valid DICOM file that is not OCT: a CT image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CT", "anon-ct"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 32, 64, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros((32, 64), np.uint16).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_volume_series(path: Path) -> Path:
    """A 4-D NIfTI (a 3-D volume over 2 time points): neither a B-scan nor a stack of B-scans."""
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((32, 64, 4, 2)).astype(np.float32), np.eye(4)), path)
    return path


def write_colour(path: Path) -> Path:
    rgb = np.zeros((32, 64, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = np.arange(64, dtype=np.uint8)[None]
    Image.fromarray(rgb).save(path)
    return path


def write_nan_tiff(path: Path) -> Path:
    data = np.random.default_rng(0).random((32, 64)).astype(np.float32)
    data[3, 3] = np.nan
    tifffile.imwrite(path, data)
    return path


# ---------------------------------------------------------------------------------------------------------- corpus
def one_per_class_datalist(path: Path, oct2017_dir: Path, manifest: list[dict[str, str]]) -> Path:
    """A valid datalist of one real B-scan per class of tests/test_multiply (the classes its tiny bundle knows)."""
    from test_multiply import CLASSES as BUNDLE_CLASSES
    from test_multiply import real_item

    from medicraft_monai.data import write_datalist

    rows = {r["label"]: r for r in manifest}
    datalist = {
        "name": "tiny",
        "labels": {str(i): c for i, c in enumerate(BUNDLE_CLASSES)},
        "num_classes": len(BUNDLE_CLASSES),
        "training": [real_item(rows[c], oct2017_dir) for c in BUNDLE_CLASSES],
        "validation": [],
        "test": [],
    }
    return write_datalist(path, datalist)


def _class_tree(root: Path, real: dict[str, list[Path]]) -> Path:
    """A datalist source: one folder per class holding real B-scans of two patients."""
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for src in real[c]:
            shutil.copyfile(src, root / c / src.name)
    return root


def _real_by_class(oct2017_dir: Path) -> tuple[dict[str, list[Path]], dict[Path, str]]:
    """Two real B-scans of each of two patients per class, and each file's patient id."""
    with open(oct2017_dir / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list[Path]] = {}
    patient: dict[Path, str] = {}
    for c in CLASSES:
        by_patient: dict[str, list[Path]] = {}
        for r in rows:
            if r["label"] == c:
                by_patient.setdefault(r["patient_id"], []).append(oct2017_dir / r["file"])
        out[c] = [p for pid in list(by_patient)[:2] for p in by_patient[pid][:2]]
        patient.update({p: pid for pid in list(by_patient)[:2] for p in by_patient[pid][:2]})
    return out, patient


def build_corpus(root: Path, oct2017_dir: Path, bundle: Path, real_datalist: Path) -> list[Case]:
    """Write every bad input under ``root`` and return the cases (each command given each bad input it takes).

    Args:
        root: an empty folder (a pytest tmp_path).
        oct2017_dir: the real OCT sample (read only: its B-scans are copied).
        bundle: a tiny generator bundle with random weights (see tests/test_multiply.make_tiny_bundle).
        real_datalist: a valid datalist JSON of real B-scans whose classes the bundle knows.
    """
    real, patient = _real_by_class(oct2017_dir)
    root.mkdir(parents=True, exist_ok=True)
    jpeg = real["NORMAL"][0]
    cases: list[Case] = []
    out = root / "out"  # outputs of the commands go below here, never into the inputs

    def datalist_case(kind: str, bad_name: str, make, words: tuple[str, ...], what: str) -> Path:
        name = f"src_{kind}_{bad_name.split('.')[0]}".replace(" ", "_").replace("-", "_")
        src = _class_tree(root / name, real)
        bad = make(src / "CNV" / bad_name)
        args = ["datalist", str(src), "--output", str(out / f"{src.name}.json"), "--strict"]
        cases.append(Case(kind, "datalist", args, bad_name, words, what, "no datalist written; the source untouched"))
        return bad

    def info_case(kind: str, path: Path, words: tuple[str, ...], what: str) -> None:
        cases.append(Case(kind, "info", ["info", str(path)], path.name, words, what))

    good_ckpt = (bundle / "models" / "model.pt").read_bytes()

    def multiply_case(kind: str, ckpt: Path, words: tuple[str, ...], what: str) -> None:
        args = ["multiply", str(real_datalist), str(out / f"mult_{ckpt.stem}"), "--bundle_root", str(bundle)]
        args += ["--ckpt_path", str(ckpt), "--progress", "false"]
        cases.append(Case(kind, "multiply", args, ckpt.name, words, what, "no image written; the checkpoint untouched"))

    ckpts = root / "checkpoints"
    ckpts.mkdir()

    # corrupt: random bytes under an image or checkpoint name
    bad = datalist_case("corrupt", "CNV-999-1.jpeg", lambda p: write_random(p), ("cannot",), "random bytes as a JPEG")
    info_case("corrupt", bad, ("cannot",), "random bytes as a JPEG")
    multiply_case("corrupt", write_random(ckpts / "random.pt"), ("not a PyTorch checkpoint",), "random bytes")
    # truncated: an interrupted copy
    bad = datalist_case("truncated", "CNV-999-1.jpeg", lambda p: write_truncated(p, jpeg), (), "first 500 bytes")
    info_case("truncated", bad, (), "first 500 bytes of a JPEG")
    trunc = ckpts / "truncated.pt"
    trunc.write_bytes(good_ckpt[: len(good_ckpt) // 2])
    multiply_case("truncated", trunc, ("truncated",), "half a model.pt")
    # zero-byte
    bad = datalist_case("zero-byte", "CNV-999-1.jpeg", lambda p: (p.write_bytes(b""), p)[1], (), "an empty JPEG")
    info_case("zero-byte", bad, (), "an empty JPEG")
    empty = ckpts / "empty.pt"
    empty.write_bytes(b"")
    multiply_case("zero-byte", empty, ("empty",), "an empty model.pt")
    empty_dl = root / "empty_datalist.json"
    empty_dl.write_bytes(b"")
    cases.append(Case("zero-byte", "evaluate", ["evaluate", str(real_datalist), str(empty_dl), str(out / "eval_empty")],
                      empty_dl.name, (), "an empty synthetic datalist"))  # fmt: skip
    store = root / "studies_empty"
    store.mkdir()
    (store / "datastore_v2.json").write_bytes(b"")
    cases.append(Case("zero-byte", "review export", ["review", "export", str(store), str(out / "review_empty")],
                      "datastore_v2.json", (), "an empty datastore"))  # fmt: skip
    # unsupported format
    doc = root / "scan.docx"
    write_random(doc, 512)
    info_case("unsupported format", doc, (), "a Word file")
    txt = root / "source.txt"
    txt.write_text("NORMAL/a.jpeg\n")
    cases.append(Case("unsupported format", "datalist", ["datalist", str(txt), "--output", str(out / "txt.json")],
                      txt.name, (), "a .txt file as the source"))  # fmt: skip
    # wrong modality: a DICOM CT image
    bad = datalist_case("wrong modality", "ct.dcm", write_ct_dicom, ("CT Image Storage",), "a DICOM CT image")
    # 3-D volume (over time): not a B-scan or a stack of them
    bad = datalist_case("3-D volume", "vol.nii.gz", write_volume_series, ("shape",), "a 4-D NIfTI")
    info_case("3-D volume", bad, ("shape",), "a 4-D NIfTI")
    # colour image
    bad = datalist_case("colour image", "CNV-999-1.png", write_colour, ("colour",), "an RGB PNG")
    info_case("colour image", bad, ("colour",), "an RGB PNG")
    # NaN
    bad = datalist_case("NaN", "CNV-999-1.tif", write_nan_tiff, ("NaN",), "a float TIFF with a NaN pixel")
    info_case("NaN", bad, ("NaN",), "a float TIFF with a NaN pixel")
    # unknown label: a CSV label that is not one of --classes; a multiply target naming a class the bundle lacks
    csv_src = root / "labels_unknown" / "labels.csv"
    csv_src.parent.mkdir()
    rows = [(p, c) for c in CLASSES for p in real[c]]
    for p, _ in rows:
        shutil.copyfile(p, csv_src.parent / p.name)
    with open(csv_src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "patient_id"])
        for i, (p, c) in enumerate(rows):
            w.writerow([p.name, "NORMLA" if i == 0 else c, patient[p]])
    cases.append(Case("unknown label", "datalist",
                      ["datalist", str(csv_src), "--output", str(out / "csv.json"), "--classes", ",".join(CLASSES), "--strict"],
                      rows[0][0].name, ("NORMLA",), "a CSV label NORMLA with --classes NORMAL,CNV"))  # fmt: skip
    cases.append(Case("unknown label", "multiply",
                      ["multiply", str(real_datalist), str(out / "mult_target"), "--bundle_root", str(bundle),
                       "--target", '{"MELANOMA": 2}', "--progress", "false"],
                      "MELANOMA", ("--target",), "--target naming a class neither knows"))  # fmt: skip
    # unreadable: a dangling symbolic link (root can read any file, so chmod cannot make one unreadable)
    bad = datalist_case("unreadable", "CNV-999-1.jpeg", lambda p: (p.symlink_to(root / "gone.jpeg"), p)[1], (),
                        "a dangling symbolic link")  # fmt: skip
    info_case("unreadable", bad, (), "a dangling symbolic link")
    multiply_case("unreadable", ckpts, ("is a folder",), "a folder as --ckpt_path")
    datalist_case("unreadable", "CNV-998-1.jpeg", lambda p: (os.mkfifo(p), p)[1], ("not a regular file",),
                  "a named pipe (FIFO) under an image name")  # fmt: skip
    # output equals input
    src = _class_tree(root / "src_output_is_input", real)
    victim = src / "CNV" / real["CNV"][0].name
    cases.append(Case("output equals input", "datalist", ["datalist", str(src), "--output", str(victim)],
                      victim.name, (), "--output naming a source image"))  # fmt: skip
    cases.append(Case("output equals input", "datalist",
                      ["datalist", str(csv_src), "--output", str(csv_src)],
                      csv_src.name, (), "--output naming the input CSV"))  # fmt: skip
    user_file = root / "notes.txt"
    user_file.write_text("my notes\n")
    cases.append(Case("output equals input", "phantom", ["phantom", str(user_file), "--exams", "2"],
                      user_file.name, (), "the output folder is a user's file"))  # fmt: skip
    mine = root / "my_data"
    (mine / "images" / "NORMAL").mkdir(parents=True)
    shutil.copyfile(jpeg, mine / "images" / "NORMAL" / jpeg.name)
    cases.append(Case("output equals input", "phantom", ["phantom", str(mine), "--exams", "2", "--overwrite"],
                      jpeg.name, (), "--overwrite on a folder of the user's own images"))  # fmt: skip
    cases.append(Case("output equals input", "multiply",
                      ["multiply", str(real_datalist), str(real_datalist), "--bundle_root", str(bundle),
                       "--progress", "false"],
                      real_datalist.name, (), "output_dir is the datalist"))  # fmt: skip
    # interrupted write: a datalist cut short, its .tmp leftover beside it
    cut = root / "interrupted" / "datalist.json"
    cut.parent.mkdir()
    text = real_datalist.read_text()
    cut.write_text(text[: len(text) // 2])
    (cut.parent / "datalist.json.tmp").write_text(text[: len(text) // 3])
    cases.append(Case("interrupted write", "multiply",
                      ["multiply", str(cut), str(out / "mult_cut"), "--bundle_root", str(bundle), "--progress", "false"],
                      str(cut), (), "a datalist cut short, .tmp beside it"))  # fmt: skip
    cases.append(Case("interrupted write", "evaluate", ["evaluate", str(cut), str(real_datalist), str(out / "eval_cut")],
                      str(cut), (), "a datalist cut short, .tmp beside it"))  # fmt: skip
    studies = root / "studies_cut"
    studies.mkdir()
    store_text = json.dumps({"name": "studies", "objects": {"a": {"image": {"ext": ".png", "info": {}}}}})
    (studies / "datastore_v2.json").write_text(store_text[:20])
    cases.append(Case("interrupted write", "review export",
                      ["review", "export", str(studies), str(out / "review_cut")],
                      "datastore_v2.json", (), "a datastore cut short"))  # fmt: skip
    # mistyped option: python-fire ran the command with the option's default, then said "Could not consume arg"
    from medicraft_monai.data.phantom import make_phantom_dataset

    phantom_set = root / "phantom_set"
    make_phantom_dataset(phantom_set, exams=2, height=32, width=64, progress=False)
    cases.append(Case("mistyped option", "phantom", ["phantom", str(phantom_set), "--exam", "3", "--overwrite"],
                      "--exam", ("did you mean --exams?",), "--exam for --exams, with --overwrite, on a phantom set"))  # fmt: skip
    src = _class_tree(root / "src_mistyped", real)
    cases.append(Case("mistyped option", "datalist",
                      ["datalist", str(src), "--output", str(out / "mistyped.json"), "--stirct"],
                      "--stirct", ("did you mean --strict?",), "--stirct for --strict"))  # fmt: skip
    cases.append(Case("mistyped option", "multiply",
                      ["multiply", str(real_datalist), str(out / "mult_mistyped"), "--bundle_root", str(bundle),
                       "--ckpt", str(ckpts / "random.pt"), "--progress", "false"],
                      "--ckpt", ("did you mean --ckpt_path?",), "--ckpt for --ckpt_path"))  # fmt: skip
    cases.append(Case("mistyped option", "evaluate",
                      ["evaluate", str(real_datalist), str(real_datalist), str(out / "eval_mistyped"), "--seed", "1"],
                      "--seed", ("did you mean --seeds?",), "--seed for --seeds"))  # fmt: skip
    cases.append(Case("mistyped option", "review export",
                      ["review", "export", str(store), str(out / "review_mistyped"), "--rules", "majority"],
                      "--rules", ("did you mean --rule?",), "--rules for --rule"))  # fmt: skip
    cases.append(Case("mistyped option", "info", ["info", "--fiel", str(jpeg)], "--fiel", ("did you mean --file?",),
                      "--fiel for --file"))  # fmt: skip
    assert {c.kind for c in cases} == set(KINDS), {c.kind for c in cases} ^ set(KINDS)
    return cases


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file and link under ``root`` -> its bytes' hash (a link -> its target), to prove nothing was lost."""
    import hashlib

    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
