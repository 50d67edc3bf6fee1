"""Choose a generator's sampling settings (guidance scale, steps) by the utility they give, on the validation split.

For each setting, the generator samples a synthetic training set holding every class, as large as the real training
split (equal counts per class); the ``oct_classifier`` bundle trains on it (several seeds) and is scored on the real
**validation** split (balanced accuracy, TSTR). The real-trained classifier (TRTR) is scored the same way once, as
the reference. The setting with the highest mean TSTR is chosen (ties: fewer steps, then the lower guidance). The
test split is never looked at, so the figures a model card then reports on the test split stay unbiased.

Entry point: :func:`choose_sampling` (``medicraft choose_sampling``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medicraft_monai.data.datalist import load_datalist
from medicraft_monai.data.errors import EmptyDatasetError
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.evaluation.utility import ClassifierSettings, _summary, evaluate_classifier, train_classifier

__all__ = ["choose_sampling"]

logger = logging.getLogger(__name__)


def _balanced_accuracy(ckpt: Path, items, names, settings, out: Path) -> float:
    result = evaluate_classifier(ckpt, items, names, settings, output_dir=out)
    return float(result["balanced_accuracy"])


def choose_sampling(
    datalist: str | PathLike,
    bundle: str | PathLike,
    output_dir: str | PathLike,
    guidance_scales: Sequence[float] = (1.0, 2.0, 3.0, 5.0),
    steps: Sequence[int] = (10,),
    seeds: Sequence[int] = (0, 1),
    classifier: ClassifierSettings | None = None,
    sample_seed: int = 0,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Score every (guidance scale, steps) setting of a generator by TSTR on the validation split; pick the best.

    Args:
        datalist: the real datalist (patient-level ``training`` and ``validation`` splits; ``test`` is not read).
        bundle: the generator bundle (a shipped name, a folder or an archive).
        output_dir: where the synthetic sets, the classifier runs and ``sampling_choice.json`` go; a rerun reuses
            the synthetic images already written (same job).
        guidance_scales: classifier-free guidance weights to try.
        steps: sampling step counts to try.
        seeds: classifier seeds per setting (mean and sample standard deviation over them).
        classifier: how the classifier is trained (default :class:`ClassifierSettings`; give the image size the
            generator samples at).
        sample_seed: the sampling job's seed (the same images for every classifier seed).
        overrides: generator bundle overrides for sampling (e.g. ``{"amp_dtype": "bfloat16"}``).
        device: where to sample.

    Returns:
        ``{"trtr", "settings": [{"guidance_scale", "steps", "tstr": {mean, std, values}, "synthetic": n}],
        "chosen": {"guidance_scale", "steps"}, "per_class": n, "seeds", "split": "validation"}``; also written to
        ``output_dir/sampling_choice.json``.

    Raises:
        EmptyDatasetError: no training or no validation images.
    """
    from medicraft_monai.synthesis import generate

    data = load_datalist(datalist)
    names = [data["labels"][str(i)] for i in range(len(data["labels"]))]
    train, val = data.get("training") or [], data.get("validation") or []
    if not train or not val:
        raise EmptyDatasetError(datalist, "choosing sampling settings needs training and validation images")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = classifier or ClassifierSettings()
    per_class = math.ceil(len(train) / len(names))

    trtr = []
    for seed in seeds:
        ckpt = train_classifier(train, names, settings, seed=seed, output_dir=out / "TRTR" / f"seed{seed}")
        trtr.append(_balanced_accuracy(ckpt, val, names, settings, out / "TRTR" / f"seed{seed}_validation"))
    rows = []
    for n_steps in steps:
        for g in guidance_scales:
            tag = f"guidance{g:g}_steps{int(n_steps)}"
            folder = out / tag
            generate(
                bundle,
                None,
                num_samples=per_class,
                seed=sample_seed,
                steps=int(n_steps),
                guidance_scale=float(g),
                output_dir=folder / "synthetic",
                device=device,
                overrides=overrides,
            )
            synthetic = load_datalist(folder / "synthetic" / "datalist_synthetic.json", check=False)["training"]
            if {int(it[OCTKeys.LABEL]) for it in synthetic} != set(range(len(names))):
                raise EmptyDatasetError(folder, "the synthetic set misses a class")
            scores = []
            for seed in seeds:
                ckpt = train_classifier(synthetic, names, settings, seed=seed, output_dir=folder / f"seed{seed}")
                scores.append(_balanced_accuracy(ckpt, val, names, settings, folder / f"seed{seed}_validation"))
            rows.append(
                {
                    "guidance_scale": float(g),
                    "steps": int(n_steps),
                    "tstr": _summary(scores),
                    "synthetic": len(synthetic),
                }
            )
            logger.info("%s: TSTR on validation %.3f", tag, float(np.mean(scores)))
    best = max(rows, key=lambda r: (r["tstr"]["mean"], -r["steps"], -r["guidance_scale"]))
    result = {
        "datalist": str(datalist),
        "bundle": str(bundle),
        "split": "validation",
        "seeds": [int(s) for s in seeds],
        "per_class": per_class,
        "classifier": settings.to_json(),
        "trtr": _summary(trtr),
        "settings": rows,
        "chosen": {"guidance_scale": best["guidance_scale"], "steps": best["steps"]},
    }
    (out / "sampling_choice.json").write_text(json.dumps(result, indent=2))
    return result
