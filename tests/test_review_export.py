"""``medicraft review export`` exports only synthetic images the app registered, inside the studies folder.

A crafted studies folder (the ``datastore_v2.json`` layout MONAI Label writes, as in tests/test_label_app.py) holds
one genuine accepted synthetic image and accepted entries that must be refused: a datastore id climbing out of the
folder (``../../../../etc/passwd``), an image outside it, a symbolic link inside it pointing out, a missing file,
a file whose bytes are not the ones the app recorded, and an image with no provenance (registered by hand as
synthetic). Each refusal is a warning naming the image and the reason and an entry of the report; none of them is
in the accepted datalist or counted as a synthetic image; the user's files are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from _subprocess import run_group

MEDICRAFT = [sys.executable, "-c", "from medicraft_monai.cli import main; main()"]
ACCEPT = [{"verdict": "accept", "reviewer": "Dr A", "anomalies": [], "comment": ""}]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(ext: str, sha256: str, provenance: bool = True) -> dict:
    prov = {"bundle": "oct_ddpm", "model_sha256": "ab" * 32, "class_name": "NORMAL", "label": 0, "seed": 1,
            "steps": 3, "guidance_scale": 1.0, "sampler": "ddim", "created": "2026-12-05T00:00:00"}  # fmt: skip
    info = {"synthetic": True, "class_name": "NORMAL", "label": 0, "sha256": sha256, "reviews": ACCEPT}
    if provenance:
        info["provenance"] = prov
    return {"image": {"ext": ext, "info": info}, "labels": {}}


def _tree(*roots: Path) -> dict[str, str]:
    return {
        str(p): (_sha(p) if p.is_file() else "link" if p.is_symlink() else "dir")
        for root in roots
        for p in sorted(root.rglob("*"))
    }


def test_review_export_refuses_images_outside_the_studies_folder_or_not_registered(
    tmp_path: Path, real_bscan_paths: list[Path]
) -> None:
    studies = tmp_path / "clinic" / "studies"
    studies.mkdir(parents=True)
    outside = tmp_path / "clinic" / "private"
    outside.mkdir()
    good = studies / "synthetic_NORMAL_000000_s1.png"
    shutil.copyfile(real_bscan_paths[0], good)
    secret = outside / "patient.png"
    shutil.copyfile(real_bscan_paths[1], secret)
    (studies / "escape.png").symlink_to(secret)
    tampered = studies / "tampered.png"
    shutil.copyfile(real_bscan_paths[2], tampered)
    manual = studies / "manual.png"
    shutil.copyfile(real_bscan_paths[3], manual)
    objects = {
        good.stem: _entry(".png", _sha(good)),
        "../../../../etc/passwd": _entry("", _sha(Path("/etc/passwd"))),
        "../private/patient": _entry(".png", _sha(secret)),
        "escape": _entry(".png", _sha(secret)),
        "gone": _entry(".png", "cd" * 32),
        "tampered": _entry(".png", "ef" * 32),
        "manual": _entry(".png", _sha(manual), provenance=False),
    }
    (studies / "datastore_v2.json").write_text(json.dumps({"name": "studies", "images_dir": ".", "objects": objects}))
    before = _tree(tmp_path / "clinic")

    out = tmp_path / "export"
    proc = run_group([*MEDICRAFT, "review", "export", str(studies), str(out), "--anatomy", "false"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    refused = {k for k in objects if k != good.stem}
    warned = [line for line in proc.stderr.splitlines() if "refused" in line]
    for image_id in refused:
        assert any(repr(image_id) in line for line in warned), (image_id, proc.stderr[-3000:])
    accepted = json.loads((out / "accepted_datalist.json").read_text())
    assert [(out / it["image"]).resolve() for it in accepted["training"]] == [good.resolve()]
    report = json.loads((out / "review_report.json").read_text())
    assert {r["image"] for r in report["refused"]} == refused
    reasons = {r["image"]: r["reason"] for r in report["refused"]}
    assert "outside the studies folder" in reasons["../../../../etc/passwd"]
    assert "outside the studies folder" in reasons["../private/patient"]
    assert "outside the studies folder" in reasons["escape"]
    assert "does not exist" in reasons["gone"]
    assert "not the bytes the app recorded" in reasons["tampered"]
    assert "no provenance" in reasons["manual"]
    assert all(im["image"] == good.stem for im in report["images"])
    assert report["summary"]["synthetic_images"] == 1 and report["summary"]["accepted"] == 1
    assert "refused" in (out / "review_report.md").read_text()
    assert "refused: 6 image(s)" in proc.stdout
    assert _tree(tmp_path / "clinic") == before


def test_review_export_compares_the_verdicts_with_the_stored_automated_checks(
    tmp_path: Path, real_bscan_paths: list[Path]
) -> None:
    """Four reviewed images with the checks the ``qa`` scoring method stored and one reviewed without: the report's
    confusion table and per-decision rates are exactly those of the stored records."""

    def qa(passed: bool, anatomy: bool, agrees: bool, memorised: bool) -> dict:
        return {"passed": passed, "reasons": [], "anatomy": {"passed": anatomy, "failures": []},
                "classifier": {"predicted": "NORMAL", "confidence": 0.9, "agrees": agrees,
                               "intended_probability": 0.9, "uncertainty": 0.2},
                "nearest_real": {"distance": 3.0, "threshold": 2.0, "memorised": memorised}, "error": None}  # fmt: skip

    reject = [{"verdict": "reject", "reviewer": "Dr A", "anomalies": ["absent_fovea"], "comment": ""}]
    cases = [  # (expert verdicts, stored checks)
        (ACCEPT, qa(True, True, True, False)),
        (ACCEPT, qa(False, False, True, False)),
        (reject, qa(False, False, False, True)),
        (reject, qa(True, True, True, False)),
        (ACCEPT, None),  # scored never: counted apart
    ]
    studies = tmp_path / "studies"
    studies.mkdir()
    objects = {}
    for k, (reviews, record) in enumerate(cases):
        path = studies / f"synthetic_NORMAL_00000{k}_s{k}.png"
        shutil.copyfile(real_bscan_paths[k], path)
        entry = _entry(".png", _sha(path))
        entry["image"]["info"]["reviews"] = reviews
        if record is not None:
            entry["image"]["info"]["qa"] = record
        objects[path.stem] = entry
    (studies / "datastore_v2.json").write_text(json.dumps({"name": "s", "images_dir": ".", "labels_dir": "labels",
                                                           "objects": objects}))  # fmt: skip
    out = tmp_path / "export"
    proc = run_group([*MEDICRAFT, "review", "export", str(studies), str(out)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    q = json.loads((out / "review_report.json").read_text())["automated_qa"]
    assert q["available"] is True and q["n"] == 4 and q["n_unscored"] == 1
    assert q["confusion"] == {"accept_pass": 1, "accept_fail": 1, "reject_pass": 1, "reject_fail": 1}
    assert q["agreement"] == 0.5 and q["kappa"] == 0.0
    assert q["by_decision"]["accept"] == {"n": 2, "anatomy_passed": 0.5, "classifier_agrees": 1.0, "memorised": 0.0}
    assert q["by_decision"]["reject"] == {"n": 2, "anatomy_passed": 0.5, "classifier_agrees": 0.5, "memorised": 0.5}
    md = (out / "review_report.md").read_text()
    assert "## Agreement with the stored automated checks" in md and "| expert rejects | 1 | 1 |" in md
