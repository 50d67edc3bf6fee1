"""Make the figure of docs/anatomy_checks.md: ``docs/images/anatomy_checks.png``.

Phantom B-scans (256 x 512, a clean plane and one per injected failure mode) and real OCT2017 B-scans, each with the
detected ILM (cyan) and Bruch's membrane (yellow), the foveal pits (red triangles), the ONH run (green) and the
vessel shadows near the fovea (orange), titled with the truth and the checks that failed.

Usage: ``python scripts/make_anatomy_figure.py [--out docs/images] [--seed 4242] [--oct2017 ../shared/data/oct2017]``
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medicraft_monai.data.io import read_bscan  # noqa: E402
from medicraft_monai.data.phantom import DEFECTS, OCTPhantom, PhantomConfig  # noqa: E402
from medicraft_monai.metrics.anatomy import AnatomyChecker, AnatomyResult  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL = ("NORMAL", "DME")


def save(fig, path: Path, dpi: int) -> Path:
    """Save a figure as a 256-colour PNG."""
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(256).save(path, optimize=True)
    return path


def draw(ax, image: np.ndarray, res: AnatomyResult, title: str, col_mm: float) -> None:
    ax.imshow(image, cmap="gray", aspect="auto", interpolation="nearest")
    ilm, bm = res.boundaries["ILM"], res.boundaries["BM"]
    cols = np.arange(image.shape[1])
    ax.plot(cols, ilm, color="cyan", lw=0.7)
    ax.plot(cols, bm, color="yellow", lw=0.7)
    m = res.measurements
    for p in m["pits"]:
        ax.plot(p["column"], ilm[p["column"]] - 0.04 * image.shape[0], marker="v", color="red", ms=6)
    if m["onh_columns"]:
        ax.axvspan(*m["onh_columns"], color="lime", alpha=0.2)
    for v in m["vessel_shadows"]:
        ax.plot(v["column"], 0.97 * image.shape[0], marker="^", color="orange", ms=4 + 30 * v["width_mm"])
    flags = ", ".join(res.failures) if res.failures else "all pass"
    ax.set_title(f"{title}\nfailed: {flags}", fontsize=8, color="darkred" if res.failures else "darkgreen")
    ax.set_xticks([])
    ax.set_yticks([])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "images"))
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--oct2017", default=str(REPO.parent / "shared" / "data" / "oct2017"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    config = PhantomConfig()
    phantom = OCTPhantom(config)
    checker = AnatomyChecker.for_phantom(config)
    col_mm = config.scan_length_mm / config.width
    panels = []
    for defect in (None, *DEFECTS):
        exam = phantom.generate_exam(args.seed, "healthy", "R", defect=defect)
        k = 0 if defect in (None, "absent_onh") else 2  # plane 0 of a right eye should cross the ONH
        if defect == "abnormal_vessel_diameter":
            k = next(i for i, t in enumerate(exam.truths) if t.vessel_abnormal.any())
        res = checker.check(exam.images[k], expect_onh=True if k == 0 else None)
        angle = exam.plane_angles[k]
        panels.append(
            (exam.images[k], res, f"phantom, truth: {defect or 'clean'} ({angle:.0f}\N{DEGREE SIGN})", col_mm)
        )
    real = AnatomyChecker.for_spectralis()
    manifest = Path(args.oct2017) / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        for label in REAL:
            row = next(r for r in rows if r["label"] == label and r["width"] == "512")
            img, _ = read_bscan(Path(args.oct2017) / row["file"])
            img = img.astype(np.float32) / 255.0
            res = real.check(img)
            panels.append((img, res, f"OCT2017 {label} ({Path(row['file']).name})", 6.0 / img.shape[1]))

    n_cols = 3
    n_rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.2 * n_cols, 2.6 * n_rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        draw(ax, *panel)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        "Anatomy checks: ILM (cyan), BM (yellow), foveal pits (red), ONH (green), vessel shadows near the fovea "
        "(orange, size ~ width)",
        fontsize=10,
    )
    fig.tight_layout()
    print(save(fig, out / "anatomy_checks.png", dpi=70))


if __name__ == "__main__":
    main()
