"""The bundle registry: every bundle at hand, what it does and how well it does it, from its metadata.

``medicraft zoo list`` and :func:`find` list the shipped bundles, bundle folders and packed release archives
(``medicraft bundle pack``) with their task, classes, image size, version and the ``eval_metrics`` of their
``configs/metadata.json``; they filter by task and classes and rank by one metric. A bundle whose metadata reports
no numbers is listed as *unmeasured* and never ranked (nor is one that lacks the metric asked for)::

    from medicraft_monai.registry import find   # also medicraft_monai.zoo.find in an installed package

    find(task="generation", classes=["DME"])                 # generators that make DME B-scans
    find(task="classification", sort_by="balanced_accuracy")  # best first
    find(paths=["releases/"], sort_by="frechet_distance")     # lower is better for a distance: smallest first

Nothing is unpacked or loaded to list a bundle: the metadata and configs are read in place, inside archives too.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from medicraft_monai.bundles import COMMON_CONFIG, archive_bundle_name, bundles_root, list_bundles

__all__ = [
    "HEADLINE_METRICS",
    "SOURCES",
    "TASKS",
    "ZooEntry",
    "find",
    "format_info",
    "format_table",
    "higher_is_better",
    "info",
    "read_entry",
    "scan",
]

SOURCES = ("shipped", "folder", "archive")
"""Where an entry was found: shipped with the package, a bundle folder, a release archive."""

TASKS = ("generation", "classification", "restoration", "evaluation", "other")
"""The short task of an entry (:func:`task_of`); ``--task`` also matches words of the metadata's ``task`` text."""

#: words of a metric name that make a smaller value better (distances, losses, errors, memorisation)
_LOWER_IS_BETTER = re.compile(r"^(fd|fid|kid|frechet|distance|loss|error|mae|mse|rmse|nll|memori[sz]\w*|cop(y|ies))$")


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better: not for Frechet distances (``fd``, ``fid``, ``kid``),
    losses, errors and memorisation rates; yes for accuracies, AUCs, TSTR/TRTR scores and pass rates."""
    words = re.split(r"[^a-z0-9]+", metric.lower())
    return not any(_LOWER_IS_BETTER.match(w) for w in words if w)


def _flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of ``eval_metrics`` (nested objects joined by ``/``; lists, text and booleans left out)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flat_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


@dataclass(frozen=True)
class ZooEntry:
    """One bundle at hand, as its metadata and configs describe it.

    Attributes:
        name: the bundle's name (its folder name).
        version: ``version`` of its metadata.
        task: the short task (:data:`TASKS`).
        title: the metadata's ``name``; ``task_text``: its ``task``.
        classes: the classes it makes or tells apart (configs' ``class_names``, else the metadata's channels).
        image_size: (H, W) of the images it makes or takes, None when the bundle fixes none.
        eval_metrics: the metadata's ``eval_metrics`` as given.
        source: ``"shipped"``, ``"folder"`` or ``"archive"``; ``location``: the folder or the archive.
        metadata: the whole metadata.
        model_card: the text of ``docs/README.md`` ("" when there is none).
    """

    name: str
    version: str
    task: str
    title: str
    task_text: str
    classes: tuple[str, ...]
    image_size: tuple[int, ...] | None
    eval_metrics: dict[str, Any]
    source: str
    location: Path
    metadata: dict[str, Any] = field(repr=False, compare=False)
    model_card: str = field(default="", repr=False, compare=False)

    @property
    def metrics(self) -> dict[str, float]:
        """The numbers of :attr:`eval_metrics` by name (nested names joined by ``/``)."""
        return _flat_metrics(self.eval_metrics)

    @property
    def measured(self) -> bool:
        """Whether the metadata reports any number."""
        return bool(self.metrics)

    def metric(self, name: str) -> float | None:
        """The value of one metric, or None when the bundle does not report it."""
        return self.metrics.get(name)

    def summary(self) -> dict[str, Any]:
        """The entry as JSON-able values (what ``medicraft zoo list --as_json`` prints)."""
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "classes": list(self.classes),
            "image_size": list(self.image_size) if self.image_size else None,
            "eval_metrics": self.eval_metrics,
            "measured": self.measured,
            "source": self.source,
            "location": str(self.location),
        }


# --------------------------------------------------------------------------------------------------------------------
# reading one bundle, in a folder or in an archive
# --------------------------------------------------------------------------------------------------------------------
def task_of(meta: Mapping[str, Any]) -> str:
    """The short task of a bundle from its metadata: ``evaluation`` (the ``medicraft_bundle_role``, or feature
    outputs), ``generation`` (class labels in, or diffusion settings), ``classification`` (class outputs),
    ``restoration`` (an image out), else ``other``."""
    fmt = meta.get("network_data_format") or {}
    inputs, pred = fmt.get("inputs") or {}, (fmt.get("outputs") or {}).get("pred") or {}
    if meta.get("medicraft_bundle_role") == "evaluation" or pred.get("format") == "features":
        return "evaluation"
    if "class_labels" in inputs or "medicraft_diffusion" in meta:
        return "generation"
    if pred.get("format") == "classes":
        return "classification"
    if pred.get("type") == "image":
        return "restoration"
    return "other"


def _literal(configs: Sequence[Mapping[str, Any]], key: str) -> Any:
    """A config key's value when the merged configs give it as a plain value (not an expression or reference)."""
    value = None
    for config in configs:
        if key in config:
            value = config[key]
    if isinstance(value, str) and value.startswith(("$", "@", "%")):
        return None
    return value


def _classes(task: str, meta: Mapping[str, Any], configs: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    for key in ("class_names", "weights_class_names"):
        names = _literal(configs, key)
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return tuple(names)
    fmt = meta.get("network_data_format") or {}
    if task == "generation":
        channels = ((fmt.get("inputs") or {}).get("class_labels") or {}).get("channel_def") or {}
        return tuple(str(v) for k, v in sorted(channels.items(), key=lambda kv: int(kv[0])) if "null" not in str(v))
    if task == "classification":
        channels = ((fmt.get("outputs") or {}).get("pred") or {}).get("channel_def") or {}
        return tuple(str(v) for k, v in sorted(channels.items(), key=lambda kv: int(kv[0])))
    return ()


def _image_size(meta: Mapping[str, Any], configs: Sequence[Mapping[str, Any]]) -> tuple[int, ...] | None:
    size = _literal(configs, "image_size")
    if not (isinstance(size, list) and size and all(isinstance(n, int) for n in size)):
        shape = (((meta.get("network_data_format") or {}).get("inputs") or {}).get("image") or {}).get("spatial_shape")
        size = shape if isinstance(shape, list) and shape and all(isinstance(n, int) for n in shape) else None
    return tuple(size) if size else None


def _entry(name: str, source: str, location: Path, read: Callable[[str], str | None]) -> ZooEntry:
    """An entry from a bundle's files, ``read(relative path)`` giving a file's text or None when it is missing."""
    where = f"{location}{'' if source != 'archive' else f' ({name}/)'}"
    text = read("configs/metadata.json")
    if text is None:
        raise ValueError(f"{where}: no configs/metadata.json (not a bundle)")
    try:
        meta = json.loads(text)
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except ValueError as err:
        raise ValueError(f"{where}: configs/metadata.json is not a JSON object ({err})") from None
    configs = []
    for rel in (f"configs/{COMMON_CONFIG}", "configs/inference.json"):
        found = read(rel)
        try:
            loaded = json.loads(found) if found is not None else None
        except ValueError:
            loaded = None  # a YAML or broken config: its values are not needed to list the bundle
        if isinstance(loaded, dict):
            configs.append(loaded)
    task = task_of(meta)
    metrics = meta.get("eval_metrics")
    return ZooEntry(
        name=name,
        version=str(meta.get("version") or "?"),
        task=task,
        title=str(meta.get("name") or name),
        task_text=str(meta.get("task") or ""),
        classes=_classes(task, meta, configs),
        image_size=_image_size(meta, configs),
        eval_metrics=dict(metrics) if isinstance(metrics, Mapping) else {},
        source=source,
        location=location,
        metadata=meta,
        model_card=read("docs/README.md") or "",
    )


def read_entry(path: str | PathLike, source: str | None = None) -> ZooEntry:
    """The entry of one bundle folder or release archive (``source`` defaults to ``"folder"`` / ``"archive"``).

    Raises:
        ValueError: not a bundle folder or archive, or metadata that is not a JSON object (naming the file).
        FileNotFoundError: nothing at ``path``.
    """
    path = Path(path)
    if path.is_dir():
        folder = path.resolve()

        def read_folder(rel: str) -> str | None:
            file = folder / rel
            return file.read_text(encoding="utf-8") if file.is_file() else None

        return _entry(folder.name, source or "folder", folder, read_folder)
    if path.is_file():
        name = archive_bundle_name(path)
        with zipfile.ZipFile(path) as zf:
            members = set(zf.namelist())
            texts = {
                rel: zf.read(f"{name}/{rel}").decode("utf-8")
                for rel in (
                    "configs/metadata.json",
                    f"configs/{COMMON_CONFIG}",
                    "configs/inference.json",
                    "docs/README.md",
                )
                if f"{name}/{rel}" in members
            }
        return _entry(name, source or "archive", path.resolve(), texts.get)
    raise FileNotFoundError(f"{path}: no such bundle folder or archive")


def _found_under(path: Path) -> Iterable[Path]:
    """A bundle folder or archive itself, or the bundle folders and ``.zip`` archives directly inside a folder."""
    if path.is_file() or (path / "configs").is_dir():
        yield path
    elif path.is_dir():
        for child in sorted(path.iterdir()):
            if (child / "configs").is_dir() or (child.is_file() and child.suffix == ".zip"):
                yield child
    else:
        raise FileNotFoundError(f"{path}: no such bundle folder, archive or folder of bundles")


def scan(paths: str | PathLike | Sequence[str | PathLike] | None = None, shipped: bool = True) -> list[ZooEntry]:
    """Every bundle at hand: the shipped ones (``shipped``) and those in ``paths`` (bundle folders, release archives,
    or folders holding either), in that order.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a path given itself that is not a bundle (a ``.zip`` inside a folder that is not a bundle
            archive is skipped).
    """
    entries = [read_entry(bundles_root() / n, "shipped") for n in list_bundles()] if shipped else []
    given = [paths] if isinstance(paths, (str, PathLike)) else list(paths or [])
    for raw in given:
        top = Path(raw).expanduser()
        for path in _found_under(top):
            try:
                entries.append(read_entry(path))
            except ValueError:
                if path == top:
                    raise
    return entries


def _matches_task(entry: ZooEntry, task: str) -> bool:
    """A short task (:data:`TASKS`) matches that task only; other words match the metadata's task text."""
    wanted = task.strip().lower()
    return entry.task == wanted if wanted in TASKS else wanted in entry.task_text.lower()


def find(
    task: str | None = None,
    classes: str | Sequence[str] | None = None,
    sort_by: str | None = None,
    paths: str | PathLike | Sequence[str | PathLike] | None = None,
    shipped: bool = True,
    descending: bool | None = None,
) -> list[ZooEntry]:
    """The bundles at hand (:func:`scan`) that fit, ranked by one metric.

    Args:
        task: a short task (:data:`TASKS`: ``generation``, ``classification``, ...), or other words to find in the
            metadata's task text (``"latent"``).
        classes: class names (a list or comma-separated) the bundle must all know (case-insensitive).
        sort_by: an ``eval_metrics`` name (nested names joined by ``/``): the bundles reporting it come first, best
            first; the others follow, unranked, in name order.
        paths: bundle folders, release archives or folders holding them, besides the shipped bundles.
        shipped: include the bundles shipped with the package.
        descending: larger values first (default: :func:`higher_is_better` of the metric).

    Returns:
        The entries, ranked ones first (those with the metric), then the rest by name and version.
    """
    entries = scan(paths, shipped=shipped)
    if task:
        entries = [e for e in entries if _matches_task(e, task)]
    wanted = [c.strip().lower() for c in (classes.split(",") if isinstance(classes, str) else classes or [])]
    if wanted:
        entries = [e for e in entries if {c.lower() for c in e.classes} >= set(c for c in wanted if c)]
    entries.sort(key=lambda e: (e.name, e.version, e.source))
    if not sort_by:
        return entries
    larger_first = higher_is_better(sort_by) if descending is None else bool(descending)
    ranked = [e for e in entries if e.metric(sort_by) is not None]
    ranked.sort(key=lambda e: -e.metric(sort_by) if larger_first else e.metric(sort_by))  # type: ignore[operator]
    return ranked + [e for e in entries if e.metric(sort_by) is None]


def info(name: str | PathLike, paths: str | PathLike | Sequence[str | PathLike] | None = None) -> ZooEntry:
    """One bundle by its name (shipped or among ``paths``; the newest version when several), or by its folder or
    archive.

    Raises:
        FileNotFoundError: no bundle of that name at hand (the message lists those there are).
    """
    path = Path(name).expanduser()
    if path.exists() and (path.is_file() or (path / "configs").is_dir()):
        return read_entry(path)
    entries = [e for e in scan(paths) if e.name == str(name)]
    if not entries:
        known = ", ".join(sorted({e.name for e in scan(paths)})) or "none"
        raise FileNotFoundError(f"{name!r}: no bundle of that name at hand (known: {known})")

    def version_key(e: ZooEntry) -> tuple:
        return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.+-]", e.version))

    return max(entries, key=version_key)


# --------------------------------------------------------------------------------------------------------------------
# text for the command line
# --------------------------------------------------------------------------------------------------------------------
def _number(value: float) -> str:
    return f"{int(value)}" if value == int(value) and abs(value) >= 10 else f"{value:.4g}"


HEADLINE_METRICS = (
    "TSTR_over_TRTR",
    "frechet_distance",
    "anatomy_pass_rate_synthetic",
    "memorisation_exact_copies",
    "balanced_accuracy",
    "macro_f1",
)
"""The metrics ``zoo list`` shows first when a bundle reports them (a generator's utility, fidelity, anatomy and
privacy; a classifier's balanced accuracy)."""

#: words of a metric name that make it a count of the test data or a setting rather than a measure of quality
_NOT_QUALITY = {"images", "patients", "exams", "count", "num", "n", "steps", "epochs", "guidance", "scale"}


def _metrics_text(entry: ZooEntry, limit: int = 3) -> str:
    """The first ``limit`` measures of quality (the :data:`HEADLINE_METRICS` first; counts and settings left out)
    and how many more numbers there are."""
    metrics = entry.metrics
    if not metrics:
        return "unmeasured"
    quality = [k for k in metrics if not _NOT_QUALITY & set(re.split(r"[^a-z0-9]+", k.lower()))] or list(metrics)
    quality.sort(key=lambda k: HEADLINE_METRICS.index(k) if k in HEADLINE_METRICS else len(HEADLINE_METRICS))
    shown = ", ".join(f"{k} {_number(metrics[k])}" for k in quality[:limit])
    return shown + (f" (+{len(metrics) - limit})" if len(metrics) > limit else "")


def format_table(entries: Sequence[ZooEntry], sort_by: str | None = None) -> str:
    """A plain-text table of entries; with ``sort_by``, a rank and that metric's column (``-`` where unranked)."""
    head = ["name", "version", "task", "classes", "image size"]
    head += ["rank", sort_by] if sort_by else []
    head += ["eval_metrics", "source"]
    rows, rank = [], 0
    for e in entries:
        row = [e.name, e.version, e.task, ",".join(e.classes) or "-", "x".join(map(str, e.image_size or ())) or "-"]
        if sort_by:
            value = e.metric(sort_by)
            rank += value is not None
            row += [str(rank), _number(value)] if value is not None else ["-", "unmeasured" if not e.measured else "-"]
        row += [_metrics_text(e), f"{e.source}: {e.location}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if not rows:
        lines.append("(no bundle fits)")
    return "\n".join(lines)


def _card_summary(card: str) -> str:
    """The model card's first paragraph after its title."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", card) if p.strip()]
    body = [p for p in paragraphs if not p.startswith("#")]
    return " ".join(body[0].split()) if body else ""


def format_info(entry: ZooEntry) -> str:
    """The summary ``medicraft zoo info`` prints: metadata, classes, size, every metric and the model card's start."""
    meta = entry.metadata
    lines = [
        f"{entry.name} {entry.version}: {entry.title}",
        f"task: {entry.task} ({entry.task_text})" if entry.task_text else f"task: {entry.task}",
        f"classes: {', '.join(entry.classes) or '-'}",
        f"image size: {' x '.join(map(str, entry.image_size or ())) or '-'}",
        f"source: {entry.source}: {entry.location}",
    ]
    for key in ("intended_use", "data_source"):
        if meta.get(key):
            lines.append(f"{key.replace('_', ' ')}: {meta[key]}")
    if entry.measured:
        lines.append("eval_metrics:")
        lines += [f"  {k}: {_number(v)}" for k, v in entry.metrics.items()]
    else:
        lines.append("eval_metrics: unmeasured (the metadata reports no numbers)")
    summary = _card_summary(entry.model_card)
    if summary:
        lines.append(f"model card (docs/README.md): {summary}")
    return "\n".join(lines)
