"""Blinded reading ("visual Turing test"): can readers tell real held-out B-scans from synthetic ones?

The review page mixes real held-out B-scans (the ``test`` split of the app's ``turing_datalist``, else its
``validation`` split) and synthetic images of the same classes at random; the reader answers "real" or "synthetic"
(and, optionally, the class). As in Zheng et al. (2020), accuracy near 50% means the readers could not tell them
apart; published OCT readers scored 54-60% on GAN images.

- :class:`TuringDeck` draws the trials. Each trial is known to the browser only by an opaque random token; which
  file it shows (and whether it is real) stays on the server, so a real image's file name, path or patient id never
  reaches the page, the answers file, the synthetic side (``accepted_datalist.json``, synthetic exports) or the
  report. Every trial image is rendered alike (:func:`~medicraft_monai.label.review.bscan_png`, at the generator's
  size, no metadata).
- :class:`TuringAnswers` keeps the answers in ``<studies>/.medicraft/turing_answers.json`` (rewritten atomically
  under a lock): per trial the token, reader, truth, answer, true class, class answer and times; for a synthetic
  trial also its datastore image id, for a real one nothing that identifies it.
- :func:`turing_summary` computes the readers' accuracy with a 95% Clopper-Pearson interval, overall, per reader and
  per true class, and the class accuracy where readers named one (``medicraft review export`` reports it).

This module has no MONAI Label dependency (the server and the export share it).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medicraft_monai.label.review import ReviewError, bscan_png
from medicraft_monai.utils import write_json_atomic

__all__ = [
    "TRUTHS",
    "TURING_ANSWERS",
    "TURING_NOTE",
    "TuringAnswers",
    "TuringDeck",
    "binomial_ci",
    "held_out_items",
    "load_turing_answers",
    "turing_markdown",
    "turing_summary",
]

TURING_ANSWERS = Path(".medicraft") / "turing_answers.json"
"""Where the blinded reading's answers are kept, relative to the studies folder."""

TRUTHS: tuple[str, str] = ("real", "synthetic")

TURING_NOTE = (
    "Accuracy at telling real from synthetic images: about 50% means the readers could not tell them apart "
    "(chance); published OCT readers scored 54-60% on GAN-made images (Zheng et al. 2020). The interval is the "
    "95% Clopper-Pearson (exact binomial) confidence interval."
)

_MAX_PENDING = 10000


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def binomial_ci(successes: int, trials: int, confidence: float = 0.95) -> list[float] | None:
    """The Clopper-Pearson (exact) confidence interval ``[low, high]`` of a proportion; None without trials."""
    if trials <= 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="exact")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def held_out_items(datalist: str | os.PathLike, class_names: Sequence[str]) -> list[dict[str, str]]:
    """The real held-out images of a project datalist: its ``test`` split, else its ``validation`` split.

    Args:
        datalist: the datalist JSON (project format, see :func:`medicraft_monai.data.datalist.load_datalist`).
        class_names: the generator's classes; items of other classes (and synthetic items) are left out.

    Returns:
        ``[{"path", "class_name"}]``.

    Raises:
        ValueError: neither split has a real image of the generator's classes.
    """
    from medicraft_monai.data.datalist import datalist_class_names, load_datalist

    data = load_datalist(datalist)
    names = datalist_class_names(data, default=[])
    for split in ("test", "validation"):
        items = []
        for item in data.get(split) or []:
            if item.get("synthetic"):
                continue
            name = item.get("class_name")
            if name is None and isinstance(item.get("label"), int) and 0 <= item["label"] < len(names):
                name = names[item["label"]]
            if name is not None and str(name) in class_names:
                items.append({"path": str(item["image"]), "class_name": str(name)})
        if items:
            return items
    raise ValueError(f"{datalist}: no real image of the classes {list(class_names)} in its test or validation split")


class TuringAnswers:
    """The answers of the blinded reading in a studies folder (``.medicraft/turing_answers.json``).

    Args:
        studies: the MONAI Label studies folder.
    """

    def __init__(self, studies: str | os.PathLike) -> None:
        self.path = Path(studies) / TURING_ANSWERS
        self._lock = threading.Lock()

    def load(self) -> list[dict[str, Any]]:
        """Every answer recorded so far (oldest first)."""
        return load_turing_answers(self.path.parent.parent)

    def add(self, record: Mapping[str, Any]) -> int:
        """Append one answer (the file is rewritten atomically); returns how many answers ``record``'s reader gave."""
        with self._lock:
            records = [*self.load(), dict(record)]
            write_json_atomic(self.path, {"version": 1, "trials": records})
        return sum(r.get("reader") == record.get("reader") for r in records)


def load_turing_answers(studies: str | os.PathLike) -> list[dict[str, Any]]:
    """The blinded reading's answers recorded in a studies folder (empty when there are none)."""
    path = Path(studies) / TURING_ANSWERS
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the blinded reading's answers ({err})") from None
    return [dict(r) for r in data.get("trials") or []]


class TuringDeck:
    """Draws the trials of the blinded reading and records the answers.

    Each trial is real or synthetic with probability 1/2, of a class drawn uniformly among the classes that have
    both real held-out and synthetic images, and shows an image of that pool the reader has not seen yet in this
    server's life (repeats only once the pool is exhausted).

    Args:
        real_items: the real held-out images (:func:`held_out_items`).
        answers: where answers go.
        size: ``(height, width)`` every trial image is rendered at (the generator's image size).
        rng: the random source (default: the system's, not reproducible by design).
        crop_height, resize_mode: how the generator's training data was prepared (rows kept around the retina, then
            resized with that mode); real images are prepared the same way, so that their framing does not tell them
            from the synthetic ones. None: resized as they are.
    """

    def __init__(
        self,
        real_items: Sequence[Mapping[str, str]],
        answers: TuringAnswers,
        size: Sequence[int],
        rng: Any = None,
        crop_height: int | None = None,
        resize_mode: str | None = None,
    ) -> None:
        self.real: dict[str, list[str]] = {}
        for item in real_items:
            self.real.setdefault(str(item["class_name"]), []).append(str(item["path"]))
        self.answers = answers
        self.size = (int(size[0]), int(size[1]))
        self.rng = rng if rng is not None else secrets.SystemRandom()
        self.crop_height = int(crop_height) if crop_height else None
        self.resize_mode = resize_mode
        self._pending: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    @property
    def real_count(self) -> int:
        """How many real held-out images the deck holds (a count only: never their names)."""
        return sum(len(v) for v in self.real.values())

    def classes(self, synthetic: Mapping[str, Sequence[tuple[str, str]]]) -> list[str]:
        """The classes a trial can be of: those with real held-out and synthetic images."""
        return sorted(c for c in self.real if synthetic.get(c))

    def draw(self, reader: Any, synthetic: Mapping[str, Sequence[tuple[str, str]]]) -> dict[str, Any]:
        """A new trial for ``reader``: ``{"token", "classes"}`` (nothing else reaches the browser).

        Args:
            reader: the reader's name.
            synthetic: class name -> ``[(datastore image id, file path)]`` of the synthetic images.

        Raises:
            ReviewError: no reader name (422) or no class with both real and synthetic images (409).
        """
        name = _reader(reader)
        classes = self.classes(synthetic)
        if not classes:
            raise ReviewError(
                "no class has both real held-out images (turing_datalist) and synthetic images yet: synthesize some",
                status=409,
            )
        with self._lock:
            truth = self.rng.choice(TRUTHS)
            cls = self.rng.choice(classes)
            pool = (
                [(f"real:{p}", p, None) for p in self.real[cls]]
                if truth == "real"
                else [(f"synthetic:{i}", p, i) for i, p in synthetic[cls]]
            )
            seen = self._seen.setdefault(name, set())
            fresh = [c for c in pool if c[0] not in seen] or pool
            key, path, image_id = self.rng.choice(fresh)
            seen.add(key)
            token = secrets.token_urlsafe(18)
            self._pending[token] = {"truth": truth, "class_name": cls, "path": path, "image": image_id,
                                    "reader": name, "issued": _now()}  # fmt: skip
            while len(self._pending) > _MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
        return {"token": token, "classes": classes}

    def _trial(self, token: Any) -> dict[str, Any]:
        trial = self._pending.get(token) if isinstance(token, str) else None
        if trial is None:
            raise ReviewError("unknown or already answered trial; load the next one", status=404)
        return trial

    def png(self, token: Any) -> bytes:
        """The trial's image as PNG (rendered like every other trial image; a real one prepared as the generator's
        training data was)."""
        trial = self._trial(token)
        if trial["truth"] == "real":
            return bscan_png(trial["path"], self.size, self.crop_height, self.resize_mode)
        return bscan_png(trial["path"], self.size)

    def answer(self, token: Any, reader: Any, answer: Any, class_answer: Any = None) -> dict[str, Any]:
        """Record a reader's answer to a trial; returns ``{"recorded", "answers"}`` (no truth: readers get no feedback).

        Raises:
            ReviewError: unknown token (404), another reader's trial, an answer that is not real/synthetic or an
                unknown class (422).
        """
        name = _reader(reader)
        if answer not in TRUTHS:
            raise ReviewError(f"'answer' must be one of {list(TRUTHS)}, got {answer!r}")
        with self._lock:
            trial = self._trial(token)
            if trial["reader"] != name:
                raise ReviewError(f"this trial was drawn for another reader, not {name!r}")
            if class_answer in (None, ""):
                class_answer = None
            elif class_answer not in self.real:
                raise ReviewError(f"unknown class {class_answer!r}; choose one of {sorted(self.real)}")
            self._pending.pop(token)
        record = {
            "token": token,
            "reader": name,
            "truth": trial["truth"],
            "answer": answer,
            "correct": answer == trial["truth"],
            "true_class": trial["class_name"],
            "class_answer": class_answer,
            "class_correct": None if class_answer is None else class_answer == trial["class_name"],
            "issued": trial["issued"],
            "time": _now(),
        }
        if trial["truth"] == "synthetic":
            record["image"] = trial["image"]  # a synthetic datastore id; a real image is never named
        count = self.answers.add(record)
        return {"recorded": True, "answers": count}


def _reader(reader: Any) -> str:
    name = " ".join(reader.split()) if isinstance(reader, str) else ""
    if not name:
        raise ReviewError("the reader's name is missing ('reader': a non-empty string)")
    return name


def _accuracy(records: Sequence[Mapping[str, Any]], key: str = "correct") -> dict[str, Any]:
    answered = [r for r in records if r.get(key) is not None]
    k = sum(bool(r[key]) for r in answered)
    n = len(answered)
    return {"trials": n, "correct": k, "accuracy": round(k / n, 4) if n else None, "ci95": binomial_ci(k, n)}


def _group(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out = _accuracy(records)
    out["real_trials"] = sum(r.get("truth") == "real" for r in records)
    out["synthetic_trials"] = sum(r.get("truth") == "synthetic" for r in records)
    out["real_called_real"] = sum(r.get("truth") == "real" and r.get("answer") == "real" for r in records)
    out["synthetic_called_synthetic"] = sum(
        r.get("truth") == "synthetic" and r.get("answer") == "synthetic" for r in records
    )
    out["class_accuracy"] = _accuracy(records, "class_correct")
    return out


def turing_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The readers' accuracy at telling real from synthetic, with 95% Clopper-Pearson intervals.

    Returns:
        ``{"trials", "correct", "accuracy", "ci95", "real_trials", "synthetic_trials", "real_called_real",
        "synthetic_called_synthetic", "class_accuracy", "per_reader", "per_class", "ci_method", "note"}``; each
        ``per_reader``/``per_class`` entry has the same figures (``per_class`` by the image's true class).
        Real images are only counted, never named.
    """
    rows = [dict(r) for r in records]
    out = _group(rows)
    readers = sorted({str(r.get("reader")) for r in rows})
    classes = sorted({str(r.get("true_class")) for r in rows})
    out["per_reader"] = {name: _group([r for r in rows if str(r.get("reader")) == name]) for name in readers}
    out["per_class"] = {c: _group([r for r in rows if str(r.get("true_class")) == c]) for c in classes}
    out["ci_method"] = "Clopper-Pearson (exact binomial), 95%"
    out["note"] = TURING_NOTE
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ci(ci: Sequence[float] | None) -> str:
    return "n/a" if not ci else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}%"


def turing_markdown(summary: Mapping[str, Any]) -> list[str]:
    """The Markdown section of the review report for :func:`turing_summary`'s result."""
    lines = ["## Blinded reading: real or synthetic?", ""]
    if not summary.get("trials"):
        return [*lines, "No blinded reading yet (the review page's blinded reading; `--conf turing_datalist`)."]
    lines += [
        f"{summary['trials']} trials ({summary['real_trials']} real held-out, {summary['synthetic_trials']} synthetic):"
        f" readers were right **{_pct(summary['accuracy'])}** of the time (95% CI {_ci(summary['ci95'])}).",
        "",
        TURING_NOTE,
        "",
        "| | trials | correct | accuracy | 95% CI | class named | class correct |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def row(label: str, g: Mapping[str, Any]) -> str:
        c = g["class_accuracy"]
        return (
            f"| {label} | {g['trials']} | {g['correct']} | {_pct(g['accuracy'])} | {_ci(g['ci95'])} | "
            f"{c['trials']} | {_pct(c['accuracy'])} |"
        )

    lines.append(row("all readers", summary))
    lines += [row(f"reader {name}", g) for name, g in summary["per_reader"].items()]
    lines += [row(f"class {name}", g) for name, g in summary["per_class"].items()]
    return lines
