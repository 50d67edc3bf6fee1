"""Errors raised for bad OCT input.

Every error names the offending file (or folder) and the reason, so that a user with thousands of
B-scans can find and fix the one that is wrong. Collections of problems are reported together by
:class:`DataProblems`, so one bad file never hides the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from pathlib import Path


class OCTDataError(ValueError):
    """Base class for problems with OCT input data.

    Args:
        path: the file or folder the problem is about (``None`` when it is about no single file).
        reason: a human-readable explanation of what is wrong and, where possible, how to fix it.
    """

    def __init__(self, path: str | PathLike | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path is not None else reason)


class CorruptImageError(OCTDataError):
    """The file exists but cannot be decoded (corrupt, truncated, empty or not an image)."""


class UnsupportedFormatError(OCTDataError):
    """The file's format (suffix or DICOM SOP class) is not one medicraft_monai reads."""


class DimensionalityError(OCTDataError):
    """The image does not have the shape of a 2-D B-scan (or a stack of B-scans)."""


class UnknownLabelError(OCTDataError):
    """An item names a class that is not in the data set's class list."""


class EmptyDatasetError(OCTDataError):
    """A folder, CSV or DICOM folder holds no usable items."""


class SplitLeakError(OCTDataError):
    """The same image, or the same patient, appears in more than one split."""


class DataProblems(OCTDataError):
    """Several problems found while scanning a data set, reported together.

    Args:
        problems: the individual errors, each naming its file.
        context: what was being done (for example ``"building datalist from /data/oct"``).
    """

    def __init__(self, problems: Iterable[OCTDataError], context: str = "") -> None:
        self.problems = list(problems)
        self.context = context
        lines = "\n".join(f"  - {p}" for p in self.problems)
        head = f"{context}: " if context else ""
        super().__init__(None, f"{head}{len(self.problems)} problem(s):\n{lines}")

    @property
    def summary(self) -> str:
        """The problems in one line, for a command-line message: the first one (its file and reason), then what was
        being done and the names of the others (``str()`` lists every problem, one per line)."""
        if not self.problems:
            return self.context or "no problem listed"
        others = [Path(p.path).name if p.path else p.reason for p in self.problems[1:]]
        more = ""
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            more = f"; and {len(others)} more problem(s): {shown}"
        where = f"{self.context}{more}" if self.context else more.lstrip("; ")
        return f"{self.problems[0]} ({where})" if where else str(self.problems[0])
