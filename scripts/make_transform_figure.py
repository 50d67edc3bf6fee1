"""Make ``docs/images/transforms.png``: one real B-scan of the OCT2017 sample through each OCT transform.

Panels: the loaded B-scan with the detected ILM and Bruch's membrane, ``ScaleOCTIntensity``,
``RandOCTSpeckleNoise`` (gamma, 1 look), ``RetinaCrop``, ``FlattenRetina``, ``LateralityFlip`` and ``OCTResize``
(fit, padded) as one pipeline, each panel the output of the previous one.

Usage: ``python scripts/make_transform_figure.py [--data ../shared/data/oct2017] [--file DME/DME-5802218-1.jpeg]
[--out docs/images/transforms.png]``. Nothing of the real data set is written besides the figure.
"""

from __future__ import annotations

import argparse
from io import BytesIO
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from medicraft_monai.data.io import LoadOCTImage  # noqa: E402
from medicraft_monai.transforms import (  # noqa: E402
    CROP_START_KEY,
    FlattenRetina,
    LateralityFlip,
    OCTResize,
    RandOCTSpeckleNoise,
    RetinaCrop,
    ScaleOCTIntensity,
    detect_retina_boundaries,
    get_flatten_shifts,
)

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "oct2017")
    parser.add_argument("--file", default="DME/DME-5802218-1.jpeg", help="B-scan, relative to --data")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "transforms.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    raw = LoadOCTImage()(args.data / args.file)
    raw.meta["laterality"], raw.meta["plane_angle"] = "L", 30.0  # the sample has neither; set for the flip panel
    ilm, bm = detect_retina_boundaries(raw)
    scaled = ScaleOCTIntensity()(raw)
    noisy = RandOCTSpeckleNoise(prob=1.0, looks=1.0, dynamic_range_db=45.0).set_random_state(args.seed)(scaled)
    cropped = RetinaCrop(height=256)(scaled)
    start = cropped.meta[CROP_START_KEY]
    flat = FlattenRetina()(cropped)
    flipped = LateralityFlip(to_laterality="R")(flat)
    resized = OCTResize((128, 256))(flipped)
    content = resized.applied_operations[-1]["extra_info"]["resized"]

    panels = [
        (raw[0] / 255.0, f"loaded {tuple(raw.shape)}, 8-bit; detected ILM (red) and BM (cyan)", (ilm, bm)),
        (scaled[0], "ScaleOCTIntensity (auto: bit_depth 8 -> / 255)", None),
        (noisy[0], "RandOCTSpeckleNoise (gamma, 1 look, in the linear domain)", None),
        (cropped[0], f"RetinaCrop(height=256): rows {start}-{start + cropped.shape[1]}", (ilm - start, bm - start)),
        (flat[0], f"FlattenRetina: BM on row {flat.meta['retina_flatten_target_row']:.0f}", None),
        (
            flipped[0],
            f"LateralityFlip(to_laterality='R'): L at 30 deg -> {flipped.meta['laterality']} at "
            f"{flipped.meta['plane_angle']:.0f} deg",
            None,
        ),
        (resized[0], f"OCTResize((128, 256), mode='fit'): {content[0]} x {content[1]} content, padded", None),
    ]
    fig, axes = plt.subplots(4, 2, figsize=(12, 12.5), gridspec_kw={"height_ratios": [1.9, 1.9, 1, 1]})
    order = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0)]
    for (img, title, curves), (r, c) in zip(panels, order):
        ax = axes[r, c]
        ax.imshow(np.asarray(img), cmap="gray", vmin=0.0, vmax=1.0, aspect="equal", interpolation="antialiased")
        if curves is not None:
            ax.plot(curves[0], color="red", lw=0.8)
            ax.plot(curves[1], color="cyan", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    shifts = get_flatten_shifts(flat)
    ax = axes[3, 1]
    ax.plot(shifts, color="black")
    ax.set_title("FlattenRetina: per-column shift (rows), kept for inverse()", fontsize=9)
    ax.set_xlabel("column")
    ax.grid(alpha=0.3)
    fig.suptitle(f"OCT transforms on a real B-scan ({args.file}, OCT2017 sample, CC BY 4.0)", fontsize=11)
    fig.tight_layout()
    buf = BytesIO()
    fig.savefig(buf, dpi=72)
    plt.close(fig)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.open(buf).convert("RGB").quantize(colors=256).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
