"""Engine pieces for ignite/MONAI workflows: prepare-batch callables and handlers."""

from __future__ import annotations

from .handlers import ClassSampleGridHandler
from .prepare_batch import ClassConditionedPrepareBatch

__all__ = ["ClassConditionedPrepareBatch", "ClassSampleGridHandler"]
