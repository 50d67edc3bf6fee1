"""Checks of a datalist against a bundle before training: its classes must be the bundle's ``class_names``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

from medicraft_monai.data.datalist import read_datalist_json
from medicraft_monai.data.errors import EmptyDatasetError, UnknownLabelError
from medicraft_monai.data.keys import OCTKeys

__all__ = ["check_datalist_classes"]


def check_datalist_classes(
    datalist: str | PathLike | Mapping[str, Any],
    class_names: Sequence[str],
    splits: Sequence[str] = ("training",),
) -> list[str]:
    """Check that a datalist's classes are exactly ``class_names`` (same names, same order) before training.

    A class-conditioned model learns "label i means class_names[i]"; training it on a datalist whose labels mean
    something else would silently produce a model that draws the wrong class.

    Args:
        datalist: the datalist JSON file (or the loaded datalist) with a ``labels`` mapping ``{"0": name, ...}``.
        class_names: the bundle's ``class_names``.
        splits: splits that must be non-empty and whose item labels must be in range.

    Returns:
        the class names.

    Raises:
        OCTDataError: the file cannot be read.
        UnknownLabelError: no ``labels`` mapping, different classes, or an item label outside them.
        EmptyDatasetError: a split in ``splits`` is missing or empty.
    """
    where: str | None = None
    if isinstance(datalist, Mapping):
        data = datalist
    else:
        where = str(datalist)
        data = read_datalist_json(datalist)
    wanted = [str(c) for c in class_names]
    labels = data.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise UnknownLabelError(
            where,
            f"the datalist has no 'labels' mapping (index -> class name); it must name the classes {wanted} "
            "(build it with medicraft_monai.data.build_datalist)",
        )
    try:
        found = [str(labels[k]) for k in sorted(labels, key=int)]
    except ValueError:
        raise UnknownLabelError(where, f"'labels' keys must be class indices, got {sorted(labels)}") from None
    if sorted(int(k) for k in labels) != list(range(len(found))):
        raise UnknownLabelError(where, f"'labels' must be indexed 0..{len(found) - 1}, got {sorted(labels)}")
    if found != wanted:
        hint = "the same classes in another order" if sorted(found) == sorted(wanted) else "different classes"
        raise UnknownLabelError(
            where,
            f"the datalist's classes {found} are not the bundle's class_names {wanted} ({hint}; label i must mean "
            f'class_names[i]). Train with --class_names "{found!r}" or rebuild the datalist with '
            f"classes={wanted}.",
        )
    for split in splits:
        items = data.get(split)
        if not items:
            raise EmptyDatasetError(where, f"the datalist's {split!r} split is missing or empty")
        bad = sorted(
            {
                str(it.get(OCTKeys.LABEL))
                for it in items
                if not isinstance(it.get(OCTKeys.LABEL), int) or not 0 <= it[OCTKeys.LABEL] < len(wanted)
            }
        )
        if bad:
            raise UnknownLabelError(
                where, f"{split!r} items have labels {bad} outside 0..{len(wanted) - 1} (classes {wanted})"
            )
    return wanted
