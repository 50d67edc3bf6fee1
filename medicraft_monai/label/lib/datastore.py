"""A MONAI Label ``LocalDatastore`` that guards image ids and validates expert verdicts.

- Image ids are plain file stems: an id with a path separator, ``..``, a leading dot or a control character, or one
  that would resolve outside the studies folder, is refused with HTTP 400 (``PUT /datastore/image?image=../x``
  would otherwise write outside the studies folder).
- Unknown images answer 404 instead of MONAI Label's generic 500.
- Verdicts arrive as labels with tag ``review`` (``PUT /datastore/label?image=<id>&tag=review`` with the verdict
  JSON as the label file); they are validated (:func:`medicraft_monai.label.review.validate_verdict`, HTTP 422 for
  a bad one), merged with the image's earlier verdicts and stored twice: as the label file
  ``labels/review/<id>.json`` and in the image's info (``reviews``, ``review_status``).
- Image info cannot be used to forge reviews (``PUT /datastore/image/info`` with ``reviews`` answers 422).
- All writes hold one lock, so concurrent requests never lose each other's updates of ``datastore_v2.json``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore

from medicraft_monai.label.review import (
    REVIEW_TAG,
    ReviewError,
    decide,
    image_id_problem,
    merge_review,
    validate_verdict,
)

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = ("*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.nii.gz", "*.nii", "*.dcm")
"""Files in the studies folder that are images (MONAI Label's default list has no ``*.jpeg``)."""

PROTECTED_INFO = ("reviews", "review_status")
"""Image-info keys only the review path may write."""


def check_image_id(image_id: Any, root: str | os.PathLike) -> str:
    """Return ``image_id`` when it is a safe file stem inside ``root``; raise HTTP 400 otherwise."""
    problem = image_id_problem(image_id, root)
    if problem is not None:
        raise HTTPException(status_code=400, detail=f"image id {image_id!r} {problem}")
    return image_id


class ReviewDatastore(LocalDatastore):
    """``LocalDatastore`` with safe ids, 404 for unknown images and validated expert verdicts.

    Args:
        datastore_path: the studies folder.
        extensions: image file patterns (default :data:`IMAGE_EXTENSIONS`).
        auto_reload: watch the folder for files added by hand (off by default: every change goes through the API).
        read_only: do not reconcile the folder with ``datastore_v2.json`` at start.
    """

    def __init__(
        self,
        datastore_path: str,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        auto_reload: bool = False,
        read_only: bool = False,
    ) -> None:
        self._write_lock = threading.RLock()
        super().__init__(datastore_path, extensions=list(extensions), auto_reload=auto_reload, read_only=read_only)

    # ---------------------------------------------------------------------------------------------------------- ids
    def _known(self, image_id: Any) -> str:
        check_image_id(image_id, self._datastore.image_path())
        if image_id not in self._datastore.objects:
            raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")
        return image_id

    def has_image(self, image_id: str) -> bool:
        """True when ``image_id`` names an image of the datastore."""
        return isinstance(image_id, str) and image_id in self._datastore.objects

    def studies_path(self) -> Path:
        """The folder holding the images."""
        return Path(self._datastore.image_path()).resolve()

    # ------------------------------------------------------------------------------------------------------- writes
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Add an image; the id (given or derived from the file name) must be a safe file stem."""
        if not image_id:
            image_id, _ = self._to_id(os.path.basename(image_filename))
        check_image_id(image_id, self._datastore.image_path())
        info = dict(image_info or {})
        forged = [k for k in PROTECTED_INFO if k in info]
        if forged:
            raise HTTPException(
                status_code=422,
                detail=f"image info may not set {forged}; submit verdicts as labels with tag {REVIEW_TAG!r}",
            )
        if info.get("synthetic"):
            info.setdefault("review_status", "unreviewed")
        with self._write_lock:
            return super().add_image(image_id, image_filename, info)

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Update an image's info (404 for unknown images; review fields are refused)."""
        self._known(image_id)
        forged = [k for k in PROTECTED_INFO if k in (info or {})]
        if forged:
            raise HTTPException(
                status_code=422,
                detail=f"image info may not set {forged}; submit verdicts as labels with tag {REVIEW_TAG!r}",
            )
        with self._write_lock:
            super().update_image_info(image_id, info)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        self._known(label_id)
        if label_tag == REVIEW_TAG:
            raise HTTPException(status_code=422, detail="review labels change only by submitting a new verdict")
        if not self._datastore.label(label_id, label_tag):
            raise HTTPException(status_code=404, detail=f"image {label_id!r} has no label with tag {label_tag!r}")
        with self._write_lock:
            super().update_label_info(label_id, label_tag, info)

    def remove_image(self, image_id: str) -> None:
        self._known(image_id)
        with self._write_lock:
            super().remove_image(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        self._known(label_id)
        with self._write_lock:
            super().remove_label(label_id, label_tag)

    def refresh(self) -> None:
        with self._write_lock:
            super().refresh()

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Save a label; a ``review`` label is an expert verdict, validated and merged with earlier verdicts."""
        self._known(image_id)
        if label_tag != REVIEW_TAG:
            check_image_id(label_tag, self._datastore.label_path(None))  # a tag is a folder name too
            with self._write_lock:
                return super().save_label(image_id, label_filename, label_tag, label_info)
        try:
            with open(label_filename, encoding="utf-8") as f:
                payload = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise HTTPException(
                status_code=422, detail=f"review of {image_id!r}: the verdict is not JSON ({err})"
            ) from None
        return self.save_review(image_id, payload)

    def save_review(self, image_id: str, payload: Any) -> str:
        """Validate a verdict and store it with the image; returns the image id (HTTP 404/422 on errors)."""
        self._known(image_id)
        try:
            review = validate_verdict(payload, image_id)
        except ReviewError as err:
            raise HTTPException(status_code=err.status, detail=err.reason) from None
        with self._write_lock:
            info = self._datastore.objects[image_id].image.info
            reviews = merge_review(info.get("reviews"), review)
            decision = decide(reviews)
            record = {"image": image_id, "reviews": reviews, "decision": decision}
            fd, tmp = tempfile.mkstemp(suffix=".json", prefix="review_")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(record, f, indent=2)
                super().save_label(
                    image_id,
                    tmp,
                    REVIEW_TAG,
                    {"reviews": reviews, "decision": decision, "reviewer": review["reviewer"]},
                )
            finally:
                os.unlink(tmp)
            info["reviews"] = reviews
            info["review_status"] = "accepted" if decision == "accept" else "rejected"
            self._update_datastore_file()
        logger.info("review of %s by %s: %s %s", image_id, review["reviewer"], review["verdict"], review["anomalies"])
        return image_id
