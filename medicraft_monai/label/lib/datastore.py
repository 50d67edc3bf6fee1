"""A MONAI Label ``LocalDatastore`` that guards image ids and validates expert verdicts.

- Image ids are plain file stems: an id with a path separator, ``..``, a leading dot or a control character, or one
  that would resolve outside the studies folder, is refused with HTTP 400 (``PUT /datastore/image?image=../x``
  would otherwise write outside the studies folder).
- Unknown images answer 404 instead of MONAI Label's generic 500.
- Verdicts arrive as labels with tag ``review`` (``PUT /datastore/label?image=<id>&tag=review`` with the verdict
  JSON as the label file); they are validated (:func:`medicraft_monai.label.review.validate_verdict`, HTTP 422 for
  a bad one), merged with the image's earlier verdicts and stored twice: as the label file
  ``labels/review/<id>.json`` and in the image's info (``reviews``, ``review_status``).
- A reviewer can withdraw their own verdict (:meth:`ReviewDatastore.withdraw_review`, the review page's undo).
- Image info cannot be used to forge reviews or automated checks (``PUT /datastore/image/info`` with ``reviews`` or
  ``qa`` answers 422).
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

QA_INFO_KEY = "qa"
"""The image-info key that holds an image's automated checks (written by the ``qa`` scoring method only)."""

PROTECTED_INFO = ("reviews", "review_status", QA_INFO_KEY)
"""Image-info keys only the review path and the scoring method may write."""


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
                detail=f"image info may not set {forged}; submit verdicts as labels with tag {REVIEW_TAG!r} "
                f"(automated checks come from the {QA_INFO_KEY!r} scoring method)",
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
                detail=f"image info may not set {forged}; submit verdicts as labels with tag {REVIEW_TAG!r} "
                f"(automated checks come from the {QA_INFO_KEY!r} scoring method)",
            )
        with self._write_lock:
            super().update_image_info(image_id, info)

    def save_checks(self, image_id: str, record: dict[str, Any]) -> None:
        """Store an image's automated checks (the ``qa`` scoring method's record) in its info."""
        self._known(image_id)
        with self._write_lock:
            self._datastore.objects[image_id].image.info[QA_INFO_KEY] = dict(record)
            self._update_datastore_file()

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
            self._store_reviews(image_id, merge_review(info.get("reviews"), review), review["reviewer"])
        logger.info("review of %s by %s: %s %s", image_id, review["reviewer"], review["verdict"], review["anomalies"])
        return image_id

    def withdraw_review(self, image_id: str, reviewer: Any) -> dict[str, Any]:
        """Withdraw ``reviewer``'s own verdict on an image (the review page's undo); other reviewers' stay.

        ``labels/review/<id>.json`` and the image's info are rewritten with the remaining verdicts; when none
        remains the label file is removed and the image is ``unreviewed`` again (served by the ``review`` strategy).

        Returns:
            ``{"image", "withdrawn" (the verdict taken back), "review_status", "reviews" (those left)}``.

        Raises:
            HTTPException: 422 for an empty reviewer name, 404 for an unknown image or when ``reviewer`` has no
                verdict on it.
        """
        self._known(image_id)
        name = " ".join(reviewer.split()) if isinstance(reviewer, str) else ""
        if not name:
            raise HTTPException(
                status_code=422, detail="the reviewer's name is missing ('reviewer': a non-empty string)"
            )
        with self._write_lock:
            obj = self._datastore.objects[image_id]
            reviews = list(obj.image.info.get("reviews") or [])
            mine = [r for r in reviews if r.get("reviewer") == name]
            if not mine:
                raise HTTPException(
                    status_code=404, detail=f"{name!r} has no verdict on image {image_id!r} to withdraw"
                )
            kept = [r for r in reviews if r.get("reviewer") != name]
            if kept:
                self._store_reviews(image_id, kept, kept[-1]["reviewer"])
            else:
                label = self._datastore.label(image_id, REVIEW_TAG)
                if label:
                    Path(self.get_label_uri(image_id, REVIEW_TAG)).unlink(missing_ok=True)
                obj.labels.pop(REVIEW_TAG, None)
                obj.image.info.pop("reviews", None)
                if obj.image.info.get("synthetic"):
                    obj.image.info["review_status"] = "unreviewed"
                else:
                    obj.image.info.pop("review_status", None)
                self._update_datastore_file()
            status = obj.image.info.get("review_status")
        logger.info("review of %s by %s withdrawn (%s)", image_id, name, mine[-1]["verdict"])
        return {"image": image_id, "withdrawn": mine[-1], "review_status": status, "reviews": kept}

    def _store_reviews(self, image_id: str, reviews: list[dict[str, Any]], reviewer: str) -> None:
        """Write an image's verdicts as ``labels/review/<id>.json`` and into its info (hold the write lock)."""
        info = self._datastore.objects[image_id].image.info
        decision = decide(reviews)
        record = {"image": image_id, "reviews": reviews, "decision": decision}
        fd, tmp = tempfile.mkstemp(suffix=".json", prefix="review_")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2)
            super().save_label(
                image_id, tmp, REVIEW_TAG, {"reviews": reviews, "decision": decision, "reviewer": reviewer}
            )
        finally:
            os.unlink(tmp)
        info["reviews"] = reviews
        info["review_status"] = "accepted" if decision == "accept" else "rejected"
        self._update_datastore_file()
