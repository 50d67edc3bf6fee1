"""The main job (``make demo`` / ``medicraft demo``): synthesise, multiply and summarise an OCT data set.

On a fresh machine with no data it:

1. writes an imbalanced **phantom** data set (radial exams of healthy eyes, nevi and melanomas) and a datalist
   split by patient (or reads the user's data set with ``--data``);
2. **fine-tunes** the shipped class-conditioned diffusion model (``bundles/oct_ddpm``, ``configs/finetune.json``,
   run through ``monai.bundle``) to the data set's classes for a few minutes on the CPU, and, for comparison,
   trains the same network from scratch for the same time;
3. **multiplies** the training split so every class is as large as the largest one, and samples every class
   from both routes;
4. evaluates the synthetic images (the fine-tuned ones in full: utility on held-out patients, fidelity,
   diversity, privacy, anatomy) and writes a short report: counts per class before and after, the two routes
   side by side, a grid of real and synthetic B-scans per class, and where every file is.

Each stage is a library call that users can run on their own (``medicraft phantom``, ``medicraft datalist``,
``python -m monai.bundle run``, ``medicraft multiply``); the demo only chains them with small settings.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medicraft_monai.bundles import bundle_path, config_files
from medicraft_monai.data.datalist import build_datalist, class_weights, count_table, load_datalist
from medicraft_monai.data.io import read_bscan
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.data.phantom import make_phantom_dataset
from medicraft_monai.utils import write_json_atomic
from medicraft_monai.visualize import save_image_grid, to_uint8

__all__ = ["DEMO_PREVALENCE", "DemoSettings", "run_demo"]

logger = logging.getLogger(__name__)

#: class prevalence of the demo's phantom data set: imbalanced, as in a clinic (melanoma is rare)
DEMO_PREVALENCE = {"healthy": 6.0, "benign": 3.0, "melanoma": 1.0}


def _say(message: str) -> None:
    print(f"[medicraft demo] {message}", flush=True)


@dataclass
class DemoSettings:
    """Settings of the demo; the defaults finish in about 15 minutes on 2 CPU cores.

    Both routes train the shipped ``oct_ddpm`` network (its channels, attention and 32 x 64 image size) for the
    same wall-time budget; only the start differs: the shipped weights (fine-tuning, ``configs/finetune.json``) or
    random weights (``configs/train.json``).

    Attributes:
        exams: phantom exams (``planes`` B-scans each) when no data is given.
        planes: radial B-scans per phantom exam.
        phantom_size: (H, W) of the phantom B-scans.
        min_patients_per_class: phantom patients per class at least, so every class has eyes in every split.
        train_minutes: wall-time budget of each training route (0: ``max_epochs`` only).
        max_epochs: upper bound of the training epochs (the budget usually stops first).
        batch_size: training batch size.
        finetune_learning_rate: Adam learning rate when fine-tuning the shipped weights.
        scratch_learning_rate: Adam learning rate when training from random weights.
        freeze_encoder_epochs: epochs during which fine-tuning keeps the shipped encoder fixed.
        ema_momentum: weight of the newest weights in the EMA (1/momentum iterations are averaged).
        compare_scratch: also train from scratch for the same budget and put the two routes side by side.
        sampling_steps: sampling steps (``None``: the bundle's sampler and step count).
        guidance_scale: classifier-free guidance weight (``None``: the bundle's).
        grid_per_class: images per class and per source in the report's grid.
        train: train and multiply (False: the data stage and the report only).
        evaluate: end with the evaluation of the synthetic images (:func:`medicraft_monai.evaluation.evaluate_synthesis`).
        evaluation: settings of that evaluation (:class:`~medicraft_monai.evaluation.EvaluationSettings` fields).
        extra_overrides: further bundle overrides for both training routes.
    """

    exams: int = 30
    planes: int = 12
    phantom_size: tuple[int, int] = (256, 512)
    min_patients_per_class: int = 3
    train_minutes: float = 3.0
    max_epochs: int = 500
    batch_size: int = 16
    finetune_learning_rate: float = 1e-4
    scratch_learning_rate: float = 2e-4
    freeze_encoder_epochs: int = 0
    ema_momentum: float = 0.01
    compare_scratch: bool = True
    sampling_steps: int | None = None
    guidance_scale: float | None = None
    grid_per_class: int = 4
    train: bool = True
    evaluate: bool = True
    evaluation: dict[str, Any] = field(
        default_factory=lambda: {
            "max_per_class": 60,
            "utility_seeds": (0, 1),
            "classifier": {
                "max_epochs": 8,
                "batch_size": 16,
                "learning_rate": 1e-3,
                "network": {"init_features": 16, "growth_rate": 12, "block_config": [3, 6, 6]},
            },
            "anatomy_validation_exams": 1,
        }
    )
    extra_overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls) -> DemoSettings:
        """Tiny settings that run the whole demo in about a minute (for tests; the pictures are noise)."""
        return cls(
            planes=2,
            phantom_size=(64, 128),
            train_minutes=0.0,
            max_epochs=1,
            batch_size=8,
            sampling_steps=2,
            grid_per_class=2,
            evaluation={
                "max_per_class": 8,
                "utility_seeds": (0,),
                "classifier": {"tiny": True, "max_epochs": 1},
                "anatomy_validation_exams": 1,
                "kid_subsets": 3,
                "ms_ssim_pairs": 10,
                "device": "cpu",
            },
        )


#: the two training routes the demo compares: fine-tuning the shipped generator, and training it from scratch
ROUTES: dict[str, str] = {
    "finetuned": "fine-tuned from the shipped oct_ddpm weights",
    "scratch": "trained from random weights",
}


def _train(route: str, datalist_path: Path, class_names: list[str], out: Path, s: DemoSettings) -> dict[str, Any]:
    """Train oct_ddpm on the datalist with ``monai.bundle`` for the budget, by ``route``; export the weights as a
    bundle of their own. Returns ``{"bundle", "weights", "minutes", "iterations", "epochs"}``."""
    from monai.bundle import run as bundle_run

    from medicraft_monai.networks import latest_checkpoint
    from medicraft_monai.networks.release import export_bundle

    bundle = bundle_path("oct_ddpm")
    folder = out / route
    finetune = route == "finetuned"
    overrides = {
        "datalist": str(datalist_path),
        "class_names": class_names,
        "ckpt_dir": str(folder / "model"),
        "log_dir": str(folder / "logs"),
        "max_epochs": s.max_epochs,
        "max_minutes": s.train_minutes,
        "batch_size": s.batch_size,
        "learning_rate": s.finetune_learning_rate if finetune else s.scratch_learning_rate,
        "num_workers": 0,
        "val_interval": 5,
        "grid_interval": 10,
        "grid_per_class": 2,
        "ckpt_interval": 200,
        # a short run: the EMA must follow the last ~100 iterations, not the long-run 0.001 (which would keep the
        # saved weights close to where they started)
        "ema_momentum": s.ema_momentum,
        "ema_warmup_iters": 100,
        **({"freeze_encoder_epochs": s.freeze_encoder_epochs} if finetune else {}),
        **s.extra_overrides,
    }
    start = time.time()
    bundle_run(
        config_file=[str(p) for p in config_files(bundle, "train.json", *(["finetune.json"] if finetune else []))],
        logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle),
        **overrides,
    )
    minutes = (time.time() - start) / 60.0
    weights = folder / "model" / "model.pt"
    if not weights.is_file():
        raise RuntimeError(f"{weights}: training finished without writing the model")
    final = latest_checkpoint(folder / "model" / "training", required=False)
    iterations = int(Path(final).stem.split("=")[-1]) if final else None
    # the trained model as a bundle of its own: its configs and diffusion.json hold what it was trained with
    exported = export_bundle(bundle, weights, folder / "bundle", overwrite=True)["bundle_root"]
    return {"bundle": str(exported), "weights": str(weights), "minutes": minutes, "iterations": iterations}


def _fast_sampling() -> dict[str, Any]:
    """bf16 autocast + channels-last sampling where this CPU has native bf16 (about 3.5x faster here)."""
    from medicraft_monai.inferers import bf16_is_fast

    return {"amp_dtype": "bfloat16", "channels_last": True} if bf16_is_fast("cpu") else {}


def _grid_rows(
    datalist: Mapping[str, Any], class_names: list[str], per_class: int, split: str
) -> list[list[np.ndarray]]:
    rows = []
    for c in range(len(class_names)):
        items = [it for it in datalist.get(split, []) if it[OCTKeys.LABEL] == c][:per_class]
        rows.append([to_uint8(read_bscan(it[OCTKeys.IMAGE], int(it.get(OCTKeys.FRAME, 0) or 0))[0]) for it in items])
    return rows


def _counts(
    datalist: Mapping[str, Any], split: str, class_names: list[str], synthetic: bool | None = None
) -> dict[str, int]:
    counts = dict.fromkeys(class_names, 0)
    for it in datalist.get(split, []):
        if synthetic is None or bool(it.get(OCTKeys.SYNTHETIC, False)) == synthetic:
            counts[class_names[it[OCTKeys.LABEL]]] += 1
    return counts


def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.0f}%"


def _num(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.3f}"


def _utility_cell(e: Mapping[str, Any], metric: str = "balanced_accuracy") -> str:
    """An experiment's mean (± std), or why it cannot be compared: never a number for a missing class."""
    if e.get("not_comparable"):
        return f"not comparable ({e['not_comparable']})"
    m = e["metrics"][metric]
    if m.get("mean") is None:
        return "n/a"
    return f"{m['mean']:.3f}" + (f" ± {m['std']:.3f}" if m.get("std") else "")


def _headline(m: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The evaluation's headline numbers for the demo report: (measure, synthetic, real reference)."""
    rows = []
    if m.get("utility"):
        util = m["utility"]
        ex = util["experiments"]
        rows.append(
            (
                "balanced accuracy on real test patients, trained on synthetic (TSTR) vs real (TRTR)",
                _utility_cell(ex["TSTR"]),
                _utility_cell(ex["TRTR"]),
            )
        )
        if "real_imbalanced_plus_synthetic" in ex:
            rows.append(
                (
                    "balanced accuracy, imbalanced real + synthetic vs imbalanced real alone",
                    _utility_cell(ex["real_imbalanced_plus_synthetic"]),
                    _utility_cell(ex["real_imbalanced"]),
                )
            )
        det = util.get("detectability")
        if det:
            auc = f"not comparable ({det['not_comparable']})" if det.get("not_comparable") else _num(det["auc"]["mean"])
            rows.append(("AUC of a real-vs-synthetic classifier (0.5: indistinguishable)", auc, "0.5"))
    fid = m["fidelity"]
    rows.append(
        (
            "Frechet distance to real training images (fixed OCT encoder)",
            _num(fid["overall"].get("frechet_distance")),
            _num(fid["real_test_reference"].get("frechet_distance")),
        )
    )
    rows.append(
        (
            "precision / recall",
            f"{_num(fid['overall'].get('precision'))} / {_num(fid['overall'].get('recall'))}",
            f"{_num(fid['real_test_reference'].get('precision'))} / {_num(fid['real_test_reference'].get('recall'))}",
        )
    )
    feats = m["privacy"]["spaces"]["features"]
    rows.append(("closer to a training image than 1% of real pairs", _pct(feats["fraction_below"]), "1%"))
    if m.get("anatomy"):
        rows.append(
            (
                "anatomy checks passed",
                _pct(m["anatomy"]["synthetic"]["pass_rate"]),
                _pct(m["anatomy"]["real_test"]["pass_rate"]),
            )
        )
    return rows


def _figures(m: Mapping[str, Any], class_names: list[str], real: bool = False) -> dict[str, Any]:
    """What the side-by-side table shows of an evaluation: anatomy per class, FD, precision, recall; of its
    synthetic images, or with ``real`` of the real test images (the reference column)."""
    fid = m["fidelity"]["real_test_reference" if real else "overall"]
    anatomy = (m.get("anatomy") or {}).get("real_test" if real else "synthetic") or {}
    per_class = anatomy.get("per_class") or {}
    return {
        "anatomy_pass_rate": anatomy.get("pass_rate"),
        "anatomy_pass_rate_per_class": {c: (per_class.get(c) or {}).get("pass_rate") for c in class_names},
        "frechet_distance": fid.get("frechet_distance"),
        "precision": fid.get("precision"),
        "recall": fid.get("recall"),
    }


def _comparison_lines(comparison: Mapping[str, Any]) -> list[str]:
    routes = [r for r in ROUTES if r in comparison["routes"]]
    cols = [*routes, "real test images"]
    figures = {**comparison["routes"], "real test images": comparison["real"]}
    classes = comparison["class_names"]

    def row(label: str, fn) -> str:
        return f"| {label} | " + " | ".join(fn(figures[c]) for c in cols) + " |"

    lines = [
        "## Fine-tuning the shipped generator against training from scratch",
        "",
        "The same network (the shipped `oct_ddpm`, 32 x 64) trained on the same training split for the same wall "
        "time; only the start differs. Synthetic images: the same number per class from each, same seeds.",
        "",
        "| | " + " | ".join(cols) + " |",
        "| --- | " + " | ".join("---:" for _ in cols) + " |",
        "| started from | " + " | ".join(comparison["routes"][r]["started_from"] for r in routes) + " | |",
        "| training | "
        + " | ".join(
            f"{comparison['routes'][r]['minutes']:.1f} min, {comparison['routes'][r]['iterations']} iterations"
            for r in routes
        )
        + " | |",
        row("anatomy checks passed", lambda f: _pct(f["anatomy_pass_rate"])),
        *(row(f"... {c}", lambda f, c=c: _pct(f["anatomy_pass_rate_per_class"].get(c))) for c in classes),
        row("Frechet distance to real training images (fixed encoder)", lambda f: _num(f["frechet_distance"])),
        row("precision / recall", lambda f: f"{_num(f['precision'])} / {_num(f['recall'])}"),
        "",
        "![real, fine-tuned and from-scratch B-scans per class](samples.png)",
        "",
        "Each row is a class: "
        + ", then ".join(["real training B-scans", *(f"{ROUTES[r]} ({r})" for r in routes)])
        + ".",
        "",
    ]
    return lines


def _write_report(out: Path, summary: dict[str, Any]) -> Path:
    before, after = summary["counts_before"], summary.get("counts_after")
    lines = [
        "# medicraft_monai demo report",
        "",
        f"Data: {summary['data']}  ",
        f"Finished in {summary['seconds']:.0f} s.",
        "",
        "## Training split, images per class",
        "",
        "| class | real | synthetic added | total |" if after else "| class | real |",
        "| --- | ---: | ---: | ---: |" if after else "| --- | ---: |",
    ]
    for name, n in before.items():
        if after:
            lines.append(f"| {name} | {n} | {after[name] - n} | {after[name]} |")
        else:
            lines.append(f"| {name} | {n} |")
    lines += ["", "## All splits", "", "```", summary["count_table"], "```", ""]
    missing = summary.get("missing_classes") or {}
    if missing:
        lines += [
            "Classes without an image in a split (their scores there cannot be measured): "
            + "; ".join(f"{split}: {', '.join(names)}" for split, names in missing.items()),
            "",
        ]
    lines += [
        "Class weights (training split, inverse frequency): "
        + ", ".join(f"{k}={v:.3f}" for k, v in summary["class_weights"].items()),
        "",
    ]
    if summary.get("comparison"):
        lines += _comparison_lines(summary["comparison"])
    else:
        lines += ["## Pictures", "", "![real B-scans per class](samples.png)", ""]
    if summary.get("evaluation"):
        lines += ["## Is the synthetic data worth using?", ""]
        lines += [
            "The fine-tuned generator's images, evaluated in full (utility, fidelity, diversity, privacy, anatomy; "
            "tables and figures) in [evaluation/report.md](evaluation/report.md). Headline numbers:",
            "",
            "| measure | synthetic | real reference |",
            "| --- | ---: | ---: |",
        ]
        lines += [f"| {name} | {a} | {b} |" for name, a, b in summary["evaluation"]]
        lines += [""]
    lines += ["## Files", ""] + [f"- {k}: `{v}`" for k, v in summary["files"].items()] + [""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _missing_classes(datalist: Mapping[str, Any], class_names: list[str]) -> dict[str, list[str]]:
    """Per split, the classes without an image there."""
    missing = {}
    for split in ("training", "validation", "test"):
        present = {int(it[OCTKeys.LABEL]) for it in datalist.get(split, [])}
        lacking = [c for i, c in enumerate(class_names) if i not in present]
        if lacking:
            missing[split] = lacking
    return missing


def run_demo(
    output_dir: str | PathLike = "demo_output",
    data: str | PathLike | None = None,
    exams: int | None = None,
    seed: int = 0,
    settings: DemoSettings | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the summary that is also written to ``output_dir/summary.json``.

    Stages: 1 the data (the phantom, or ``data``) split by patient; 2 fine-tune the shipped ``oct_ddpm`` on the
    training split for ``train_minutes``; 3 train the same network from scratch for the same time
    (``compare_scratch``); 4 multiply the training split (every class up to the largest) with the fine-tuned
    generator, and sample every class from each route (as many images in all as the real training split, at most
    the evaluation's ``max_per_class`` per class); 5 evaluate: the fine-tuned images in full, the other route's
    without the utility study; 6 the report (``report.md``, ``samples.png``, ``summary.json``).

    Args:
        output_dir: where everything goes.
        data: the user's data set (a folder per class, a CSV or a DICOM folder); default: the phantom.
        exams: phantom exams when no data is given (default ``settings.exams``).
        seed: seed of the phantom, the split, training and sampling.
        settings: the demo's settings (:class:`DemoSettings`).
    """
    s = settings or DemoSettings()
    if exams is not None:
        s.exams = int(exams)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    files: dict[str, str] = {}
    n_stages = 6

    if data is None:
        _say(f"1/{n_stages} writing a phantom data set ({s.exams} exams) to {out / 'phantom'}")
        make_phantom_dataset(
            out / "phantom",
            exams=s.exams,
            seed=seed,
            prevalence=DEMO_PREVALENCE,
            height=s.phantom_size[0],
            width=s.phantom_size[1],
            planes=s.planes,
            progress=False,
            min_patients_per_class=s.min_patients_per_class,
        )
        datalist_path = out / "phantom" / "datalist.json"
        files["phantom images"] = str(out / "phantom" / "images")
        data_label = f"built-in OCT phantom, {s.exams} exams (seed {seed})"
    else:
        _say(f"1/{n_stages} reading your data set {data}")
        datalist_path = out / "datalist.json"
        print(count_table(build_datalist(data, output=datalist_path, seed=seed)))
        data_label = str(data)
    files["datalist"] = str(datalist_path)
    datalist = load_datalist(datalist_path)
    class_names = [datalist["labels"][str(i)] for i in range(len(datalist["labels"]))]
    weights = class_weights(datalist)
    counts_before = _counts(datalist, "training", class_names)
    real_rows = _grid_rows(datalist, class_names, s.grid_per_class, "training")
    rows = [list(r) for r in real_rows]

    counts_after = None
    evaluation: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None
    if s.train:
        routes = ["finetuned", "scratch"] if s.compare_scratch else ["finetuned"]
        trained: dict[str, dict[str, Any]] = {}
        for i, route in enumerate(routes):
            budget = f"{s.train_minutes:g} min" if s.train_minutes else f"{s.max_epochs} epochs"
            _say(f"{2 + i}/{n_stages} training oct_ddpm, {ROUTES[route]}, for {budget} on the CPU")
            trained[route] = _train(route, datalist_path, class_names, out, s)
            files[f"{route} bundle"] = trained[route]["bundle"]
            files[f"{route} TensorBoard logs"] = str(out / route / "logs")
        _say(f"4/{n_stages} multiplying the training split (every class up to the largest) and sampling every class")
        from medicraft_monai.synthesis import generate, multiply

        result = multiply(
            datalist_path,
            out / "synthetic",
            bundle_root=trained["finetuned"]["bundle"],
            target="balance",
            seed=seed,
            num_inference_steps=s.sampling_steps,
            guidance_scale=s.guidance_scale,
            overrides=_fast_sampling(),
            device="cpu",
            progress=False,
        )
        combined = load_datalist(result["datalist_combined"])
        counts_after = _counts(combined, "training", class_names)
        files["synthetic images"] = str(out / "synthetic" / "images")
        files["manifest"] = str(result["manifest_csv"])
        files["real + synthetic datalist"] = str(result["datalist_combined"])
        # the evaluation set holds every class: as many images in all as the real training split, capped per class
        cap = int(s.evaluation.get("max_per_class") or 200)
        per_class = max(s.grid_per_class, min(cap, math.ceil(sum(counts_before.values()) / len(class_names))))
        samples: dict[str, Path] = {}
        for route in routes:
            generate(
                trained[route]["bundle"],
                None,
                num_samples=per_class,
                seed=seed,
                steps=s.sampling_steps,
                guidance_scale=s.guidance_scale,
                output_dir=out / route / "samples",
                device="cpu",
                overrides=_fast_sampling(),
            )
            samples[route] = out / route / "samples" / "datalist_synthetic.json"
            files[f"{route} samples"] = str(out / route / "samples" / "images")
            synthetic = load_datalist(samples[route], check=False)["training"]
            for c, row in enumerate(rows):
                mine = [it for it in synthetic if it[OCTKeys.LABEL] == c][: s.grid_per_class]
                row.extend(to_uint8(read_bscan(it[OCTKeys.IMAGE])[0]) for it in mine)
        if s.evaluate:
            _say(f"5/{n_stages} evaluating the synthetic images: utility, fidelity, diversity, privacy, anatomy")
            from medicraft_monai.evaluation import EvaluationSettings, evaluate_synthesis

            base = {"device": "cpu", "progress": False, "seed": seed, **s.evaluation}
            evaluations = {}
            for route in routes:
                full = route == "finetuned"
                eval_settings = EvaluationSettings.from_mapping({**base, **({} if full else {"utility": False})})
                folder = out / "evaluation" if full else out / route / "evaluation"
                evaluations[route] = evaluate_synthesis(
                    datalist_path, samples[route], folder, eval_settings, overwrite=True
                )
                files[f"{route} evaluation report"] = str(folder / "report.md")
            evaluation = evaluations["finetuned"]
            comparison = {
                "class_names": class_names,
                "images_per_class": per_class,
                "real": _figures(evaluation, class_names, real=True),
                "routes": {
                    r: {
                        "started_from": "shipped oct_ddpm weights" if r == "finetuned" else "random weights",
                        "minutes": trained[r]["minutes"],
                        "iterations": trained[r]["iterations"],
                        **_figures(evaluations[r], class_names),
                    }
                    for r in routes
                },
            }

    _say(f"6/{n_stages} writing the report")
    save_image_grid(out / "samples.png", rows, row_labels=class_names)
    files["sample grid"] = str(out / "samples.png")
    summary = {
        "data": data_label,
        "classes": class_names,
        "counts_before": counts_before,
        "counts_after": counts_after,
        "missing_classes": _missing_classes(datalist, class_names),
        "class_weights": dict(zip(class_names, weights)),
        "count_table": count_table(datalist),
        "settings": asdict(s),
        "files": files,
        "comparison": comparison,
        "evaluation": _headline(evaluation) if evaluation else None,
        "seconds": time.time() - start,
    }
    report = _write_report(out, summary)
    files["report"] = str(report)
    write_json_atomic(out / "summary.json", summary)
    _say(f"done in {summary['seconds']:.0f} s: report {report}")
    return summary
