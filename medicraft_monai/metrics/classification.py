"""Classification metrics, and the helpers the ``oct_classifier`` bundle's configs call.

Metrics:

- :func:`classification_metrics`: accuracy, balanced accuracy, macro F1, per-class one-vs-rest ROC AUC and the
  confusion matrix of class probabilities against true labels (MONAI's ``get_confusion_matrix``,
  ``compute_confusion_matrix_metric`` and ``compute_roc_auc`` underneath), robust to classes that are absent.
- :func:`save_confusion_matrix`: a PNG with the counts and the row-normalised matrix side by side.

Bundle helpers (``$medicraft_monai.metrics.classification.<name>(...)`` in ``bundles/oct_classifier/configs``):

- data: :func:`datalist_class_names`, :func:`classification_items` (class name -> index through ``class_names``;
  an unknown class is an :class:`~medicraft_monai.data.errors.UnknownLabelError` naming the file),
  :func:`inference_items` (a datalist split, a folder or a list of files), :func:`balanced_sampler`,
  :func:`loss_class_weights`;
- engines: :func:`pred_label_indices` (output transform of the validation balanced accuracy, ignite's macro
  ``Recall``), :class:`ClassificationResultsWriter` (per-image probabilities as JSON and CSV, and with labels
  ``metrics.json`` plus the confusion-matrix PNG), :class:`KeyMetricState` (the best-model saver's record,
  kept in training checkpoints so that ``resume`` does not forget the best validation so far).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medicraft_monai.data.datalist import datalist_class_names as _datalist_class_names
from medicraft_monai.data.errors import EmptyDatasetError, OCTDataError, UnknownLabelError
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.utils import write_text_atomic

__all__ = [
    "DEFAULT_CLASS_NAMES",
    "ClassificationResultsWriter",
    "KeyMetricState",
    "balanced_sampler",
    "classification_items",
    "classification_metrics",
    "datalist_class_names",
    "inference_items",
    "loss_class_weights",
    "pred_label_indices",
    "save_confusion_matrix",
]

logger = logging.getLogger(__name__)

DEFAULT_CLASS_NAMES: tuple[str, ...] = ("healthy", "benign", "melanoma")
"""Classes of the medicraft OCT phantom, the bundle's default when no datalist names its classes."""

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm")


# --------------------------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------------------------
def _as_float(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def classification_metrics(
    y_true: Sequence[int] | np.ndarray | torch.Tensor,
    probs: Sequence[Sequence[float]] | np.ndarray | torch.Tensor,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Metrics of class probabilities ``probs`` (N, C) against true class indices ``y_true`` (N,).

    - ``accuracy``: fraction of images whose most probable class is the true one.
    - ``balanced_accuracy``: mean over the classes present in ``y_true`` of their sensitivity (recall); chance
      level is ``1 / number of classes`` whatever the class balance.
    - ``macro_f1``: mean F1 over the classes that occur in ``y_true`` or in the predictions.
    - ``auc``: per class, the one-vs-rest ROC AUC of its probability; ``None`` (with a note) when the class is
      absent from ``y_true`` (or is every image), where the AUC is undefined; ``macro_auc`` is the mean of the
      defined ones.
    - ``confusion_matrix``: nested lists, rows = true class, columns = predicted class.
    - ``per_class``: support, predicted count, sensitivity, precision, F1 and AUC per class.

    Raises:
        ValueError: shapes that do not fit ``class_names`` or labels outside ``0..C-1``.
    """
    names = [str(c) for c in class_names]
    n_cls = len(names)
    y = np.asarray(torch.as_tensor(y_true).detach().cpu(), dtype=np.int64).reshape(-1)
    p = np.asarray(torch.as_tensor(probs).detach().cpu().float(), dtype=np.float64)
    if p.ndim != 2 or p.shape != (y.size, n_cls):
        raise ValueError(f"probs must have shape (N, {n_cls}) = ({y.size}, {n_cls}), got {p.shape}")
    if y.size == 0:
        raise ValueError("classification_metrics: no samples")
    if y.min() < 0 or y.max() >= n_cls:
        raise ValueError(f"labels must be in 0..{n_cls - 1} (classes {names}), got {sorted(set(y.tolist()))}")
    pred = p.argmax(axis=1)

    from monai.metrics import compute_confusion_matrix_metric, compute_roc_auc, get_confusion_matrix
    from monai.networks.utils import one_hot

    y_t, pred_t = torch.as_tensor(y)[:, None], torch.as_tensor(pred)[:, None]
    # per-class TP, FP, TN, FN summed over the images: (C, 4)
    tp_fp = get_confusion_matrix(one_hot(pred_t, n_cls), one_hot(y_t, n_cls), include_background=True).sum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sens = compute_confusion_matrix_metric("sensitivity", tp_fp).numpy()
        prec = compute_confusion_matrix_metric("precision", tp_fp).numpy()
        f1 = compute_confusion_matrix_metric("f1 score", tp_fp).numpy()
    support = np.bincount(y, minlength=n_cls)
    predicted = np.bincount(pred, minlength=n_cls)
    cm = np.bincount(y * n_cls + pred, minlength=n_cls * n_cls).reshape(n_cls, n_cls)

    notes: list[str] = []
    present = support > 0
    occurring = present | (predicted > 0)
    # F1 of a class that is predicted but absent is 0 (MONAI gives 0 or NaN; count it as a miss)
    f1 = np.where(occurring & np.isnan(f1), 0.0, f1)
    auc: dict[str, float | None] = {}
    for c, name in enumerate(names):
        if 0 < support[c] < y.size:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                auc[name] = _as_float(compute_roc_auc(torch.as_tensor(p[:, c]), torch.as_tensor(y == c).float()))
        else:
            auc[name] = None
            why = "no image of this class" if support[c] == 0 else "every image is of this class"
            notes.append(f"AUC of {name!r} is undefined ({why}); reported as null")
    missing = [names[c] for c in range(n_cls) if not present[c]]
    if missing:
        notes.append(f"classes {missing} have no true images: balanced accuracy averages over the others")
    defined_auc = [v for v in auc.values() if v is not None]
    per_class = {
        name: {
            "support": int(support[c]),
            "predicted": int(predicted[c]),
            "sensitivity": _as_float(sens[c]) if present[c] else None,
            "precision": _as_float(prec[c]) if predicted[c] else None,
            "f1": _as_float(f1[c]) if occurring[c] else None,
            "auc": auc[name],
        }
        for c, name in enumerate(names)
    }
    return {
        "num_samples": int(y.size),
        "class_names": names,
        "accuracy": float(np.trace(cm) / y.size),
        "balanced_accuracy": float(np.mean(sens[present])),
        "macro_f1": float(np.mean(f1[occurring])),
        "auc": auc,
        "macro_auc": float(np.mean(defined_auc)) if defined_auc else None,
        "confusion_matrix": cm.tolist(),
        "counts": {
            "true": {name: int(support[c]) for c, name in enumerate(names)},
            "predicted": {name: int(predicted[c]) for c, name in enumerate(names)},
        },
        "per_class": per_class,
        "chance_balanced_accuracy": 1.0 / n_cls,
        "notes": notes,
    }


def save_confusion_matrix(
    cm: Sequence[Sequence[float]] | np.ndarray,
    class_names: Sequence[str],
    path: str | PathLike,
    title: str = "Confusion matrix",
) -> Path:
    """Write a PNG with the confusion matrix as counts (left) and row-normalised (right: each true class sums to 1).

    Rows are true classes, columns predicted ones. Non-integer matrices (means over seeds) are written with one
    decimal. Uses matplotlib's Agg backend (no display needed). Returns the written path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    m = np.asarray(cm, dtype=float)
    names = [str(c) for c in class_names]
    if m.shape != (len(names), len(names)):
        raise ValueError(f"confusion matrix shape {m.shape} does not fit {len(names)} classes")
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    integral = np.allclose(m, np.round(m))
    size = 2.2 + 0.55 * len(names)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 3.0, size), constrained_layout=True)
    for ax, data, sub, fmt in (
        (axes[0], m, "counts", "{:.0f}" if integral else "{:.1f}"),
        (axes[1], norm, "row-normalised (sensitivity on the diagonal)", "{:.2f}"),
    ):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(float(data.max()), 1e-9) if data is m else 1.0)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(sub, fontsize=9)
        hi = data.max() / 2 if data.max() > 0 else 0.5
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(
                    j, i, fmt.format(data[i, j]), ha="center", va="center", color="white" if data[i, j] > hi else "k"
                )
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------------------------------------------------
# bundle helpers: data
# --------------------------------------------------------------------------------------------------------------------
def datalist_class_names(
    datalist: str | PathLike | Mapping[str, Any] | None, default: Sequence[str] = DEFAULT_CLASS_NAMES
) -> list[str]:
    """A classifier bundle's ``class_names`` default: the datalist's classes, or ``default`` when there is no
    datalist file or it names no classes (see :func:`medicraft_monai.data.datalist_class_names`)."""
    return _datalist_class_names(datalist, default=default)


def _item_class(item: Mapping[str, Any], labels: Mapping[str, Any], class_names: Sequence[str]) -> str:
    """The class *name* of a datalist item: ``class_name``, a string ``label``, or an index through ``labels``."""
    name = item.get(OCTKeys.CLASS_NAME)
    if name not in (None, ""):
        return str(name)
    label = item.get(OCTKeys.LABEL)
    if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
        return label
    if label is None or isinstance(label, bool):
        raise UnknownLabelError(item.get(OCTKeys.IMAGE), "the item has no 'label' (or 'class_name')")
    index = int(label)
    if labels:
        if str(index) not in labels:
            raise UnknownLabelError(
                item.get(OCTKeys.IMAGE), f"label {index} is not in the datalist's 'labels' {dict(labels)}"
            )
        return str(labels[str(index)])
    if not 0 <= index < len(class_names):
        raise UnknownLabelError(item.get(OCTKeys.IMAGE), f"label {index} is outside 0..{len(class_names) - 1}")
    return str(class_names[index])


def classification_items(
    datalist: str | PathLike | Mapping[str, Any],
    split: str,
    class_names: Sequence[str],
    required: bool = True,
) -> list[dict[str, Any]]:
    """A datalist split's items with ``label`` set to the index of the item's class in ``class_names``.

    An item's class is its ``class_name``, else its ``label`` when that is a class name, else the datalist's
    ``labels`` entry of its integer ``label``. Image paths become absolute (relative to the datalist's folder).

    Args:
        datalist: the datalist JSON file (or a loaded datalist with absolute paths).
        split: ``"training"``, ``"validation"`` or ``"test"``.
        class_names: the classifier's classes, in output order.
        required: an empty or missing split is an error (else an empty list).

    Raises:
        UnknownLabelError: an item's class is not in ``class_names`` (the message names the file).
        EmptyDatasetError: ``required`` and the split is empty.
        OCTDataError: the datalist cannot be read, or a patient or image leaks between splits.
    """
    from medicraft_monai.data.datalist import load_datalist

    where = None if isinstance(datalist, Mapping) else str(datalist)
    data = dict(datalist) if isinstance(datalist, Mapping) else load_datalist(datalist)
    items = data.get(split) or []
    if not items:
        if required:
            raise EmptyDatasetError(where, f"the datalist's {split!r} split is missing or empty")
        return []
    names = [str(c) for c in class_names]
    index = {n: i for i, n in enumerate(names)}
    labels = {str(k): v for k, v in (data.get("labels") or {}).items()}
    out = []
    for item in items:
        item = {OCTKeys.IMAGE: item} if isinstance(item, str) else dict(item)
        name = _item_class(item, labels, names)
        if name not in index:
            raise UnknownLabelError(
                item.get(OCTKeys.IMAGE),
                f"class {name!r} is not one of the classifier's class_names {names} "
                f"({split!r} split of {where or 'the datalist'}); pass --class_names with every class",
            )
        item[OCTKeys.LABEL] = index[name]
        item[OCTKeys.CLASS_NAME] = name
        out.append(item)
    return out


def inference_items(source: str | PathLike | Sequence[str | PathLike], split: str = "test") -> list[dict[str, Any]]:
    """Items ``{"image": path}`` to classify: a datalist JSON's ``split``, every image under a folder, or files.

    Labels of a datalist's items are kept (not needed). Raises :class:`EmptyDatasetError` when nothing is found
    and :class:`OCTDataError` for a path that does not exist.
    """
    from medicraft_monai.data.datalist import load_datalist

    if isinstance(source, (str, PathLike)):
        path = Path(source)
        if path.is_file() and path.suffix.lower() == ".json":
            items = load_datalist(path, split, check=False)
            out = [{OCTKeys.IMAGE: it} if isinstance(it, str) else dict(it) for it in items]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and str(p).lower().endswith(_IMAGE_SUFFIXES))
            out = [{OCTKeys.IMAGE: str(p)} for p in files]
        elif path.is_file():
            out = [{OCTKeys.IMAGE: str(path)}]
        else:
            raise OCTDataError(path, "input not found (give a datalist JSON, a folder of images or image files)")
        where = path
    else:
        out, where = [], None
        for p in source:
            if not Path(p).is_file():
                raise OCTDataError(p, "image file not found")
            out.append({OCTKeys.IMAGE: os.path.abspath(p)})  # absolute, symbolic links kept as the user gave them
    if not out:
        raise EmptyDatasetError(where, f"no images to classify (split {split!r} of a datalist, or image files)")
    for it in out:
        it.pop(OCTKeys.LABEL, None)  # predictions need none; a string label would break collation
    return out


def balanced_sampler(
    items: Sequence[Mapping[str, Any]], enabled: Any = True, seed: int = 0
) -> torch.utils.data.WeightedRandomSampler | None:
    """A ``WeightedRandomSampler`` drawing every class equally often (with replacement), or ``None`` when disabled.

    Each item is weighted by ``1 / count(its class)``; an epoch draws ``len(items)`` items. Use it with the
    DataLoader's ``shuffle=False``.
    """
    from medicraft_monai.utils import flag

    if not flag(enabled):
        return None
    if not items:
        raise EmptyDatasetError(None, "balanced_sampler: no items")
    labels = [int(it[OCTKeys.LABEL]) for it in items]
    counts = Counter(labels)
    weights = torch.tensor([1.0 / counts[c] for c in labels], dtype=torch.double)
    return torch.utils.data.WeightedRandomSampler(
        weights, num_samples=len(labels), replacement=True, generator=torch.Generator().manual_seed(int(seed))
    )


def loss_class_weights(
    items: Sequence[Mapping[str, Any]], mode: str, num_classes: int, device: str | torch.device = "cpu"
) -> torch.Tensor | None:
    """Cross-entropy class weights from :func:`medicraft_monai.data.class_weights` (``None`` for mode "none")."""
    from medicraft_monai.data.datalist import class_weights

    mode = str(mode).lower()
    if mode in ("none", "false", ""):
        return None
    return torch.tensor(class_weights(items, mode, num_classes=int(num_classes)), dtype=torch.float32, device=device)


# --------------------------------------------------------------------------------------------------------------------
# bundle helpers: engines
# --------------------------------------------------------------------------------------------------------------------
class ClassificationResultsWriter:
    """Collect an evaluator's per-image class probabilities and write them when the run completes.

    Writes ``predictions.json`` and ``predictions.csv`` (image, true class when known, predicted class and one
    probability column per class) to ``output_dir``; when every image has a label and ``metrics`` is on, also
    ``metrics.json`` (:func:`classification_metrics`) and ``confusion_matrix.png``.

    Attach it to an evaluator whose post-processing leaves the softmax probabilities under ``prob_key`` (B, C) and
    the labels (class index, or one-hot) under ``label_key``; image paths are read from the batch's ``path_key``.

    Args:
        class_names: the classes, in output order.
        output_dir: where to write.
        prob_key, label_key, path_key: keys in the engine's output/batch.
        metrics: write metrics and the figure when labels are available.
        title: figure title.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        output_dir: str | PathLike,
        prob_key: str = "probs",
        label_key: str = "label",
        path_key: str = "path",
        metrics: bool = True,
        title: str = "oct_classifier",
    ) -> None:
        self.class_names = [str(c) for c in class_names]
        self.output_dir = Path(output_dir)
        self.prob_key, self.label_key, self.path_key = prob_key, label_key, path_key
        self.metrics = bool(metrics)
        self.title = title
        self.rows: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    @staticmethod
    def _per_item(value: Any) -> list[Any]:
        if isinstance(value, list):
            return value
        return [None] if value is None else list(value)

    def _collect(self, engine: Engine) -> None:
        outputs = engine.state.output
        batch = engine.state.batch
        outputs = outputs if isinstance(outputs, list) else _decollate(outputs)
        batches = batch if isinstance(batch, list) else _decollate(batch)
        for out, data in zip(outputs, batches):
            prob = torch.as_tensor(out[self.prob_key]).detach().float().cpu().reshape(-1)
            label = out.get(self.label_key)
            if label is not None:
                label = torch.as_tensor(label).detach().cpu().reshape(-1)
                label = int(label.argmax()) if label.numel() > 1 else int(label.item())
            path = data.get(self.path_key) if isinstance(data, Mapping) else None
            self.rows.append({"image": str(path) if path is not None else None, "label": label, "prob": prob})

    def _write(self, engine: Engine) -> None:
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        names = self.class_names
        records = []
        for r in self.rows:
            p = r["prob"].tolist()
            rec: dict[str, Any] = {"image": r["image"]}
            if r["label"] is not None:
                rec["true_class"] = names[r["label"]]
            rec["predicted_class"] = names[int(np.argmax(p))]
            rec["probabilities"] = {n: float(v) for n, v in zip(names, p)}
            records.append(rec)
        write_text_atomic(
            out / "predictions.json", json.dumps({"class_names": names, "predictions": records}, indent=2)
        )
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["image", "true_class", "predicted_class", *[f"prob_{n}" for n in names]])
        for rec in records:
            writer.writerow(
                [rec["image"], rec.get("true_class", ""), rec["predicted_class"]]
                + [f"{rec['probabilities'][n]:.6f}" for n in names]
            )
        write_text_atomic(out / "predictions.csv", table.getvalue())
        logger.info("wrote %d predictions to %s", len(records), out / "predictions.csv")
        self.result = {"predictions": records}
        if not self.metrics or not self.rows or any(r["label"] is None for r in self.rows):
            return
        y = [r["label"] for r in self.rows]
        probs = torch.stack([r["prob"] for r in self.rows])
        result = classification_metrics(y, probs, names)
        write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
        save_confusion_matrix(
            result["confusion_matrix"],
            names,
            out / "confusion_matrix.png",
            f"{self.title}: accuracy {result['accuracy']:.3f}, balanced accuracy {result['balanced_accuracy']:.3f}",
        )
        logger.info(
            "accuracy %.4f, balanced accuracy %.4f, macro F1 %.4f (%d images); wrote %s",
            result["accuracy"],
            result["balanced_accuracy"],
            result["macro_f1"],
            result["num_samples"],
            out / "metrics.json",
        )
        self.result.update(result)


def pred_label_indices(
    output: Any, pred_key: str = "pred", label_key: str = "label"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, C)`` class scores and ``(B,)`` class indices from an evaluator's (decollated) output.

    The ``output_transform`` of ignite classification metrics (``ignite.metrics.Recall(average=True)`` is the
    validation balanced accuracy): labels may be indices or one-hot vectors.
    """
    items = output if isinstance(output, list) else _decollate(output)
    pred = torch.stack([torch.as_tensor(o[pred_key]).reshape(-1) for o in items]).float()
    labels = [torch.as_tensor(o[label_key]).reshape(-1) for o in items]
    label = torch.stack([v.argmax() if v.numel() > 1 else v[0] for v in labels]).long()
    return pred, label.to(pred.device)


def _decollate(batch: Any) -> list[Any]:
    from monai.data import decollate_batch

    return decollate_batch(batch)


class KeyMetricState:
    """The best-model ``CheckpointSaver``'s record of the best validation so far, as a checkpointable object.

    Put it in the training-state ``save_dict`` (and the ``CheckpointLoader``'s ``load_dict``): after ``resume`` the
    saver then replaces ``model.pt`` only with a model better than the best one before the interruption.

    Args:
        saver: a MONAI ``CheckpointSaver`` with ``save_key_metric=True``.
    """

    def __init__(self, saver: Any) -> None:
        self.saver = saver

    def _checkpoint(self) -> Any:
        ckpt = getattr(self.saver, "_key_metric_checkpoint", None)
        if ckpt is None:
            raise ValueError("KeyMetricState needs a CheckpointSaver with save_key_metric=True")
        return ckpt

    def state_dict(self) -> dict[str, Any]:
        return self._checkpoint().state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.saver.load_state_dict(dict(state_dict))
