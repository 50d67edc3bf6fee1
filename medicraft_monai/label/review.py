"""Expert review of synthetic images: the anomaly vocabulary, verdict validation and how verdicts combine.

A verdict is a small JSON object that a clinician submits for one image (as a MONAI Label label with tag
``review``, see ``docs/label.md``)::

    {
      "verdict": "reject",                       # "accept" or "reject"
      "anomalies": ["doubled_fovea", "other"],   # tags from ANOMALY_TAGS (may be empty)
      "comment": "second pit 1 mm temporal",     # free text ("other" needs one)
      "reviewer": "Dr. A. Example",              # who judged it (required)
      "time": "2025-01-31T10:15:00+00:00"        # optional ISO 8601; the server's receive time is recorded too
    }

This module has no MONAI Label dependency: the server, ``medicraft review export`` and tests share it.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medicraft_monai.data.phantom import DEFECTS

__all__ = [
    "ANOMALY_TAGS",
    "DECISION_RULES",
    "OTHER_TAG",
    "REVIEW_TAG",
    "VERDICTS",
    "ReviewError",
    "bscan_png",
    "decide",
    "image_id_problem",
    "merge_review",
    "validate_verdict",
]

OTHER_TAG = "other"
ANOMALY_TAGS: tuple[str, ...] = (*DEFECTS, OTHER_TAG)
"""The fixed anomaly vocabulary: the failure modes the medicraft medical team named (the phantom's ``DEFECTS``:
doubled, absent and hypoplastic fovea, absent optic nerve head, corrupted image, abnormal vessel diameter) plus
``"other"`` (explained in the comment)."""

VERDICTS: tuple[str, str] = ("accept", "reject")
REVIEW_TAG = "review"
"""MONAI Label label tag under which verdicts are stored (``labels/review/<image id>.json`` in the studies folder)."""

DECISION_RULES: tuple[str, ...] = ("unanimous", "majority", "any")
"""How several reviewers' verdicts on one image combine: every reviewer accepted, more accepts than rejects, or
at least one accept."""

_FIELDS = {"verdict", "anomalies", "comment", "reviewer", "time"}
MAX_COMMENT = 4000
MAX_REVIEWER = 200


class ReviewError(ValueError):
    """A verdict that cannot be stored: missing reviewer, unknown tag, malformed fields.

    Args:
        reason: what is wrong and how to fix it.
        status: the HTTP status the server answers with (422: the request is well-formed but the verdict is not).
    """

    def __init__(self, reason: str, status: int = 422) -> None:
        self.reason = reason
        self.status = int(status)
        super().__init__(reason)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def validate_verdict(payload: Any, image_id: str = "") -> dict[str, Any]:
    """Check an expert's verdict and return it in normal form (lists sorted, text stripped, times recorded).

    Args:
        payload: the decoded JSON object a reviewer sent.
        image_id: the image it is about (only used in messages).

    Returns:
        ``{"verdict", "anomalies", "comment", "reviewer", "time", "received"}``.

    Raises:
        ReviewError: a missing or empty reviewer, a verdict that is not accept/reject, anomalies that are not a list
            of known tags, an "other" tag without a comment, unknown fields, a malformed time.
    """
    where = f"review of {image_id!r}: " if image_id else "review: "
    if not isinstance(payload, Mapping):
        raise ReviewError(f"{where}a verdict must be a JSON object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - _FIELDS)
    if unknown:
        raise ReviewError(f"{where}unknown field(s) {unknown}; allowed: {sorted(_FIELDS)}")

    reviewer = payload.get("reviewer")
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise ReviewError(f"{where}the reviewer's name is missing ('reviewer': a non-empty string)")
    reviewer = " ".join(reviewer.split())
    if len(reviewer) > MAX_REVIEWER:
        raise ReviewError(f"{where}reviewer name longer than {MAX_REVIEWER} characters")

    verdict = payload.get("verdict")
    if not isinstance(verdict, str) or verdict.strip().lower() not in VERDICTS:
        raise ReviewError(f"{where}'verdict' must be one of {list(VERDICTS)}, got {verdict!r}")
    verdict = verdict.strip().lower()

    anomalies = payload.get("anomalies", [])
    if isinstance(anomalies, str) or not isinstance(anomalies, Sequence):
        raise ReviewError(f"{where}'anomalies' must be a list of tags from {list(ANOMALY_TAGS)}, got {anomalies!r}")
    bad = [a for a in anomalies if not isinstance(a, str) or a not in ANOMALY_TAGS]
    if bad:
        raise ReviewError(f"{where}unknown anomaly tag(s) {bad}; the vocabulary is {list(ANOMALY_TAGS)}")
    tags = sorted(set(anomalies), key=ANOMALY_TAGS.index)

    comment = payload.get("comment", "")
    if comment is None:
        comment = ""
    if not isinstance(comment, str):
        raise ReviewError(f"{where}'comment' must be text, got {type(comment).__name__}")
    comment = comment.strip()
    if len(comment) > MAX_COMMENT:
        raise ReviewError(f"{where}comment longer than {MAX_COMMENT} characters")
    if OTHER_TAG in tags and not comment:
        raise ReviewError(f"{where}the tag 'other' needs a comment that says what is wrong")

    when = payload.get("time")
    if when is None or when == "":
        when = _now()
    elif not isinstance(when, str):
        raise ReviewError(f"{where}'time' must be an ISO 8601 text, got {when!r}")
    else:
        try:
            parsed = _dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            raise ReviewError(f"{where}'time' {when!r} is not an ISO 8601 date-time") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=_dt.timezone.utc)
        when = parsed.isoformat(timespec="seconds")
    return {
        "verdict": verdict,
        "anomalies": tags,
        "comment": comment,
        "reviewer": reviewer,
        "time": when,
        "received": _now(),
    }


def merge_review(reviews: Sequence[Mapping[str, Any]] | None, review: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Add a validated verdict to an image's list of verdicts; a reviewer's new verdict replaces their earlier one."""
    kept = [dict(r) for r in reviews or [] if r.get("reviewer") != review["reviewer"]]
    return [*kept, dict(review)]


def decide(reviews: Sequence[Mapping[str, Any]] | None, rule: str = "unanimous") -> str | None:
    """The image's decision from all its verdicts: ``"accept"``, ``"reject"``, or None when nobody reviewed it.

    Args:
        reviews: the verdicts (validated).
        rule: one of :data:`DECISION_RULES`.
    """
    if rule not in DECISION_RULES:
        raise ValueError(f"unknown decision rule {rule!r}; use one of {list(DECISION_RULES)}")
    votes = [r.get("verdict") for r in reviews or []]
    if not votes:
        return None
    accepts = sum(v == "accept" for v in votes)
    if rule == "unanimous":
        ok = accepts == len(votes)
    elif rule == "majority":
        ok = accepts > len(votes) - accepts
    else:
        ok = accepts > 0
    return "accept" if ok else "reject"


def image_id_problem(image_id: Any, root: str | os.PathLike) -> str | None:
    """Why ``image_id`` is not a safe datastore image id (a plain file stem inside the studies folder ``root``), or
    None when it is. The server refuses such ids; ``medicraft review export`` refuses images a datastore lists under
    them."""
    if not isinstance(image_id, str) or not image_id.strip():
        return "is empty"
    bad = (
        "/" in image_id
        or "\\" in image_id
        or ".." in image_id
        or image_id.startswith(".")
        or any(ord(c) < 32 for c in image_id)
        or len(image_id) > 255
    )
    base = Path(root).resolve()
    if bad or (base / image_id).resolve().parent != base:
        return "is not a plain file name inside the studies folder (no '/', '..' or leading '.')"
    return None


def bscan_png(
    path: str | os.PathLike,
    size: Sequence[int] | None = None,
    crop_height: int | None = None,
    resize_mode: str | None = None,
) -> bytes:
    """A B-scan file of any supported format as the review page shows it: an 8-bit grayscale PNG without metadata.

    No text chunk, file name or provenance is carried over (a blinded reader learns nothing but the pixels), so
    real and synthetic images of the same ``size`` are served alike.

    Args:
        path: the image file (PNG, JPEG, TIFF, NIfTI, DICOM: see :func:`medicraft_monai.data.io.read_bscan`).
        size: ``(height, width)`` to resize to (bilinear), or None to keep the image's own size.
        crop_height, resize_mode: with ``size``, prepare the image as a generator's training data is prepared
            (:func:`~medicraft_monai.metrics.images.load_images`: rows kept around the retina, then ``resize_mode``
            to ``size``), so a real B-scan is framed like the synthetic images a generator of that size makes.
    """
    from PIL import Image

    from medicraft_monai.data.io import read_bscan
    from medicraft_monai.visualize import to_uint8

    if size is not None and (crop_height or resize_mode):
        from medicraft_monai.metrics.images import load_images

        prepared = load_images([str(path)], tuple(size), crop_height=crop_height, progress=False,
                               resize_mode=resize_mode or "fit")[0][0, 0].numpy()  # fmt: skip
        image = Image.fromarray((prepared * 255.0 + 0.5).clip(0, 255).astype("uint8"), mode="L")
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    array, _ = read_bscan(path)
    image = Image.fromarray(to_uint8(array), mode="L")
    if size is not None:
        height, width = (int(v) for v in size)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
