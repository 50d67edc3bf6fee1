"""The ``qa`` MONAI Deploy application: the per-image QA table and pass/fail verdict of a synthetic set."""

from __future__ import annotations

__all__ = ["OCTQAApp"]


def __getattr__(name: str):  # the App SDK is imported only when the app is used
    if name == "OCTQAApp":
        from .app import OCTQAApp

        return OCTQAApp
    raise AttributeError(name)
