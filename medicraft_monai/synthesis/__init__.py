"""Dataset multiplication: load a generator bundle, plan counts, sample, write files, datalists and manifests."""

from __future__ import annotations

from .generator import DiffusionGenerator, GeneratorError, file_sha256

__all__ = ["DiffusionGenerator", "GeneratorError", "file_sha256"]
