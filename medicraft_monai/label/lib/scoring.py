"""Scoring method ``qa``: the evaluation bundle's per-image checks on every synthetic image of the datastore.

Each synthetic image gets the checks of :class:`~medicraft_monai.evaluation.per_image.ImageQA` (the automated
anatomy checks, the classifier's class against the intended class with its confidence, the distance to the nearest
real training image with the memorisation flag), stored in the image's info under ``qa``
(:func:`~medicraft_monai.evaluation.per_image.qa_record`, plus ``scored``: when). The review page shows them after
the human verdict, ``medicraft review export`` compares them with the verdicts, and the ``review`` strategy can serve
the images the classifier is least sure about first (``order: "uncertain"``).

New images are scored in the server process as soon as ``synthesize`` registers them (:meth:`ScoreSynthetic.submit`,
one background worker); ``POST /scoring/qa?run_sync=true`` scores every image that has no ``qa`` yet (body
``{"rescore": true}``: all of them again; ``{"images": [ids]}``: those). Without ``run_sync`` MONAI Label runs a
scoring method in a new process whose datastore writes the server would not see (and would overwrite later): the
method refuses to run there, and that background task ends with the reason.
"""

from __future__ import annotations

import datetime as _dt
import logging
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.scoring import ScoringMethod

from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.evaluation.per_image import ImageQA, qa_record
from medicraft_monai.label.lib.datastore import QA_INFO_KEY

logger = logging.getLogger(__name__)

__all__ = ["QA_INFO_KEY", "ScoreSynthetic"]


class ScoreSynthetic(ScoringMethod):
    """Run :class:`ImageQA` on synthetic images of the datastore and store each result in the image's info.

    Args:
        make_qa: builds the :class:`ImageQA` (called once, on first use: loading the networks and the real
            reference features takes a while, and a server that never scores should not pay for it).
        in_server: tells whether this process is the server (default: MONAI Label's FastAPI application is
            loaded, which MONAI Label's background task processes do not load); elsewhere the method refuses to run.
    """

    def __init__(self, make_qa: Callable[[], ImageQA], in_server: Callable[[], bool] | None = None) -> None:
        super().__init__(
            "Automated checks of synthetic images (anatomy, classifier agreement, distance to the nearest real "
            "training image); params: images, rescore; run with run_sync=true"
        )
        self._make_qa = make_qa
        self._qa: ImageQA | None = None
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Any, list[str]]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.in_server = in_server or (lambda: "monailabel.app" in sys.modules)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "info_key": QA_INFO_KEY, "pending": self._queue.qsize()}

    def qa(self) -> ImageQA:
        """The :class:`ImageQA` (built on first use)."""
        if self._qa is None:
            self._qa = self._make_qa()
        return self._qa

    # ----------------------------------------------------------------------------------------------- scoring
    def score(self, datastore: Any, image_ids: Sequence[str]) -> dict[str, Any]:
        """Score ``image_ids`` (synthetic images of ``datastore``) and store each result; returns the counts."""
        items, ids = [], []
        for image_id in image_ids:
            if not datastore.has_image(image_id):
                continue
            info = datastore.get_image_info(image_id)
            if not info.get("synthetic"):
                continue
            items.append({OCTKeys.IMAGE: datastore.get_image_uri(image_id), OCTKeys.CLASS_NAME: info.get("class_name")})
            ids.append(image_id)
        if not ids:
            return {"scored": [], "passed": 0, "failed": 0}
        passed = 0
        with self._lock:  # one scoring at a time: the networks are shared, and results are stored before the next
            rows = self.qa().assess(items)
            when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            for image_id, row in zip(ids, rows):
                record = {**qa_record(row), "scored": when}
                passed += bool(record["passed"])
                if datastore.has_image(image_id):  # it may have been removed meanwhile
                    datastore.save_checks(image_id, record)
        logger.info("qa: scored %d image(s), %d passed", len(ids), passed)
        return {"scored": ids, "passed": passed, "failed": len(ids) - passed}

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any]:
        if not self.in_server():
            raise HTTPException(
                status_code=409,
                detail="the qa scoring method runs in the server process: call POST /scoring/qa?run_sync=true",
            )
        wanted = request.get("images")
        if wanted is not None and (isinstance(wanted, str) or not isinstance(wanted, Sequence)):
            raise HTTPException(status_code=422, detail=f"'images' must be a list of image ids, got {wanted!r}")
        rescore = str(request.get("rescore", "false")).lower() in ("1", "true", "yes")
        if wanted is None:
            infos = {i: datastore.get_image_info(i) for i in datastore.list_images()}
            wanted = [
                i for i, info in infos.items() if info.get("synthetic") and (rescore or not info.get(QA_INFO_KEY))
            ]
        unknown = [i for i in wanted if not datastore.has_image(i)]
        if unknown:
            raise HTTPException(status_code=404, detail=f"image(s) {unknown} are not in the datastore")
        return self.score(datastore, list(wanted))

    # --------------------------------------------------------------------------------------------- background
    def submit(self, datastore: Any, image_ids: Sequence[str]) -> None:
        """Score ``image_ids`` in the background (one worker thread, in submission order)."""
        if not image_ids:
            return
        self._queue.put((datastore, list(image_ids)))
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="medicraft-qa", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:  # a daemon thread: it ends with the server
            datastore, ids = self._queue.get()
            try:
                self.score(datastore, ids)
            except Exception:  # noqa: BLE001 - a failed scoring must not end the worker; the images stay unscored
                logger.exception("qa: scoring %s failed; the images stay unscored (POST /scoring/qa to retry)", ids)
            finally:
                self._queue.task_done()
