"""MONAI Label app of medicraft_monai: synthesize on demand, classify, expert review and the feedback loop.

The app folder is this package's folder (:func:`app_dir`): ``main.py`` holds the ``MONAILabelApp`` subclass and
``lib/`` its tasks and the review page's routes (the page's static files are in ``page/``); both import MONAI Label
and run only in its own environment (``.venv-label``, made by ``scripts/setup_label_env.sh``). What the main
environment uses needs no MONAI Label:

- :mod:`~medicraft_monai.label.review`: the anomaly vocabulary, verdict validation and how an image is shown;
- :mod:`~medicraft_monai.label.export`: :func:`export_reviews` (accepted datalist + report) and
  :func:`filter_accepted` (keep only accepted synthetic images);
- :mod:`~medicraft_monai.label.turing`: the review page's blinded reading (real or synthetic?): trials with opaque
  tokens, the answers file and the readers' accuracy with its confidence interval;
- :mod:`~medicraft_monai.label.finetune`: the fine-tuning datalist and the generator bundle's fine-tuning command
  (``configs/finetune.json`` with the weights in use as the parent).
"""

from __future__ import annotations

from pathlib import Path

from .export import export_reviews, filter_accepted, load_reviews
from .review import ANOMALY_TAGS, REVIEW_TAG, ReviewError, decide, validate_verdict

__all__ = [
    "ANOMALY_TAGS",
    "REVIEW_TAG",
    "ReviewError",
    "app_dir",
    "decide",
    "export_reviews",
    "filter_accepted",
    "load_reviews",
    "validate_verdict",
]


def app_dir() -> Path:
    """The MONAI Label app folder (give it to ``monailabel start_server --app``)."""
    return Path(__file__).resolve().parent
