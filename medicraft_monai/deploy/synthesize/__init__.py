"""The ``synthesize`` MONAI Deploy application: N synthetic B-scans per class from a diffusion bundle."""

from __future__ import annotations

__all__ = ["OCTSynthesizeApp"]


def __getattr__(name: str):  # the App SDK is imported only when the app is used
    if name == "OCTSynthesizeApp":
        from .app import OCTSynthesizeApp

        return OCTSynthesizeApp
    raise AttributeError(name)
