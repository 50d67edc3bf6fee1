"""Active-learning strategy ``review``: the next synthetic image no expert has judged yet, the oldest first or the
one the automated checks are least sure about first."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.strategy import Strategy

__all__ = ["ORDERS", "NextUnreviewed"]

ORDERS: tuple[str, ...] = ("oldest", "uncertain")
"""How the next image is chosen: the oldest first, or the highest classifier uncertainty of its automated checks
(``qa.classifier.uncertainty``, the normalised entropy of the classifier's probabilities) first; images not scored
yet come after the scored ones, oldest first."""


class NextUnreviewed(Strategy):
    """Serve the oldest unreviewed synthetic image, optionally of one class.

    Request params (``POST /activelearning/review`` JSON body): ``class`` (optional, one of ``class_names``: 422
    otherwise), ``client_id`` (the reviewer; an image served to another reviewer within ``lease_s`` seconds is
    skipped so two experts do not judge the same image at once), ``lease_s``, ``order`` (one of :data:`ORDERS`),
    ``skip`` (ids the reviewer passed over, not served again in this request).
    Answers ``{}`` when nothing is left.

    Args:
        class_names: the generator's classes (for validating ``class``).
        lease_s: default seconds an image stays with the reviewer it was served to.
        order: the default order (:data:`ORDERS`).
    """

    def __init__(self, class_names: Sequence[str], lease_s: float = 300.0, order: str = "oldest") -> None:
        super().__init__("Next unreviewed synthetic image (params: class, client_id, lease_s, order, skip)")
        if order not in ORDERS:
            raise ValueError(f"review order must be one of {list(ORDERS)}, got {order!r}")
        self.class_names = [str(c) for c in class_names]
        self.lease_s = float(lease_s)
        self.order = order

    def info(self) -> dict[str, Any]:
        return {**super().info(), "classes": self.class_names, "order": self.order, "orders": list(ORDERS)}

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any]:
        wanted = request.get("class", request.get("class_name"))
        if wanted not in (None, "") and str(wanted) not in self.class_names:
            raise HTTPException(status_code=422, detail=f"unknown class {wanted!r}; choose one of {self.class_names}")
        client = request.get("client_id")
        try:
            lease = float(request.get("lease_s", self.lease_s))
        except (TypeError, ValueError):
            raise HTTPException(
                status_code=422, detail=f"'lease_s' must be a number, got {request.get('lease_s')!r}"
            ) from None
        skip = request.get("skip") or []
        if isinstance(skip, str) or not isinstance(skip, (list, tuple)) or not all(isinstance(i, str) for i in skip):
            raise HTTPException(status_code=422, detail=f"'skip' must be a list of image ids, got {skip!r}")
        skip = set(skip)
        order = request.get("order") or self.order
        if order not in ORDERS:
            raise HTTPException(status_code=422, detail=f"'order' must be one of {list(ORDERS)}, got {order!r}")
        now = time.time()
        candidates = []
        for image_id in datastore.list_images():
            info = datastore.get_image_info(image_id)
            if not info.get("synthetic") or info.get("reviews") or image_id in skip:
                continue
            if wanted not in (None, "") and info.get("class_name") != str(wanted):
                continue
            served = (info.get("strategy") or {}).get("review") or {}
            if client and served.get("client_id") not in (None, client) and now - served.get("ts", 0) < lease:
                continue
            created = (info.get("provenance") or {}).get("created", "")
            key: tuple[Any, ...] = (created, info.get("ts", 0), image_id)
            if order == "uncertain":
                uncertainty = ((info.get("qa") or {}).get("classifier") or {}).get("uncertainty")
                key = (uncertainty is None, -(uncertainty or 0.0), *key)
            candidates.append(key)
        if not candidates:
            return {}
        return {"id": min(candidates)[-1]}
