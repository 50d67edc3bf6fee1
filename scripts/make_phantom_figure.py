"""Make the phantom figures of docs/phantom.md.

* ``docs/images/phantom_exams.png``: one exam per class (rows), a few of its radial planes (columns), including
  the plane at 0 degrees, which crosses the optic nerve head of a right eye.
* ``docs/images/phantom_truth.png``: the ground truth drawn over two planes of the melanoma exam (layer boundaries,
  lesion and fluid masks, fovea, ONH, vessels) and the failure modes the phantom can inject.

Usage: ``python scripts/make_phantom_figure.py [--out docs/images] [--seed 0]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medicraft_monai.data.phantom import DEFECTS, LAYER_BOUNDARIES, OCTPhantom, PhantomConfig  # noqa: E402

PLANES = (0, 2, 3, 5)  # 0, 60, 90, 150 degrees


def save(fig, path: Path, dpi: int) -> Path:
    """Save a figure as a 256-colour PNG (a third of the size of a true-colour one, same look)."""
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(256).save(path, optimize=True)
    return path


def pick_seed(phantom: OCTPhantom, class_name: str, start: int) -> int:
    """The first seed from ``start`` whose lesion shows clearly in at least two of the shown planes."""
    if phantom.lesion_kind(class_name) == "healthy":
        return start
    for seed in range(start, start + 200):
        exam = phantom.generate_exam(seed, class_name, "R")
        if sum(exam.truths[k].lesion_mask.sum() > 800 for k in PLANES) >= 2:
            return seed
    return start


def exams_figure(phantom: OCTPhantom, seed: int, out: Path) -> Path:
    classes = list(phantom.config.classes)
    fig, axes = plt.subplots(len(classes), len(PLANES), figsize=(4.2 * len(PLANES), 2.35 * len(classes)))
    for r, cls in enumerate(classes):
        s = pick_seed(phantom, cls, seed)
        exam = phantom.generate_exam(s, cls, "R")
        for c, k in enumerate(PLANES):
            ax = axes[r, c]
            ax.imshow(exam.images[k], cmap="gray", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
            t = exam.truths[k]
            note = " (ONH)" if t.has_onh else ""
            ax.set_title(f"{cls}  {exam.plane_angles[k]:.0f}\N{DEGREE SIGN}{note}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("OCT phantom: one right-eye exam per class, 4 of its 12 radial planes", fontsize=12)
    fig.tight_layout()
    return save(fig, out / "phantom_exams.png", dpi=72)


def truth_figure(phantom: OCTPhantom, seed: int, out: Path) -> Path:
    s = pick_seed(phantom, "melanoma", seed)
    exam = phantom.generate_exam(s, "melanoma", "R")
    sizes = [t.lesion_mask.sum() for t in exam.truths]
    shown = [0, int(np.argmax(sizes[1:6])) + 1]
    fig = plt.figure(figsize=(16, 9.5))
    grid = fig.add_gridspec(3, 6)
    colours = plt.cm.turbo(np.linspace(0.05, 0.95, len(LAYER_BOUNDARIES)))
    for i, k in enumerate(shown):
        ax = fig.add_subplot(grid[0, 3 * i : 3 * i + 3])
        t = exam.truths[k]
        ax.imshow(exam.images[k], cmap="gray", vmin=0, vmax=1, aspect="auto")
        cols = np.arange(len(t.layers["ILM"]))
        for name, colour in zip(LAYER_BOUNDARIES, colours):
            ax.plot(cols, t.layers[name], lw=0.8, color=colour, label=name)
        overlay = np.zeros((*t.lesion_mask.shape, 4))
        overlay[t.lesion_mask] = (1.0, 0.2, 0.2, 0.35)
        overlay[t.fluid_mask] = (0.2, 0.6, 1.0, 0.6)
        ax.imshow(overlay, aspect="auto")
        for f in t.fovea_columns:
            ax.axvline(f, color="yellow", lw=0.8, ls="--")
        if t.onh_columns:
            ax.axvspan(*t.onh_columns, color="lime", alpha=0.15)
        for vc in t.vessel_columns:
            ax.plot(vc, 4, marker="v", color="orange", ms=5)
        ax.set_title(
            f"melanoma {exam.plane_angles[k]:.0f}\N{DEGREE SIGN}: boundaries, lesion (red), fluid (blue), "
            "fovea (yellow), ONH (green), vessels (orange)",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            ax.legend(fontsize=6, ncol=2, loc="lower left")
    for j, defect in enumerate(DEFECTS):
        exam = phantom.generate_exam(seed, "healthy", "R", defect=defect)
        k = 0
        if defect == "abnormal_vessel_diameter":
            k = next(i for i, t in enumerate(exam.truths) if t.vessel_abnormal.any())
        ax = fig.add_subplot(grid[1 + j // 3, 2 * (j % 3) : 2 * (j % 3) + 2])
        ax.imshow(exam.images[k], cmap="gray", vmin=0, vmax=1, aspect="auto")
        t = exam.truths[k]
        for f in t.fovea_columns:
            ax.axvline(f, color="yellow", lw=0.8, ls="--")
        for vc, ab in zip(t.vessel_columns, t.vessel_abnormal):
            if ab:
                ax.plot(vc, 4, marker="v", color="red", ms=7)
        ax.set_title(f"defect: {defect} ({exam.plane_angles[k]:.0f}\N{DEGREE SIGN})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return save(fig, out / "phantom_truth.png", dpi=66)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "images"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    phantom = OCTPhantom(PhantomConfig())
    for path in (exams_figure(phantom, args.seed, out), truth_figure(phantom, args.seed, out)):
        print(path)


if __name__ == "__main__":
    main()
