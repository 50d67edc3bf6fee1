"""The main job (``make demo`` / ``medicraft demo``): synthesise, multiply and summarise an OCT data set.

On a fresh machine with no data it:

1. writes an imbalanced **phantom** data set (radial exams of healthy eyes, nevi and melanomas) and a datalist
   split by patient (or reads the user's data set with ``--data``);
2. trains a small class-conditioned diffusion model (``bundles/oct_ddpm``, run through ``monai.bundle``) for a
   few minutes on the CPU;
3. **multiplies** the training split so every class is as large as the largest one;
4. writes a short report: counts per class before and after, a grid of real and synthetic B-scans per class,
   and where every file is.

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
    """Settings of the demo; the defaults finish in well under 15 minutes on 2 CPU cores.

    Attributes:
        exams: phantom exams (12 B-scans each) when no data is given.
        phantom_size: (H, W) of the phantom B-scans.
        image_size: (H, W) the diffusion model works at.
        channels: UNet channels per level (small: this is a demo on a CPU).
        attention_levels: self-attention per level.
        num_res_blocks: residual blocks per level.
        max_epochs: training epochs.
        batch_size: training batch size.
        learning_rate: Adam learning rate.
        num_train_timesteps: diffusion steps.
        prediction_type: what the UNet predicts ("v_prediction", "epsilon" or "sample"); see docs/samplers.md.
        sampling_steps: sampling steps when multiplying (``None``: the bundle's sampler and step count).
        guidance_scale: classifier-free guidance weight when multiplying.
        grid_per_class: real and synthetic images per class in the report's grid.
        ema_momentum: weight of the newest weights in the EMA (1/momentum iterations are averaged).
        train: train a model and multiply (False: the data stage and the report only).
        evaluate: end with the evaluation of the synthetic images (:func:`medicraft_monai.evaluation.evaluate_synthesis`).
        evaluation: settings of that evaluation (:class:`~medicraft_monai.evaluation.EvaluationSettings` fields).
    """

    exams: int = 24
    phantom_size: tuple[int, int] = (256, 512)
    image_size: tuple[int, int] = (64, 128)
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    max_epochs: int = 50
    batch_size: int = 16
    learning_rate: float = 5e-4
    num_train_timesteps: int = 1000
    prediction_type: str = "v_prediction"
    sampling_steps: int | None = None
    guidance_scale: float = 1.0
    grid_per_class: int = 4
    ema_momentum: float = 0.01
    train: bool = True
    evaluate: bool = True
    evaluation: dict[str, Any] = field(
        default_factory=lambda: {
            "max_per_class": 60,
            "utility_seeds": (0, 1),
            "classifier": {
                "max_epochs": 12,
                "batch_size": 16,
                "learning_rate": 1e-3,
                "network": {"init_features": 16, "growth_rate": 12, "block_config": [3, 6, 6]},
            },
            "anatomy_validation_exams": 2,
        }
    )
    extra_overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls) -> DemoSettings:
        """Tiny settings that run the whole demo in well under a minute (for tests; the pictures are noise)."""
        return cls(
            exams=9,
            phantom_size=(64, 128),
            image_size=(16, 32),
            channels=(8, 16),
            attention_levels=(False, False),
            max_epochs=1,
            batch_size=8,
            sampling_steps=2,
            grid_per_class=2,
            evaluation={
                "image_size": (32, 64),
                "max_per_class": 8,
                "utility_seeds": (0,),
                "classifier": {"tiny": True, "max_epochs": 1},
                "anatomy_validation_exams": 1,
                "kid_subsets": 3,
                "ms_ssim_pairs": 10,
                "device": "cpu",
            },
        )

    def network_overrides(self) -> dict[str, Any]:
        """The bundle overrides that fix the network, shared by training and sampling (they must agree)."""
        return {
            "image_size": list(self.image_size),
            "channels": list(self.channels),
            "attention_levels": list(self.attention_levels),
            "num_res_blocks": self.num_res_blocks,
            "num_head_channels": min(16, *self.channels),
            "norm_num_groups": min(16, math.gcd(*self.channels)),
            "use_flash_attention": False,
            "num_train_timesteps": self.num_train_timesteps,
            "prediction_type": self.prediction_type,
        }


def _train(bundle: Path, datalist_path: Path, class_names: list[str], out: Path, s: DemoSettings) -> Path:
    """Train ``bundle`` with ``monai.bundle`` on the datalist; return the EMA weights' path."""
    from monai.bundle import run as bundle_run

    model_dir = out / "model"
    overrides = {
        **s.network_overrides(),
        "datalist": str(datalist_path),
        "class_names": class_names,
        "ckpt_dir": str(model_dir),
        "log_dir": str(out / "logs"),
        "max_epochs": s.max_epochs,
        "batch_size": s.batch_size,
        "learning_rate": s.learning_rate,
        "num_workers": 0,
        "val_interval": max(1, s.max_epochs // 3),
        "grid_interval": max(1, s.max_epochs // 3),
        "grid_per_class": 2,
        "grid_steps": 10,
        "ckpt_interval": 200,
        # a short run: the EMA must follow the last ~100 iterations, not the bundle's long-run 0.0002 (which
        # would keep the saved weights close to their random start)
        "ema_momentum": s.ema_momentum,
        "ema_warmup_iters": 50,
        **s.extra_overrides,
    }
    bundle_run(
        config_file=[str(p) for p in config_files(bundle, "train.json")],
        logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle),
        **overrides,
    )
    weights = model_dir / "model.pt"
    if not weights.is_file():
        raise RuntimeError(f"{weights}: training finished without writing the model")
    return weights


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


def _headline(m: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The evaluation's headline numbers for the demo report: (measure, synthetic, real reference)."""

    def f(v: Any, pct: bool = False) -> str:
        if v is None:
            return "n/a"
        return f"{100 * float(v):.0f}%" if pct else f"{float(v):.3f}"

    rows = []
    if m.get("utility"):
        ex = m["utility"]["experiments"]
        rows.append(
            (
                "balanced accuracy on real test, trained on synthetic (TSTR) vs real (TRTR)",
                f(ex["TSTR"]["metrics"]["balanced_accuracy"]["mean"]),
                f(ex["TRTR"]["metrics"]["balanced_accuracy"]["mean"]),
            )
        )
    fid = m["fidelity"]
    rows.append(
        (
            "Frechet distance to real training images (OCT features)",
            f(fid["overall"].get("frechet_distance")),
            f(fid["real_test_reference"].get("frechet_distance")),
        )
    )
    rows.append(
        (
            "precision / recall",
            f"{f(fid['overall'].get('precision'))} / {f(fid['overall'].get('recall'))}",
            f"{f(fid['real_test_reference'].get('precision'))} / {f(fid['real_test_reference'].get('recall'))}",
        )
    )
    feats = m["privacy"]["spaces"]["features"]
    rows.append(("closer to a training image than 1% of real pairs", f(feats["fraction_below"], True), "1%"))
    if m.get("anatomy"):
        rows.append(
            (
                "anatomy checks passed",
                f(m["anatomy"]["synthetic"]["pass_rate"], True),
                f(m["anatomy"]["real_test"]["pass_rate"], True),
            )
        )
    return rows


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
    lines += [
        "Class weights (training split, inverse frequency): "
        + ", ".join(f"{k}={v:.3f}" for k, v in summary["class_weights"].items()),
        "",
    ]
    lines += [
        "## Pictures",
        "",
        "![real and synthetic B-scans per class](samples.png)",
        "",
        "Each row is a class: real B-scans of the training split" + (", then synthetic ones." if after else "."),
        "",
    ]
    if summary.get("evaluation"):
        lines += ["## Is the synthetic data worth using?", ""]
        lines += [
            "The full evaluation (utility, fidelity, diversity, privacy, anatomy; tables and figures) is in "
            "[evaluation/report.md](evaluation/report.md). Headline numbers:",
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


def run_demo(
    output_dir: str | PathLike = "demo_output",
    data: str | PathLike | None = None,
    exams: int = 24,
    seed: int = 0,
    settings: DemoSettings | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the summary that is also written to ``output_dir/summary.json``.

    Args:
        output_dir: where everything goes.
        data: the user's data set (a folder per class, a CSV or a DICOM folder); default: the phantom.
        exams: phantom exams when no data is given (overrides ``settings.exams``).
        seed: seed of the phantom, the split, training and sampling.
        settings: the demo's settings (:class:`DemoSettings`).
    """
    s = settings or DemoSettings(exams=exams)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    files: dict[str, str] = {}

    if data is None:
        _say(f"1/5 writing a phantom data set ({s.exams} exams) to {out / 'phantom'}")
        make_phantom_dataset(
            out / "phantom",
            exams=s.exams,
            seed=seed,
            prevalence=DEMO_PREVALENCE,
            height=s.phantom_size[0],
            width=s.phantom_size[1],
        )
        datalist_path = out / "phantom" / "datalist.json"
        files["phantom images"] = str(out / "phantom" / "images")
        data_label = f"built-in OCT phantom, {s.exams} exams (seed {seed})"
    else:
        _say(f"1/5 reading your data set {data}")
        datalist_path = out / "datalist.json"
        print(count_table(build_datalist(data, output=datalist_path, seed=seed)))
        data_label = str(data)
    files["datalist"] = str(datalist_path)
    datalist = load_datalist(datalist_path)
    class_names = [datalist["labels"][str(i)] for i in range(len(datalist["labels"]))]
    weights = class_weights(datalist)
    counts_before = _counts(datalist, "training", class_names)
    rows = _grid_rows(datalist, class_names, s.grid_per_class, "training")

    counts_after = None
    evaluation: dict[str, Any] | None = None
    if s.train:
        bundle = bundle_path("oct_ddpm")
        _say(
            f"2/5 training a small class-conditioned diffusion model ({bundle.name}, {s.max_epochs} epochs) on the CPU"
        )
        weights_path = _train(bundle, datalist_path, class_names, out, s)
        files["model"] = str(weights_path)
        files["TensorBoard logs"] = str(out / "logs")
        # the trained model as a bundle of its own: its configs hold the settings it was trained with
        from medicraft_monai.networks.release import export_bundle

        trained = export_bundle(
            bundle,
            weights_path,
            out / "bundle",
            {**s.network_overrides(), "class_names": class_names},
            overwrite=True,
        )["bundle_root"]
        files["trained bundle"] = str(trained)
        _say("3/5 multiplying the training split: every class up to the largest")
        from medicraft_monai.synthesis import multiply

        result = multiply(
            datalist_path,
            out / "synthetic",
            bundle_root=trained,
            target="balance",
            seed=seed,
            num_inference_steps=s.sampling_steps,
            guidance_scale=s.guidance_scale,
            overrides=_fast_sampling(),
            device="cpu",
        )
        combined = load_datalist(result["datalist_combined"])
        counts_after = _counts(combined, "training", class_names)
        synthetic = [it for it in combined["training"] if it.get(OCTKeys.SYNTHETIC)]
        for c, row in enumerate(rows):
            mine = [it for it in synthetic if it[OCTKeys.LABEL] == c][: s.grid_per_class]
            row.extend(to_uint8(read_bscan(it[OCTKeys.IMAGE])[0]) for it in mine)
        files["synthetic images"] = str(out / "synthetic" / "images")
        files["manifest"] = str(result["manifest_csv"])
        files["real + synthetic datalist"] = str(result["datalist_combined"])
        if s.evaluate:
            _say("4/5 evaluating the synthetic images: utility, fidelity, diversity, privacy, anatomy")
            from medicraft_monai.evaluation import EvaluationSettings, evaluate_synthesis

            eval_settings = EvaluationSettings.from_mapping(
                {"device": "cpu", "progress": False, "seed": seed, **s.evaluation}
            )
            evaluation = evaluate_synthesis(
                datalist_path, result["datalist_synthetic"], out / "evaluation", eval_settings, overwrite=True
            )
            files["evaluation report"] = str(out / "evaluation" / "report.md")

    _say("5/5 writing the report")
    save_image_grid(out / "samples.png", rows, row_labels=class_names)
    files["sample grid"] = str(out / "samples.png")
    summary = {
        "data": data_label,
        "classes": class_names,
        "counts_before": counts_before,
        "counts_after": counts_after,
        "class_weights": dict(zip(class_names, weights)),
        "count_table": count_table(datalist),
        "settings": asdict(s),
        "files": files,
        "evaluation": _headline(evaluation) if evaluation else None,
        "seconds": time.time() - start,
    }
    report = _write_report(out, summary)
    files["report"] = str(report)
    write_json_atomic(out / "summary.json", summary)
    _say(f"done in {summary['seconds']:.0f} s: report {report}")
    return summary
