"""The evaluation report: ``report.md`` with PNG figures, written from the metrics of one evaluation.

Every number in the report is also in ``metrics.json``; this module only lays them out, beside the same numbers
for real data wherever there is one (real test images against real training images are what "as good as real"
looks like), and draws the figures people would rather look at than read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_report"]

DOCS = "docs/evaluation.md"
"""Where the user guide explains every number (in the medicraft_monai checkout)."""


def _f(value: Any, digits: int = 3) -> str:
    """A number for a table ("n/a" for missing or NaN)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}g}" if abs(v) >= 1000 or (v != 0 and abs(v) < 1e-3) else f"{v:.{digits}f}"


def _pct(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{100 * value:.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _mean_std(summary: Mapping[str, Any] | None) -> str:
    if not summary or summary.get("mean") is None:
        return "n/a"
    std = summary.get("std")
    return f"{summary['mean']:.3f}" + (f" ± {std:.3f}" if std else "")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _bar_chart(
    path: Path,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    ylabel: str,
    title: str,
    errors=None,
) -> Path:
    """Grouped bars: one group per entry of ``groups``, one bar per series."""
    plt = _plt()
    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) + 2), 3.4), constrained_layout=True)
    for k, (name, values) in enumerate(series.items()):
        vals = [np.nan if v is None else float(v) for v in values]
        err = None if errors is None else [0.0 if e is None else float(e) for e in errors[name]]
        ax.bar(x + (k - (n - 1) / 2) * width, vals, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(x, groups, rotation=20 if max(len(g) for g in groups) > 8 else 0, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------ sections
def _overview(m: Mapping[str, Any]) -> list[str]:
    data = m["data"]
    names = data["class_names"]
    rows = [[c, *(data["counts"][s][c] for s in ("real_training", "real_test", "synthetic"))] for c in names]
    rows.append(["**all**", *(sum(data["counts"][s].values()) for s in ("real_training", "real_test", "synthetic"))])
    prov = data.get("synthetic_provenance") or {}
    made = ", ".join(f"{k} {prov[k]}" for k in ("bundle", "sampler", "steps", "guidance_scale") if k in prov)
    lines = [
        "## What was compared",
        "",
        f"- real data: `{data['real_datalist']}` (training split: what the generator saw; test split: other patients)",
        f"- synthetic data: `{data['synthetic_datalist']}`" + (f" ({made})" if made else ""),
        f"- every image compared at {data['image_size'][0]} x {data['image_size'][1]} pixels",
        "",
    ]
    return lines + _table(["class", "real training", "real test", "synthetic"], rows)


def _at_a_glance(m: Mapping[str, Any]) -> list[str]:
    rows = []
    fid = m.get("fidelity") or {}
    if fid:
        o, r = fid["overall"], fid["real_test_reference"]
        rows.append(
            ["Frechet distance (features)", _f(o.get("frechet_distance")), _f(r.get("frechet_distance")), "lower"]
        )
        rows.append(["precision", _f(o.get("precision")), _f(r.get("precision")), "higher (realism)"])
        rows.append(["recall", _f(o.get("recall")), _f(r.get("recall")), "higher (coverage of real variety)"])
        so, sr = o.get("nearest_real_ssim") or {}, r.get("nearest_real_ssim") or {}
        rows.append(
            ["SSIM to nearest real image (median)", _f(so.get("median")), _f(sr.get("median")), "close to real"]
        )
    div = m.get("diversity")
    if div:

        def mean_of(block: Mapping[str, Any]) -> float | None:
            vals = [v["mean"] for v in block.values() if v and v.get("mean") is not None]
            return float(np.mean(vals)) if vals else None

        rows.append(
            [
                "MS-SSIM within class (mean)",
                _f(mean_of(div["synthetic"])),
                _f(mean_of(div["real"])),
                "close to real (higher: collapse)",
            ]
        )
    priv = m.get("privacy")
    if priv:
        feats = priv["spaces"]["features"]
        rows.append(
            [
                "closer to a training image than 1% of real pairs",
                _pct(feats.get("fraction_below")),
                _pct(feats.get("nominal_fraction")),
                "close to nominal",
            ]
        )
    ana = m.get("anatomy")
    if ana:
        rows.append(
            [
                "anatomy checks passed",
                _pct(ana["synthetic"].get("pass_rate")),
                _pct(ana["real_test"].get("pass_rate")),
                "close to real",
            ]
        )
    util = m.get("utility")
    if util:
        ex = util["experiments"]
        trtr, tstr = ex["TRTR"]["metrics"]["balanced_accuracy"], ex["TSTR"]["metrics"]["balanced_accuracy"]
        rows.append(
            [
                "balanced accuracy on real test: trained on synthetic (TSTR) / real (TRTR)",
                _mean_std(tstr),
                _mean_std(trtr),
                "close to TRTR",
            ]
        )
        if "real_imbalanced_plus_synthetic" in ex:
            a = ex["real_imbalanced_plus_synthetic"]["metrics"]["balanced_accuracy"]
            b = ex["real_imbalanced"]["metrics"]["balanced_accuracy"]
            rows.append(
                [
                    "balanced accuracy: imbalanced real + synthetic / imbalanced real alone",
                    _mean_std(a),
                    _mean_std(b),
                    "higher with synthetic",
                ]
            )
    if not rows:
        return []
    lines = ["## At a glance", "", "Synthetic beside the same number for real data (held-out real patients).", ""]
    lines += _table(["measure", "synthetic", "real reference", "better is"], rows)
    if priv:
        lines += [f"**Privacy verdict:** {priv['verdict']}.", ""]
    return lines


def _utility(m: Mapping[str, Any], out: Path) -> list[str]:
    util = m.get("utility")
    if not util:
        return ["## Utility", "", "Not run (`utility: false`).", ""]
    names = util["class_names"]
    ex = util["experiments"]
    metrics = ("accuracy", "balanced_accuracy", "macro_f1")
    rows = []
    for name, e in ex.items():
        why = e.get("not_comparable")
        rows.append(
            [
                name,
                e["description"],
                _f(float(np.mean(e["train_size"])), 0),
                *((f"not comparable: {why}" if why else _mean_std(e["metrics"].get(k))) for k in metrics),
            ]
        )
    lines = [
        "## Utility: do classifiers learn from the synthetic images?",
        "",
        f"The `oct_classifier` bundle trained {len(util['seeds'])} times per experiment (seeds {util['seeds']}); "
        "mean ± sample standard deviation. Test sets are the real test split (other patients) except for TRTS.",
        "",
    ]
    lines += _table(["experiment", "meaning", "training images", "accuracy", "balanced accuracy", "macro F1"], rows)
    if util.get("imbalance"):
        lines += [f"Imbalance experiment: fraction of real training images kept per class {util['imbalance']}.", ""]
    auc_rows = [[name, *(_mean_std(e["metrics"]["auc"].get(c)) for c in names)] for name, e in ex.items()]
    lines += ["Per-class AUC (one vs rest):", ""] + _table(["experiment", *names], auc_rows)
    from medicraft_monai.metrics.classification import save_confusion_matrix

    bars = _bar_chart(
        out / "figures" / "utility.png",
        list(ex),
        {"balanced accuracy": [e["metrics"]["balanced_accuracy"]["mean"] for e in ex.values()]},
        "balanced accuracy",
        "Classifier utility (mean over seeds, error bar: std)",
        errors={"balanced accuracy": [e["metrics"]["balanced_accuracy"]["std"] for e in ex.values()]},
    )
    lines += [f"![utility]({bars.relative_to(out)})", "", "Confusion matrices (mean over seeds, rows: true class):", ""]
    for name, e in ex.items():
        if e.get("confusion_matrix_mean") is None:
            lines += [f"{name}: not comparable ({e.get('not_comparable')}), no matrix.", ""]
            continue
        png = save_confusion_matrix(
            e["confusion_matrix_mean"], names, out / "figures" / f"confusion_{name}.png", title=name
        )
        lines += [f"![{name}]({png.relative_to(out)})", ""]
    return lines + _minority(util) + _detectability(util)


def _minority(util: Mapping[str, Any]) -> list[str]:
    """The imbalance study per subsampled class: recall and F1 of each remedy, and whether synthetic images win."""
    minority = util.get("minority")
    if not minority:
        return []
    lines = [
        "### The minority classes: synthetic images against the usual remedies",
        "",
        "Recall and F1 of each subsampled class, mean ± std over seeds. *Beats* means real + synthetic is higher "
        "by more than the larger seed standard deviation.",
        "",
    ]
    for cls, block in minority.items():
        rows = [
            [exp, _mean_std(block["recall"][exp]), _mean_std(block["f1"][exp])]
            + [_verdict(block["synthetic_beats"].get(exp, {}).get(m)) for m in ("recall", "f1")]
            for exp in block["recall"]
        ]
        lines += [f"**{cls}** ({block['fraction_kept']:.0%} of its real training images kept):", ""]
        lines += _table(["experiment", "recall", "F1", "real + synthetic beats it (recall)", "(F1)"], rows)
    return lines


def _verdict(beats: Mapping[str, Any] | None) -> str:
    if not beats:
        return ""
    if beats.get("beats") is None:
        return str(beats.get("reason") or "n/a")
    return f"{'yes' if beats['beats'] else 'no'} ({beats['difference']:+.3f}, spread {beats['spread']:.3f})"


def _detectability(util: Mapping[str, Any]) -> list[str]:
    """The real-vs-synthetic detector's AUC."""
    det = util.get("detectability")
    if not det:
        return []
    auc = f"not comparable: {det['not_comparable']}" if det.get("not_comparable") else _mean_std(det["auc"])
    return [
        "### Can a classifier tell synthetic images from real ones?",
        "",
        f"The same classifier trained on real training images against {det['synthetic_train_fraction']:.0%} of the "
        f"synthetic images ({_f(float(np.mean(det['train_size'])), 0)} images), tested on the real test split "
        f"against the held-out synthetic images ({_f(float(np.mean(det['test_size'])), 0)} images): AUC of "
        f"'synthetic' **{auc}** (0.5: indistinguishable, 1.0: every image told apart).",
        "",
    ]


def _features(m: Mapping[str, Any]) -> list[str]:
    """The feature extractor of the fidelity and privacy numbers: which network, which file (by its SHA-256)."""
    feat = m.get("features")
    if not feat:
        return []
    size = feat.get("input_size")
    rows = [
        ["extractor", feat.get("extractor", "n/a")],
        ["setting", f"`{feat.get('spec', 'n/a')}`"],
        ["weights file", f"`{feat['file']}`" if feat.get("file") else "none (no learned weights)"],
        ["SHA-256", f"`{feat['sha256']}`" if feat.get("sha256") else "n/a"],
        ["dimension", _f(feat.get("dimension"))],
        [
            "input",
            f"{size[0]} x {size[1]} ({feat.get('resize_mode')} from the comparison size), intensities "
            f"{feat.get('input_range')}"
            if size
            else "the comparison size",
        ],
    ]
    lines = [
        "## Features",
        "",
        "The Frechet distance, KID, precision/recall, density/coverage and the feature-space privacy audit are "
        "measured in the feature space of this network. Numbers compare across runs only when the SHA-256 is the same.",
        "",
        "| | |",
        "| --- | --- |",
    ]
    return lines + [f"| {k} | {v} |" for k, v in rows] + [""]


def _fidelity(m: Mapping[str, Any]) -> list[str]:
    fid = m.get("fidelity")
    if not fid:
        return []
    feat = m.get("features") or {}
    keys = ("frechet_distance", "kid_mean", "precision", "recall", "density", "coverage")
    rows = [
        ["synthetic vs real training", *(_f(fid["overall"].get(k)) for k in keys)],
        ["real test vs real training (reference)", *(_f(fid["real_test_reference"].get(k)) for k in keys)],
    ]
    for c, block in (fid.get("per_class") or {}).items():
        rows.append([f"{c}: synthetic vs real", *(_f(block.get(k)) if block else "too few" for k in keys)])
    lines = [
        "## Fidelity: do the synthetic images look like real ones?",
        "",
        f"Features: {feat.get('extractor', 'n/a')} ({feat.get('dimension', '?')} dimensions, SHA-256 "
        f"{str(feat.get('sha256') or 'n/a')[:12]}; see Features). Per-class rows compare "
        "a class's synthetic images with its real training images; small sets inflate the Frechet distance.",
        "",
    ]
    lines += _table(["comparison", "Frechet distance", "KID", "precision", "recall", "density", "coverage"], rows)
    ssim_rows = []
    for label, key in (("synthetic", "overall"), ("real test (reference)", "real_test_reference")):
        s = fid[key].get("nearest_real_ssim") or {}
        ssim_rows.append([label, *(_f(s.get(k)) for k in ("median", "mean", "p5", "p95", "max"))])
    lines += ["SSIM of each image to its most similar real training image:", ""]
    return lines + _table(["images", "median", "mean", "5th pct", "95th pct", "max"], ssim_rows)


def _diversity(m: Mapping[str, Any], out: Path) -> list[str]:
    div = m.get("diversity")
    if not div:
        return []
    names = m["data"]["class_names"]
    rows = []
    for c in names:
        s, r = div["synthetic"].get(c), div["real"].get(c)
        rows.append([c, _f(s and s.get("mean")), _f(r and r.get("mean")), _f(s and s.get("n_pairs"), 0)])
    png = _bar_chart(
        out / "figures" / "diversity.png",
        names,
        {
            "synthetic": [(div["synthetic"].get(c) or {}).get("mean") for c in names],
            "real": [(div["real"].get(c) or {}).get("mean") for c in names],
        },
        "mean pairwise MS-SSIM",
        "Similarity within each class (higher = less diverse)",
    )
    lines = [
        "## Diversity: are the synthetic images varied?",
        "",
        "Mean MS-SSIM over random pairs of images of the same class. Mode collapse shows as synthetic values well "
        "above the real ones.",
        "",
    ]
    return lines + _table(["class", "synthetic", "real", "pairs"], rows) + [f"![diversity]({png.relative_to(out)})", ""]


def _privacy(m: Mapping[str, Any], out: Path) -> list[str]:
    priv = m.get("privacy")
    if not priv:
        return []
    rows = []
    for name, sp in priv["spaces"].items():
        rows.append(
            [
                name,
                _f(sp.get("threshold")),
                _pct(sp.get("fraction_below")),
                _f(sp.get("p_value")),
                _f(sp.get("n_exact_copies"), 0),
                _f(sp.get("median_ratio")),
                "**yes**" if sp.get("flagged") else "no",
            ]
        )
    lines = [
        "## Privacy: does any synthetic image copy a training image?",
        "",
        f"For each synthetic image, its distance to the nearest real training image; the threshold is percentile "
        f"{priv['percentile']:g} of the same distance for real test images (other patients). A space is flagged when "
        f"more than {priv['max_fraction']:.0%} of the synthetic images fall below it.",
        "",
    ]
    lines += _table(
        [
            "space",
            "threshold",
            "synthetic below",
            "p-value",
            "exact copies",
            "median distance ratio (synthetic / real)",
            "flagged",
        ],
        rows,
    )
    lines += [f"**Verdict:** {priv['verdict']}.", ""]
    n_test = priv["spaces"]["features"].get("n_test") or 0
    if n_test and n_test * priv["percentile"] / 100 < 1:
        lines += [
            f"Note: the threshold comes from only {n_test} held-out real images, so percentile {priv['percentile']:g} is "
            "about their minimum distance; a few synthetic images below it can be chance (see the p-value). More "
            "held-out images make the audit sharper.",
            "",
        ]
    for name in priv["spaces"]:
        png = out / "figures" / f"closest_pairs_{name}.png"
        if png.is_file():
            lines += [
                f"Closest pairs in {name} space (synthetic left, training image right):",
                "",
                f"![closest pairs {name}]({png.relative_to(out)})",
                "",
            ]
    return lines


def _anatomy(m: Mapping[str, Any], out: Path) -> list[str]:
    ana = m.get("anatomy")
    if not ana:
        return ["## Anatomy", "", "Not run (`anatomy: false`).", ""]
    syn, real = ana["synthetic"], ana["real_test"]
    checks = list(syn["failure_rate"])
    names = m["data"]["class_names"]
    rows = [["all", _pct(syn["pass_rate"]), _pct(real["pass_rate"]), syn["n"], real["n"]]]
    for c in names:
        s, r = (syn.get("per_class") or {}).get(c), (real.get("per_class") or {}).get(c)
        rows.append([c, _pct(s and s["pass_rate"]), _pct(r and r["pass_rate"]), s["n"] if s else 0, r["n"] if r else 0])
    lines = [
        "## Anatomy: are the synthetic B-scans anatomically plausible?",
        "",
        "Automated checks per B-scan (retina boundaries, foveal pit, optic nerve head, corruption, vessel shadows). "
        "Real test images are checked the same way: their failures are the checks' false alarms on this data.",
        "",
    ]
    lines += _table(["class", "synthetic passing", "real passing", "synthetic images", "real images"], rows)
    fr = [[k, _pct(syn["failure_rate"][k]), _pct(real["failure_rate"].get(k))] for k in checks]
    lines += ["Share of images failing each check (among images where it applies):", ""]
    lines += _table(["check", "synthetic", "real"], fr)
    png = _bar_chart(
        out / "figures" / "anatomy.png",
        checks,
        {"synthetic": [syn["failure_rate"][k] for k in checks], "real": [real["failure_rate"].get(k) for k in checks]},
        "share failing",
        "Anatomy checks: failure rate per check",
    )
    lines += [f"![anatomy]({png.relative_to(out)})", ""]
    val = ana.get("validation_on_phantom")
    if val:
        vrows = [
            [k, _f(v.get("sensitivity")), _f(v.get("specificity")), v["tp"] + v["fn"], v["tn"] + v["fp"]]
            for k, v in val["checks"].items()
        ]
        lines += [
            f"How good the checks are: sensitivity and specificity on {val['n_images']} phantom B-scans "
            f"({val['image_size'][0]} x {val['image_size'][1]}) with each failure mode injected (seed {val['seed']}):",
            "",
        ]
        lines += _table(["check", "sensitivity", "specificity", "images with the failure", "clean images"], vrows)
    return lines


def write_report(output_dir: str | PathLike, metrics: Mapping[str, Any]) -> Path:
    """Write ``report.md`` (and its figures under ``figures/``) for the metrics of one evaluation; returns its path."""
    out = Path(output_dir)
    lines = ["# Synthetic OCT data: evaluation report", ""]
    lines += [
        f"Made by medicraft_monai's evaluation in {metrics.get('seconds', 0):.0f} s. Every number is also in `metrics.json`; "
        f"how to read each one: `{DOCS}` of medicraft_monai.",
        "",
    ]
    lines += _overview(metrics)
    lines += _at_a_glance(metrics)
    lines += ["## Samples", "", "Each pair of rows is a class: real training images, then synthetic ones.", ""]
    lines += ["![real and synthetic B-scans](figures/samples.png)", ""]
    lines += _utility(metrics, out)
    lines += _features(metrics)
    lines += _fidelity(metrics)
    lines += _diversity(metrics, out)
    lines += _privacy(metrics, out)
    lines += _anatomy(metrics, out)
    lines += ["## Settings", "", "```json"]
    import json

    lines += [json.dumps(metrics.get("settings", {}), indent=2), "```", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
