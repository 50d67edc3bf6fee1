"""Per-image anatomy checks of a folder or datalist: the "inference" of the evaluation bundle.

A medical team reviewing synthetic images (for example in MONAI Label) wants each image's automated verdict
beside its own; :func:`check_anatomy` writes it as ``anatomy.csv`` (one row per image, one column per check) and
``anatomy.json`` (the same plus the summary per class and per failure mode).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from medicraft_monai.data.datalist import load_datalist
from medicraft_monai.data.errors import EmptyDatasetError, OCTDataError
from medicraft_monai.data.io import SUPPORTED_SUFFIXES
from medicraft_monai.data.keys import OCTKeys

__all__ = ["check_anatomy", "collect_images"]


def collect_images(source: str | PathLike | Sequence[str]) -> list[dict[str, Any]]:
    """Datalist-style items (``image``, ``class_name``) of a datalist JSON (every split, every frame it lists), a
    folder (searched recursively; the class is the parent folder's name; the first frame of multi-frame DICOM files:
    make a datalist with ``medicraft datalist`` for all frames) or a list of image paths."""
    if not isinstance(source, (str, PathLike)):
        return [{OCTKeys.IMAGE: str(p), OCTKeys.CLASS_NAME: Path(p).parent.name} for p in source]
    path = Path(source)
    if path.is_file() and path.suffix == ".json":
        data = load_datalist(path, check=False)
        return [dict(it) for split in ("training", "validation", "test") for it in data.get(split, [])]
    if path.is_dir():
        suffixes = tuple(s for s in SUPPORTED_SUFFIXES if s)
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
        if not files:
            raise EmptyDatasetError(path, "no OCT images in this folder")
        return [{OCTKeys.IMAGE: str(p), OCTKeys.CLASS_NAME: p.parent.name} for p in files]
    if path.is_file():
        return [{OCTKeys.IMAGE: str(path), OCTKeys.CLASS_NAME: path.parent.name}]
    raise OCTDataError(path, "not found (give a datalist JSON, a folder of images or image files)")


def check_anatomy(
    images: str | PathLike | Sequence[str],
    output_dir: str | PathLike,
    profile: str = "phantom",
    image_size: Sequence[int] | None = None,
    crop_height: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the anatomy checks on every image and write ``anatomy.csv`` and ``anatomy.json`` to ``output_dir``.

    Args:
        images: a datalist JSON, a folder of images or a list of image paths.
        output_dir: where the table goes.
        profile: "phantom" or "spectralis" (see :func:`~medicraft_monai.evaluation.pipeline.anatomy_checker`).
        image_size: resize every image to (H, W) first (default: check each at its own size).
        crop_height: crop the rows around the retina first (as the generators' preprocessing does).
        progress: show a progress bar.

    Returns:
        ``{"csv", "json", "summary"}``; an unreadable image is a row with its error, the others are still checked.
    """
    from tqdm.auto import tqdm

    from medicraft_monai.evaluation.pipeline import anatomy_checker
    from medicraft_monai.metrics.anatomy import CHECKS, summarise
    from medicraft_monai.metrics.images import load_images

    items = collect_images(images)
    checker = anatomy_checker(profile)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, results, labels = [], [], []
    for item in tqdm(items, desc="anatomy checks", disable=not progress):
        row: dict[str, Any] = {"image": item[OCTKeys.IMAGE], "class_name": item.get(OCTKeys.CLASS_NAME, "")}
        try:
            if image_size is not None:
                x, _ = load_images([item], tuple(image_size), crop_height=crop_height, progress=False)
                image = x[0]
            else:
                from medicraft_monai.data.io import read_bscan

                image = read_bscan(item[OCTKeys.IMAGE], int(item.get(OCTKeys.FRAME, 0) or 0))[0]
            result = checker.check(image)
        except OCTDataError as err:
            rows.append({**row, "passed": "", "failures": "", "error": str(err)})
            continue
        results.append(result)
        labels.append(row["class_name"])
        rows.append(
            {
                **row,
                "passed": result.passed,
                "failures": ";".join(result.failures),
                "error": "",
                **{k: "" if result.checks.get(k) is None else result.checks[k] for k in CHECKS},
            }
        )
    fields = ["image", "class_name", "passed", "failures", *CHECKS, "error"]
    with open(out / "anatomy.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(results, labels) if results else {"n": 0}
    summary["errors"] = sum(1 for r in rows if r["error"])
    (out / "anatomy.json").write_text(
        json.dumps({"profile": profile, "checker": checker.settings(), "summary": summary, "images": rows}, indent=2)
    )
    return {"csv": str(out / "anatomy.csv"), "json": str(out / "anatomy.json"), "summary": summary}
