"""Make the imbalance-study figure and table of docs/evaluation.md: ``docs/images/oct2017_imbalance_study.png``.

Reads the ``metrics.json`` of ``medicraft evaluate`` runs that cut one class of the real training split (the
``imbalance`` setting) and draws, per run, the minority class's recall and F1 and the balanced accuracy of the four
remedies (imbalanced real alone, class weighting, oversampling, real + synthetic), mean +- std over the seeds, with
TRTR (the full real training split) as a dashed line. Prints the same numbers as a Markdown table, with TRTR,
TSTR, TRTS and the real-vs-synthetic detector's AUC, and whether real + synthetic beats each remedy on the minority
class by more than the seed spread.

Usage: ``python scripts/make_imbalance_figure.py RUN_DIR [RUN_DIR ...] [--out docs/images/oct2017_imbalance_study.png]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medicraft_monai.evaluation.utility import IMBALANCE_EXPERIMENTS  # noqa: E402

LABELS = {
    "real_imbalanced": "real alone",
    "real_imbalanced_weighted": "class weights",
    "real_imbalanced_oversampled": "oversampling",
    "real_imbalanced_plus_synthetic": "real + synthetic",
}


def load_utility(run: Path) -> dict:
    """The utility block of a finished evaluation; a clear error when the run has none or cut no class."""
    path = run / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.json (is the evaluation finished?)")
    util = json.loads(path.read_text()).get("utility")
    if not util or not util.get("minority"):
        raise ValueError(f"{path}: no imbalance study in this evaluation (set 'imbalance' and run the utility study)")
    return util


def _ms(cell: dict) -> str:
    return "n/a" if cell.get("mean") is None else f"{cell['mean']:.3f} +- {cell.get('std') or 0.0:.3f}"


def markdown(util: dict) -> str:
    """The run's figures as Markdown: one row per experiment, then the minority verdicts."""
    (cls, block), *_ = util["minority"].items()
    ex = util["experiments"]
    rows = [
        f"| experiment | training images | balanced accuracy | {cls} recall | {cls} F1 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in ("TRTR", "TSTR", "TRTS", *IMBALANCE_EXPERIMENTS):
        m = ex[name]["metrics"]
        size = int(np.mean(ex[name]["train_size"]))
        rows.append(
            f"| {LABELS.get(name, name)} | {size} | {_ms(m['balanced_accuracy'])} | {_ms(m['recall'][cls])} "
            f"| {_ms(m['f1'][cls])} |"
        )
    det = util.get("detectability")
    if det:
        rows.append(f"\nreal-vs-synthetic detector AUC: {_ms(det['auc'])}")
    for other, verdict in block["synthetic_beats"].items():
        words = ", ".join(
            f"{metric} {'beats' if v['beats'] else 'does not beat'} ({v['difference']:+.3f}, spread {v['spread']:.3f})"
            for metric, v in verdict.items()
        )
        rows.append(f"\nreal + synthetic against {LABELS[other]}: {words}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images/oct2017_imbalance_study.png"))
    args = parser.parse_args()

    utils = [load_utility(r) for r in args.runs]
    for run, util in zip(args.runs, utils):
        print(f"## {run}\n\n{markdown(util)}\n")
    fig, axes = plt.subplots(1, len(utils), figsize=(5.2 * len(utils), 3.6), squeeze=False, constrained_layout=True)
    x = np.arange(3)
    width = 0.8 / len(IMBALANCE_EXPERIMENTS)
    for ax, util in zip(axes[0], utils):
        (cls, block), *_ = util["minority"].items()
        ex = util["experiments"]
        for k, name in enumerate(IMBALANCE_EXPERIMENTS):
            cells = [block["recall"][name], block["f1"][name], ex[name]["metrics"]["balanced_accuracy"]]
            ax.bar(
                x + (k - (len(IMBALANCE_EXPERIMENTS) - 1) / 2) * width,
                [c["mean"] for c in cells],
                width,
                yerr=[c["std"] or 0.0 for c in cells],
                capsize=3,
                label=LABELS[name],
            )
        trtr = ex["TRTR"]["metrics"]["balanced_accuracy"]["mean"]
        ax.axhline(trtr, color="k", ls="--", lw=1, label=f"TRTR balanced acc. {trtr:.2f}")
        ax.set_xticks(x, [f"{cls} recall", f"{cls} F1", "balanced accuracy"])
        ax.set_ylim(0, 1)
        ax.set_title(
            f"{cls} cut to {block['fraction_kept']:.0%} of its training images ({len(util['seeds'])} seeds)",
            fontsize=10,
        )
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
