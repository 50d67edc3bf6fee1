"""The label-efficiency study: does context-restoration pretraining help when labels are scarce?

:func:`run_label_efficiency` (called by ``bundles/oct_context_restoration/configs/label_efficiency.json`` and the
``medicraft label-efficiency`` command) runs the ``oct_context_restoration`` bundle's own configs, so the study
trains exactly what the bundle trains:

1. loads a labelled datalist split by patient (``training``/``validation``/``test``) and writes the splits it uses
   (``datalist.json`` in the output folder),
2. pretrains with the bundle's ``train.json`` on the *training* images without their labels (context disordering,
   L2 loss; or reuses ``pretrained_ckpt``), and measures the restoration SSIM/MS-SSIM on the held-out validation
   images with the bundle's ``inference.json``,
3. for every label fraction and seed, runs the bundle's ``finetune_classification.json`` twice with the same seed,
   the same patients (its ``label_fraction``/``label_seed`` keep that fraction of the training *patients*,
   class-stratified: :func:`~medicraft_monai.ssl.finetune.subsample_by_patient`) and the same number of updates:
   from the pretrained encoder and from scratch,
4. evaluates both on the test split, preprocessed by the bundle's own validation transforms (accuracy, balanced
   accuracy, macro ROC AUC) and writes ``label_efficiency.json`` (settings, every run, mean and standard deviation per
   fraction), ``label_efficiency.md`` (the table) and ``label_efficiency.png`` (metric versus label fraction, mean +-
   sd and each seed).

Runs are appended to the JSON as they finish; a rerun with the same settings skips them and the pretraining
(resume). Every run is a MONAI ``ConfigWorkflow`` of the bundle's configs with command-line-style overrides, on
MONAI's ignite engines, with bf16 autocast on CPUs that have it (the bundle's ``cpu_bf16`` switch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_roc_auc

from medicraft_monai.bundles import bundle_path, config_files
from medicraft_monai.data.datalist import write_datalist
from medicraft_monai.data.errors import EmptyDatasetError
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.evaluation.workflow import run_bundle_workflow
from medicraft_monai.inferers import bf16_is_fast
from medicraft_monai.ssl.data import load_items
from medicraft_monai.ssl.finetune import subsample_by_patient
from medicraft_monai.utils import flag, write_text_atomic

__all__ = ["BUNDLE", "plot_label_efficiency", "run_label_efficiency", "summarise_runs"]

logger = logging.getLogger(__name__)

BUNDLE = "oct_context_restoration"
"""The bundle whose configs the study runs."""
METRICS = ("accuracy", "balanced_accuracy", "auc")
INITS = ("pretrained", "scratch")


def _tuple(v: Any, cast=float) -> tuple:
    if isinstance(v, str):
        v = json.loads(v.replace("(", "[").replace(")", "]"))
    if np.isscalar(v):
        v = [v]
    return tuple(cast(x) for x in v)


def _run_config(
    name: str, overrides: Mapping[str, Any], keep: Sequence[str] = (), bundle_root: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Run the bundle's ``configs/<name>`` on top of its ``common.json`` with ``overrides`` (as ``monai.bundle run``
    with ``--key value`` would), and return the parsed ``keep`` ids (trained objects) after the run."""
    root = Path(bundle_root) if bundle_root is not None else bundle_path(BUNDLE)
    return run_bundle_workflow(config_files(root, name), root / "configs" / "metadata.json", overrides, keep)


def _pretrain(out_dir: Path, common: Mapping[str, Any], epochs: int, batch_size: int, lr: float, seed: int) -> tuple:
    """The bundle's ``train.json`` (pretraining) into ``out_dir`` (``model.pt``), then its ``inference.json`` on
    the validation split (``restoration_metrics.json``): the checkpoint and the restoration report."""
    overrides = {
        **common,
        "bundle_root": str(out_dir),
        "ckpt_dir": str(out_dir),
        "log_dir": str(out_dir / "logs"),
        "max_epochs": int(epochs),
        "batch_size": int(batch_size),
        "learning_rate": float(lr),
        "seed": int(seed),
    }
    t0 = time.monotonic()
    trainer = _run_config("train.json", overrides, keep=["train#trainer"])["train#trainer"]
    seconds = time.monotonic() - t0
    ckpt = out_dir / "model.pt"
    report_dir = out_dir / "restoration"
    _run_config(
        "inference.json",
        {**overrides, "ckpt_path": str(ckpt), "split": "validation", "output_dir": str(report_dir)},
    )
    report = json.loads((report_dir / "restoration_metrics.json").read_text())
    report = {k: v for k, v in report.items() if k != "per_image"}
    report.update(seconds=round(seconds, 1), final_loss=float(trainer.state.output[0]["loss"]))
    return ckpt, report


def _finetune(
    run_dir: Path,
    common: Mapping[str, Any],
    init: str,
    ckpt: Path,
    fraction: float,
    seed: int,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    lr: float,
    freeze: bool,
    test_items: Sequence[Mapping[str, Any]],
    n_classes: int,
) -> dict[str, Any]:
    """One run of the bundle's ``finetune_classification.json``, evaluated on ``test_items``."""
    overrides = {
        **common,
        "bundle_root": str(run_dir),
        "ckpt_dir": str(run_dir / "models"),
        "log_dir": str(run_dir / "logs"),
        "label_fraction": float(fraction),
        "label_seed": int(seed),
        "seed": int(seed),
        "pretrained_ckpt": str(ckpt) if init == "pretrained" else "",
        "freeze_encoder": bool(freeze),
        "max_epochs": int(epochs),
        "train#trainer#epoch_length": int(steps_per_epoch),
        "batch_size": int(batch_size),
        "learning_rate": float(lr),
        "class_weighting": "none",
        "val_interval": int(epochs) + 1,  # the runs are compared on the test split only
    }
    t0 = time.monotonic()
    done = _run_config("finetune_classification.json", overrides, keep=["network", "validate#preprocessing"])
    net, preprocessing = done["network"], done["validate#preprocessing"]
    images = torch.stack([torch.as_tensor(preprocessing(dict(it))["image"]) for it in test_items])
    labels = torch.tensor([int(it[OCTKeys.LABEL]) for it in test_items])
    result = _evaluate(net, images, labels, n_classes, next(net.parameters()).device)
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result


def _evaluate(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, n_classes: int, device) -> dict:
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(images[i : i + 64].to(device)).float().cpu() for i in range(0, len(images), 64)])
    prob = torch.softmax(logits, 1)
    pred = prob.argmax(1)
    acc = float((pred == labels).float().mean())
    recalls = [float((pred[labels == c] == c).float().mean()) for c in range(n_classes) if (labels == c).any()]
    onehot = torch.nn.functional.one_hot(labels, n_classes).float()
    auc = float(compute_roc_auc(prob, onehot, average="macro"))
    return {"accuracy": acc, "balanced_accuracy": float(np.mean(recalls)), "auc": auc}


def _first_per_class(items: Sequence[Mapping[str, Any]], n: int | None) -> list[dict[str, Any]]:
    if not n:
        return [dict(it) for it in items]
    seen: dict[Any, int] = {}
    out = []
    for it in items:
        c = it[OCTKeys.LABEL]
        if seen.get(c, 0) < int(n):
            seen[c] = seen.get(c, 0) + 1
            out.append(dict(it))
    return out


def summarise_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{init: {fraction: {metric: {"mean", "std", "n"}}}}`` over the seeds (sample standard deviation)."""
    out: dict[str, Any] = {}
    for init in INITS:
        out[init] = {}
        for fraction in sorted({float(r["fraction"]) for r in runs if r["init"] == init}):
            sel = [r for r in runs if r["init"] == init and float(r["fraction"]) == fraction]
            out[init][f"{fraction:g}"] = {
                m: {
                    "mean": float(np.mean([r[m] for r in sel])),
                    "std": float(np.std([r[m] for r in sel], ddof=1)) if len(sel) > 1 else 0.0,
                    "n": len(sel),
                }
                for m in METRICS
            }
    return out


def _table(summary: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    fractions = sorted({float(r["fraction"]) for r in runs})
    lines = [
        "| labels | train images | pretrained: bal. acc. | scratch: bal. acc. | pretrained: AUC | scratch: AUC |",
        "|---|---|---|---|---|---|",
    ]
    for f in fractions:
        key = f"{f:g}"
        n_img = sorted({int(r["n_train_images"]) for r in runs if float(r["fraction"]) == f})
        cells = []
        for metric in ("balanced_accuracy", "auc"):
            for init in INITS:
                s = summary.get(init, {}).get(key, {}).get(metric)
                cells.append("-" if s is None else f"{s['mean']:.3f} +- {s['std']:.3f}")
        span = str(n_img[0]) if len(n_img) == 1 else f"{n_img[0]}-{n_img[-1]}"
        lines.append(f"| {f:.0%} | {span} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    return "\n".join(lines)


def plot_label_efficiency(
    runs: Sequence[Mapping[str, Any]], path: str | os.PathLike, metrics: Sequence[str] = ("balanced_accuracy", "auc")
) -> Path:
    """Metric versus label fraction, pretrained and from scratch: mean +- sd over seeds and each seed's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise_runs(runs)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
    colours = {"pretrained": "tab:blue", "scratch": "tab:orange"}
    labels = {"pretrained": "context-restoration pretrained", "scratch": "from scratch"}
    for ax, metric in zip(axes[0], metrics):
        for init in INITS:
            fr = sorted(float(k) for k in summary.get(init, {}))
            if not fr:
                continue
            mean = np.array([summary[init][f"{f:g}"][metric]["mean"] for f in fr])
            std = np.array([summary[init][f"{f:g}"][metric]["std"] for f in fr])
            ax.plot(fr, mean, "o-", color=colours[init], label=labels[init])
            ax.fill_between(fr, mean - std, mean + std, color=colours[init], alpha=0.2)
            pts = [(float(r["fraction"]), r[metric]) for r in runs if r["init"] == init]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, color=colours[init], alpha=0.5)
        ax.set_xscale("log")
        ticks = sorted({float(r["fraction"]) for r in runs})
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:.0%}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("fraction of training labels (by patient)")
        ax.set_ylabel({"balanced_accuracy": "balanced accuracy", "auc": "macro ROC AUC"}.get(metric, metric))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Label efficiency: test split, mean +- sd over seeds")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def run_label_efficiency(
    datalist: str | os.PathLike | Mapping[str, Any],
    output_dir: str | os.PathLike,
    fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    *,
    image_size: Sequence[int] = (64, 128),
    crop_height: int | None = 256,
    features: Sequence[int] = (16, 16, 32, 64, 128, 16),
    pretrained_ckpt: str | os.PathLike | None = None,
    pretrain_epochs: int = 20,
    pretrain_batch_size: int = 16,
    pretrain_lr: float = 1e-3,
    patch_size: Sequence[int] = (8, 8),
    num_swaps: int = 10,
    pretrain_seed: int = 0,
    finetune_epochs: int = 10,
    finetune_batch_size: int = 16,
    finetune_lr: float = 1e-3,
    finetune_steps_per_epoch: int | None = None,
    freeze_encoder: bool = False,
    eval_split: str = "test",
    max_per_class: int | None = None,
    device: str | torch.device = "cpu",
    bf16: bool | None = None,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrained versus from-scratch classification with a fraction of the training labels; see the module.

    Args:
        datalist: a datalist JSON with patient-level splits, a loaded datalist, or a data folder (built with
            :func:`~medicraft_monai.data.build_datalist`, seed 0).
        output_dir: where ``label_efficiency.json``/``.md``/``.png`` and ``pretrain/`` go.
        fractions: label fractions in (0, 1] (of the training patients, class-stratified).
        seeds: one fine-tuning run per seed, fraction and initialisation (the seed draws the patients, the head's
            initial weights and the data order).
        image_size: (H, W) the B-scans are resized to (after a ``crop_height`` crop around the retina; ``None``:
            no crop).
        features: the BasicUNet's six feature counts (pretraining and fine-tuning).
        pretrained_ckpt: an existing context-restoration checkpoint to use instead of pretraining here.
        pretrain_epochs, pretrain_batch_size, pretrain_lr: pretraining on the training images (labels unused).
        patch_size, num_swaps: the context disordering (:class:`~medicraft_monai.transforms.ContextDisorder`).
        pretrain_seed: seed of the pretraining.
        finetune_epochs, finetune_batch_size, finetune_lr: fine-tuning of each run.
        finetune_steps_per_epoch: updates per epoch, the same for every fraction so that runs differ only in the
            labels seen (default: the number of batches of the full training split).
        freeze_encoder: train only the head of the pretrained runs (linear probing).
        eval_split: the split the runs are evaluated on.
        max_per_class: use only the first N images of each class in each split (quick checks and tests).
        device: where to train.
        bf16: bf16 autocast on CPU (default: where the CPU has native bf16).
        resume: skip runs already in ``label_efficiency.json`` with the same settings.
        progress: progress bars.

    Returns:
        ``{"settings", "pretraining", "runs": [...], "summary": {init: {fraction: {metric: {mean, std, n}}}},
        "table": markdown, "files": {...}}``.
    """
    fractions = _tuple(fractions, float)
    seeds = _tuple(seeds, int)
    image_size = _tuple(image_size, int)
    features = _tuple(features, int)
    patch_size = _tuple(patch_size, int)
    if any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1], got {fractions}")
    dev = torch.device(device)
    use_bf16 = bf16_is_fast(dev) if bf16 is None else flag(bf16)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_items(datalist)
    n_classes = int(data.get("num_classes") or len(data.get("labels") or {}))
    class_names = [data["labels"][str(i)] for i in range(n_classes)]
    splits = {s: _first_per_class(data.get(s) or [], max_per_class) for s in ("training", "validation", eval_split)}
    for s, items in splits.items():
        if not items:
            raise EmptyDatasetError(None, f"the datalist's {s!r} split is empty")

    settings = {
        "datalist": data.get("name", str(datalist)),
        "n_images": {s: len(v) for s, v in splits.items()},
        "class_names": class_names,
        "image_size": list(image_size),
        "crop_height": crop_height,
        "features": list(features),
        "pretrained_ckpt": str(pretrained_ckpt) if pretrained_ckpt else None,
        "pretrain": {
            "epochs": int(pretrain_epochs),
            "batch_size": int(pretrain_batch_size),
            "lr": float(pretrain_lr),
            "patch_size": list(patch_size),
            "num_swaps": int(num_swaps),
            "seed": int(pretrain_seed),
        },
        "finetune": {
            "epochs": int(finetune_epochs),
            "batch_size": int(finetune_batch_size),
            "lr": float(finetune_lr),
            "steps_per_epoch": finetune_steps_per_epoch,
            "freeze_encoder": flag(freeze_encoder),
            "eval_split": eval_split,
        },
        "bf16": bool(use_bf16),
        "bundle": f"{BUNDLE} {json.loads((bundle_path(BUNDLE) / 'configs' / 'metadata.json').read_text())['version']}",
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    result_path = out / "label_efficiency.json"
    previous: dict[str, Any] = {}
    if resume and result_path.is_file():
        previous = json.loads(result_path.read_text())
        if previous.get("settings_key") != key:
            logger.warning("%s holds runs with other settings: starting again", result_path)
            previous = {}

    # the splits the study uses, as a datalist the bundle's configs read
    datalist_path = write_datalist(
        out / "datalist.json",
        {"name": settings["datalist"], "labels": {str(i): n for i, n in enumerate(class_names)},
         "training": splits["training"], "validation": splits["validation"], "test": splits[eval_split]},
    )  # fmt: skip
    common = {
        "datalist": str(datalist_path),
        "class_names": class_names,
        "image_size": list(image_size),
        "crop_height": crop_height,
        "features": list(features),
        "patch_size": list(patch_size),
        "num_swaps": int(num_swaps),
        "device": dev,
        "cpu_bf16": bool(use_bf16),
        "num_workers": 0,
        "resume": False,
    }

    pre_dir = out / "pretrain"
    if pretrained_ckpt:
        ckpt, pre_report = Path(pretrained_ckpt), previous.get("pretraining", {"checkpoint": str(pretrained_ckpt)})
    elif previous.get("pretraining") and (pre_dir / "model.pt").is_file():
        ckpt, pre_report = pre_dir / "model.pt", previous["pretraining"]
    else:
        logger.info("pretraining on %d unlabelled training images", len(splits["training"]))
        ckpt, pre_report = _pretrain(pre_dir, common, pretrain_epochs, pretrain_batch_size, pretrain_lr, pretrain_seed)
        pre_report["checkpoint"] = str(ckpt)
    runs: list[dict[str, Any]] = list(previous.get("runs") or [])
    done = {(float(r["fraction"]), int(r["seed"]), r["init"]) for r in runs}
    steps = finetune_steps_per_epoch or -(-len(splits["training"]) // int(finetune_batch_size))

    def save() -> dict[str, Any]:
        summary = summarise_runs(runs) if runs else {}
        result = {
            "settings": settings,
            "settings_key": key,
            "pretraining": pre_report,
            "runs": runs,
            "summary": summary,
            "table": _table(summary, runs) if runs else "",
            "files": {
                "json": str(result_path),
                "table": str(out / "label_efficiency.md"),
                "plot": str(out / "label_efficiency.png"),
                "pretrained_ckpt": str(ckpt),
            },
        }
        write_text_atomic(result_path, json.dumps(result, indent=1) + "\n")
        return result

    save()
    todo = [(f, s, i) for f in fractions for s in seeds for i in INITS if (f, s, i) not in done]
    from tqdm.auto import tqdm

    for fraction, seed, init in tqdm(todo, desc="label efficiency", disable=not progress):
        patients = {
            str(it.get(OCTKeys.PATIENT_ID, "")) for it in subsample_by_patient(splits["training"], fraction, seed)
        }
        keep = [i for i, it in enumerate(splits["training"]) if str(it.get(OCTKeys.PATIENT_ID, "")) in patients]
        metrics = _finetune(
            out / "runs" / f"{fraction:g}_{seed}_{init}", common, init, ckpt, fraction, seed, finetune_epochs, steps,
            min(int(finetune_batch_size), len(keep)), finetune_lr, flag(freeze_encoder), splits[eval_split], n_classes,
        )  # fmt: skip
        runs.append(
            {
                "fraction": fraction,
                "seed": seed,
                "init": init,
                "n_train_images": len(keep),
                "n_train_patients": len(patients),
                **metrics,
            }
        )
        logger.info("fraction %g seed %d %s: %s", fraction, seed, init, metrics)
        save()
    result = save()
    write_text_atomic(out / "label_efficiency.md", result["table"] + "\n")
    plot_label_efficiency(runs, out / "label_efficiency.png")
    return result
