"""The ``classify`` MONAI Deploy application: per-B-scan predictions with class probabilities (JSON and CSV)."""

from __future__ import annotations

__all__ = ["OCTClassifyApp"]


def __getattr__(name: str):  # the App SDK is imported only when the app is used
    if name == "OCTClassifyApp":
        from .app import OCTClassifyApp

        return OCTClassifyApp
    raise AttributeError(name)
