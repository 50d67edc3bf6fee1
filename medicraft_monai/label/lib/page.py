"""The review page: a web page for the medical team, served by the app's own MONAI Label server at ``/review/``.

The page (static files in ``medicraft_monai/label/page/``: plain HTML, JavaScript and CSS, no build step, nothing
fetched from the network) uses MONAI Label's own endpoints where they exist (``POST /activelearning/review`` for the
next image, ``GET /datastore/image`` and ``/datastore/image/info``, ``PUT /datastore/label?tag=review`` for a
verdict, ``POST /infer/synthesize``) and these routes for the rest:

====================================================  ============================================================
``GET /review/``                                      the page
``GET /review/api/config``                            classes, anomaly vocabulary, limits, blinded reading on/off
``GET /review/api/image?image=ID``                    any datastore image as an 8-bit PNG (TIFF, NIfTI, DICOM too)
``GET /review/api/references?class=NAME&image=ID``    up to ``n`` (3) real images of that class in the datastore
``DELETE /review/api/verdict?image=ID&reviewer=NAME``  withdraw that reviewer's own verdict (undo)
``GET /review/api/progress``                          reviewed / waiting and acceptance per class and anomaly tag
``POST /review/api/turing/next``                      a blinded-reading trial for ``{"reader"}``: an opaque token
``GET /review/api/turing/image/TOKEN``                the trial's image (real or synthetic, rendered alike)
``POST /review/api/turing/answer``                    ``{"token", "reader", "answer": real|synthetic, "class"}``
====================================================  ============================================================

Errors answer HTTP 4xx with a ``detail`` the page shows. With MONAI Label's authentication enabled the routes
require its roles like its own endpoints (the page itself sends no token: use it without authentication, on a
trusted network).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC

from medicraft_monai.label.export import review_summary
from medicraft_monai.label.review import ANOMALY_TAGS, VERDICTS, ReviewError, bscan_png, decide

__all__ = ["PAGE_DIR", "mount_review_page", "review_router"]

PAGE_DIR = Path(__file__).resolve().parents[1] / "page"
"""The page's static files (``index.html``, ``review.js``, ``review.css``), shipped as package data."""

_NO_STORE = {"Cache-Control": "no-store"}


def _http(err: ReviewError) -> HTTPException:
    return HTTPException(status_code=err.status, detail=err.reason)


def review_router(app: Any) -> APIRouter:
    """The JSON routes of the review page for a :class:`~medicraft_monai.label.main.MedicraftLabelApp`.

    ``app`` provides ``datastore()`` (a :class:`~medicraft_monai.label.lib.datastore.ReviewDatastore`),
    ``synthesizer`` (its generator's ``class_names``, ``image_shape`` and ``num_inference_steps``, and
    ``max_count``) and ``turing`` (a :class:`~medicraft_monai.label.turing.TuringDeck` or None).
    """
    router = APIRouter(prefix="/review", tags=["Review page"])
    user = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))
    annotator = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))

    def classes() -> list[str]:
        return [str(c) for c in app.synthesizer.generator.class_names]

    def synthetic_pool() -> dict[str, list[tuple[str, str]]]:
        store = app.datastore()
        pool: dict[str, list[tuple[str, str]]] = {}
        for image_id in store.list_images():
            info = store.get_image_info(image_id)
            if info.get("synthetic") and info.get("class_name"):
                pool.setdefault(str(info["class_name"]), []).append((image_id, store.get_image_uri(image_id)))
        return pool

    def deck() -> Any:
        if app.turing is None:
            raise HTTPException(
                status_code=409,
                detail="the blinded reading needs real held-out images: start with --conf turing_datalist",
            )
        return app.turing

    @router.get("", include_in_schema=False)
    def page_redirect() -> RedirectResponse:
        return RedirectResponse("review/")

    @router.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html", headers=_NO_STORE)

    @router.get("/api/config", summary="Classes, anomaly vocabulary and limits of the review page")
    def config(_: Any = user) -> dict[str, Any]:
        turing = app.turing
        return {
            "classes": classes(),
            "anomaly_tags": list(ANOMALY_TAGS),
            "verdicts": list(VERDICTS),
            "max_count": int(app.synthesizer.max_count),
            "steps": int(app.synthesizer.generator.num_inference_steps),
            "turing": {
                "available": turing is not None,
                "classes": turing.classes(synthetic_pool()) if turing is not None else [],
                "real_images": turing.real_count if turing is not None else 0,
            },
        }

    @router.get("/api/image", summary="A datastore image as an 8-bit PNG")
    def image(image: str, _: Any = user) -> Response:
        store = app.datastore()
        if not store.has_image(image):
            raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
        return Response(bscan_png(store.get_image_uri(image)), media_type="image/png")

    @router.get("/api/references", summary="Real images of a class in the datastore, for reference")
    def references(
        class_name: str = Query(..., alias="class"), image: str = "", n: int = Query(3, ge=0, le=12), _: Any = user
    ) -> dict[str, Any]:
        store = app.datastore()
        real = []
        for image_id in store.list_images():
            info = store.get_image_info(image_id)
            if not info.get("synthetic") and info.get("class_name") == class_name:
                real.append(image_id)
        picked = random.Random(f"{image}:{class_name}").sample(sorted(real), min(n, len(real)))
        return {"class": class_name, "images": picked, "available": len(real)}

    @router.delete("/api/verdict", summary="Withdraw a reviewer's own verdict on an image (undo)")
    def withdraw(image: str, reviewer: str = "", _: Any = annotator) -> dict[str, Any]:
        return app.datastore().withdraw_review(image, reviewer)

    @router.get("/api/progress", summary="Reviewed / waiting and acceptance rates per class and anomaly tag")
    def progress(_: Any = user) -> dict[str, Any]:
        store = app.datastore()
        images = {}
        for image_id in store.list_images():
            info = store.get_image_info(image_id)
            reviews = list(info.get("reviews") or [])
            images[image_id] = {"synthetic": bool(info.get("synthetic")), "class_name": info.get("class_name"),
                                "reviews": reviews, "decision": decide(reviews)}  # fmt: skip
        summary = review_summary(images)
        for name in classes():
            summary["per_class"].setdefault(name, {"images": 0, "reviewed": 0, "accepted": 0, "acceptance_rate": None})
        for row in summary["per_class"].values():
            row["waiting"] = row["images"] - row["reviewed"]
        return summary

    @router.post("/api/turing/next", summary="A new blinded-reading trial (an opaque token)")
    def turing_next(body: dict[str, Any], _: Any = user) -> dict[str, Any]:
        try:
            trial = deck().draw(body.get("reader"), synthetic_pool())
        except ReviewError as err:
            raise _http(err) from None
        return {**trial, "image": f"api/turing/image/{trial['token']}"}

    @router.get("/api/turing/image/{token}", summary="The image of a blinded-reading trial")
    def turing_image(token: str, _: Any = user) -> Response:
        try:
            return Response(deck().png(token), media_type="image/png", headers=_NO_STORE)
        except ReviewError as err:
            raise _http(err) from None

    @router.post("/api/turing/answer", summary="Record a reader's answer: real or synthetic (and the class)")
    def turing_answer(body: dict[str, Any], _: Any = user) -> dict[str, Any]:
        try:
            return deck().answer(body.get("token"), body.get("reader"), body.get("answer"), body.get("class"))
        except ReviewError as err:
            raise _http(err) from None

    return router


def mount_review_page(app: Any, server: FastAPI | None = None) -> bool:
    """Add the review page's routes and static files to the running MONAI Label server.

    Args:
        app: the MONAI Label app instance (see :func:`review_router`).
        server: the FastAPI application; default: ``monailabel.app:app``, the one ``monailabel start_server``
            runs (a server started with another ``--uvicorn_app`` gets no page, with a warning).

    Returns:
        True when the page was added (or was there already).
    """
    if server is None:
        server = getattr(sys.modules.get("monailabel.app"), "app", None)
    if not isinstance(server, FastAPI):
        return False
    if any(getattr(r, "path", None) == "/review/api/config" for r in server.router.routes):
        return True
    server.include_router(review_router(app))
    server.mount("/review/static", StaticFiles(directory=PAGE_DIR), name="review-static")
    server.openapi_schema = None  # list the new routes in /openapi.json too
    return True
