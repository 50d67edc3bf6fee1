"""How many synthetic images to make per class: the multiplication target and the plan it gives.

A target is one of:

- ``"balance"``: every class up to the largest class's count in the chosen split;
- ``"multiply:N"`` (or ``"multiply=N"``, ``"xN"``, or the number ``N`` itself): every class to ``N`` times its
  count (``N >= 1``, a float is allowed; the result is rounded half up);
- explicit counts per class, ``{"melanoma": 200, "benign": 50}`` (or the same as a JSON string): the number of
  synthetic images to add to each named class (classes not named get none).

Counts are taken from the real items (``synthetic`` false) of one split of a datalist (default: training).

A plan of counts becomes one :class:`ImageTask` per image (:func:`plan_tasks`): image ``index`` of class ``c`` always
gets the seed ``image_seed(seed, c, index)`` and the file ``images/<class>/synthetic_<class>_<index>_s<seed><suffix>``,
so the same job always yields the same images and a larger target only adds images.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medicraft_monai.data.datalist import SPLITS, datalist_class_names
from medicraft_monai.data.errors import EmptyDatasetError, OCTDataError, UnknownLabelError
from medicraft_monai.data.keys import OCTKeys

from .writers import FORMATS, check_format

__all__ = [
    "IMAGES_DIR",
    "ImageTask",
    "Target",
    "image_seed",
    "parse_target",
    "plan_counts",
    "plan_tasks",
    "real_counts",
    "safe_class_name",
]

IMAGES_DIR = "images"
"""Folder (under a job's output folder) holding one sub-folder of synthetic images per class."""

SEED_RANGE = 2**53  # seeds stay exact in JSON readers that use doubles

_MULTIPLY = re.compile(r"^\s*(?:multiply\s*[:=]\s*|x\s*)?(?P<n>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$", re.I)


@dataclass(frozen=True)
class Target:
    """A parsed multiplication target.

    Attributes:
        kind: ``"balance"``, ``"multiply"`` or ``"counts"``.
        factor: the multiplication factor (``kind == "multiply"``).
        counts: synthetic images to add per class name (``kind == "counts"``).
    """

    kind: str
    factor: float = 1.0
    counts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """A short text form (``balance``, ``multiply:2.5``, ``counts:{...}``) for logs and manifests."""
        if self.kind == "multiply":
            return f"multiply:{self.factor:g}"
        if self.kind == "counts":
            return "counts:" + json.dumps(self.counts, sort_keys=True)
        return self.kind


def _count_value(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"count for class {name!r} must be a whole number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"count for class {name!r} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"count for class {name!r} must be a whole number, got {value!r}")
    if number < 0:
        raise ValueError(f"count for class {name!r} is negative ({value!r}); give the number of images to add (>= 0)")
    return int(number)


def parse_target(target: str | float | int | Mapping[str, Any] | Target) -> Target:
    """Parse a target given as text (``"balance"``, ``"multiply:2"``, a JSON object), a number or a mapping.

    Raises:
        ValueError: an unknown target, a factor below 1 or not finite, or a negative or fractional count.
    """
    if isinstance(target, Target):
        return target
    if isinstance(target, bool):
        raise ValueError(f"unknown target {target!r}")
    if isinstance(target, (int, float)):
        factor = float(target)
    elif isinstance(target, Mapping):
        return Target("counts", counts={str(k): _count_value(str(k), v) for k, v in target.items()})
    elif isinstance(target, str):
        text = target.strip()
        if text.lower() == "balance":
            return Target("balance")
        if text.startswith("{"):
            try:
                mapping = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"target {target!r} looks like JSON counts per class but is not valid JSON: {e}"
                ) from None
            if not isinstance(mapping, dict):
                raise ValueError(f"target {target!r}: counts must be a JSON object {{class: count}}")
            return parse_target(mapping)
        match = _MULTIPLY.match(text)
        if match is None:
            raise ValueError(
                f"unknown target {target!r}; use 'balance', 'multiply:N' (N >= 1) or counts per class "
                "such as '{\"melanoma\": 200}'"
            )
        factor = float(match.group("n"))
    else:
        raise ValueError(f"unknown target {target!r} of type {type(target).__name__}")
    if not math.isfinite(factor) or factor < 1.0:
        raise ValueError(f"multiplication factor must be a finite number >= 1, got {factor:g}")
    return Target("multiply", factor=factor)


def real_counts(datalist: Mapping[str, Any], split: str = "training") -> dict[str, int]:
    """Real (non-synthetic) images per class in one split, in label order (classes without images give 0)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    names = datalist_class_names(datalist)
    counts: Counter[int] = Counter()
    for item in datalist.get(split) or []:
        if not isinstance(item, Mapping) or OCTKeys.LABEL not in item:
            raise OCTDataError(None, f"{split} item {item!r} has no {OCTKeys.LABEL!r}")
        if item.get(OCTKeys.SYNTHETIC):
            continue
        label = int(item[OCTKeys.LABEL])
        if not 0 <= label < len(names):
            raise UnknownLabelError(item.get(OCTKeys.IMAGE), f"label {label} is not in the datalist's labels {names}")
        counts[label] += 1
    return {name: counts.get(i, 0) for i, name in enumerate(names)}


def plan_counts(
    datalist: Mapping[str, Any],
    target: str | float | int | Mapping[str, Any] | Target,
    split: str = "training",
    class_names: Sequence[str] | None = None,
) -> dict[str, int]:
    """The number of synthetic images to add per class, in the datalist's label order.

    Args:
        datalist: a datalist (``labels`` and the split's items; see :mod:`medicraft_monai.data.datalist`).
        target: ``"balance"``, ``"multiply:N"`` / a number ``N >= 1``, or counts per class to add
            (see :func:`parse_target`).
        split: the split whose real items are counted (and which receives the synthetic images).
        class_names: the classes the generator knows; a class that needs images but is not among them is an
            error (None: no check).

    Returns:
        ``{class name: images to add}`` for every class of the datalist (0 where none are needed).

    Raises:
        ValueError: a bad target (unknown form, factor < 1, negative or fractional count).
        UnknownLabelError: a class named in the counts that is not in the datalist or not in the generator, or a
            class that needs images but that the generator does not know.
        EmptyDatasetError: the split has no real images (nothing to balance or multiply).
    """
    tgt = parse_target(target)
    have = real_counts(datalist, split)
    names = list(have)
    known = None if class_names is None else [str(c) for c in class_names]
    if tgt.kind == "counts":
        unknown = [c for c in tgt.counts if c not in have]
        if unknown:
            raise UnknownLabelError(None, f"unknown class name(s) {unknown} in --target; the datalist has {names}")
        plan = {name: int(tgt.counts.get(name, 0)) for name in names}
    else:
        if not any(have.values()):
            raise EmptyDatasetError(None, f"the {split!r} split has no real images to {tgt.kind}")
        if tgt.kind == "balance":
            top = max(have.values())
            plan = {name: top - n for name, n in have.items()}
        else:
            plan = {name: int(math.floor(n * tgt.factor + 0.5)) - n for name, n in have.items()}
    if known is not None:
        if tgt.kind == "counts":
            missing = [c for c in tgt.counts if c not in known]
        else:
            missing = [c for c, n in plan.items() if n > 0 and c not in known]
        if missing:
            raise UnknownLabelError(None, f"the generator does not know class(es) {missing}; it was trained on {known}")
    return plan


# --------------------------------------------------------------------------------------------------------------------
# the plan as tasks: one per image
# --------------------------------------------------------------------------------------------------------------------
def safe_class_name(name: str) -> str:
    """A class name as it appears in folder and file names (letters, digits, ``_`` and ``-``)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", str(name)).strip("-")
    return safe or "class"


def image_seed(base_seed: int, class_name: str, index: int, attempt: int = 0) -> int:
    """The seed of image ``index`` of ``class_name`` in a job with seed ``base_seed`` (in [0, 2**53))."""
    text = f"medicraft-multiply:{int(base_seed)}:{class_name}:{int(index)}"
    if attempt:
        text += f":{attempt}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % SEED_RANGE


@dataclass(frozen=True)
class ImageTask:
    """One synthetic image to make.

    Attributes:
        class_name: the class.
        label: its index in the label order.
        index: the image's number within its class (0, 1, ...).
        seed: its sampling seed.
        relpath: where it goes, relative to the output folder (posix).
    """

    class_name: str
    label: int
    index: int
    seed: int
    relpath: str


def plan_tasks(
    plan: Mapping[str, int], class_names: Sequence[str], base_seed: int = 0, fmt: str = "png"
) -> list[ImageTask]:
    """The images a plan asks for, in label order then index order (the same plan always gives the same list).

    Args:
        plan: images to make per class (from :func:`plan_counts`).
        class_names: the class names in label order (give each task its label).
        base_seed: the job's seed.
        fmt: output format (decides the suffix).
    """
    suffix = FORMATS[check_format(fmt, 8)[0]]
    safe = {c: safe_class_name(c) for c in class_names}
    clash = [c for c in class_names if list(safe.values()).count(safe[c]) > 1]
    if clash:
        raise ValueError(f"class names {clash} give the same file name; rename the classes")
    tasks: list[ImageTask] = []
    for label, name in enumerate(class_names):
        seen: set[int] = set()
        for index in range(int(plan.get(name, 0))):
            attempt, seed = 0, image_seed(base_seed, name, index)
            while seed in seen:  # never two images of a class from the same seed
                attempt += 1
                seed = image_seed(base_seed, name, index, attempt)
            seen.add(seed)
            stem = f"synthetic_{safe[name]}_{index:06d}_s{seed}"
            tasks.append(ImageTask(name, label, index, seed, f"{IMAGES_DIR}/{safe[name]}/{stem}{suffix}"))
    return tasks
