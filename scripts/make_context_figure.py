"""Make the pictures of ``docs/context_restoration.md``.

- ``docs/images/context_restoration_disorder.png``: real OCT2017 B-scans (128 x 256) and ``ContextDisorder`` with
  16 x 16 patches and T = 5, 10 and 20 swaps (the histogram is unchanged, the context is broken);
- ``docs/images/context_restoration_phantom_labels.png``: phantom B-scans and their segmentation label maps
  (``build_phantom_segmentation_datalist``);
- with ``--label_efficiency_dir`` (the output folder of ``configs/label_efficiency.json``):
  ``context_restoration_before_after.png`` (held-out B-scans: corrupted, restored by the pretrained network,
  original) and ``context_restoration_label_efficiency.png`` (the plot), copied from that run.

Usage: ``python scripts/make_context_figure.py [--data ../shared/data/oct2017] [--label_efficiency_dir DIR]
[--out docs/images]``. Nothing of the real data set is written besides the figures.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from medicraft_monai.ssl import build_phantom_segmentation_datalist, load_items, oct_preprocessing
from medicraft_monai.transforms import ContextDisorder
from medicraft_monai.visualize import save_image_grid

REPO = Path(__file__).resolve().parents[1]


def disorder_figure(data: Path, out: Path) -> Path:
    items = load_items(data, "test")
    picks = [next(it for it in items if it["label"] == c) for c in (0, 3)]
    tf = oct_preprocessing((128, 256), crop_height=256)
    rows, labels = [], []
    for it in picks:
        img = tf(dict(it))["image"].numpy()
        row = [img[0]]
        for t in (5, 10, 20):
            row.append(ContextDisorder((16, 16), t).set_random_state(0)(img)[0])
        rows.append(row)
        labels.append(Path(it["image"]).parent.name)
    return save_image_grid(out / "context_restoration_disorder.png", rows, [f"{n}: T=0,5,10,20" for n in labels])


def phantom_figure(out: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        path = build_phantom_segmentation_datalist(tmp, n_exams=3, height=128, width=256, n_planes=2, progress=False)
        import json

        data = json.loads(path.read_text())
        items = [it for s in ("training", "validation", "test") for it in data[s]]
        chosen = [next(it for it in items if it["class_name"] == c) for c in ("healthy", "benign", "melanoma")]
        images = [np.asarray(Image.open(Path(tmp) / it["image"])) for it in chosen]
        labels = [np.asarray(Image.open(Path(tmp) / it["label"])).astype(np.float32) / 6.0 for it in chosen]
    return save_image_grid(
        out / "context_restoration_phantom_labels.png",
        [images, labels],
        ["B-scan", "labels 0-6"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "oct2017"))
    parser.add_argument("--label_efficiency_dir", default=None)
    parser.add_argument("--out", default=str(REPO / "docs" / "images"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(disorder_figure(Path(args.data), out))
    print(phantom_figure(out))
    if args.label_efficiency_dir:
        src = Path(args.label_efficiency_dir)
        for name, target in (
            ("pretrain/before_after.png", "context_restoration_before_after.png"),
            ("label_efficiency.png", "context_restoration_label_efficiency.png"),
        ):
            shutil.copyfile(src / name, out / target)
            print(out / target)


if __name__ == "__main__":
    main()
