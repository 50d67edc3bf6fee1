"""Evaluation of a synthetic OCT data set: one call (:func:`evaluate_synthesis`), one report.

The metrics themselves live in :mod:`medicraft_monai.metrics`; this package runs them on a real and a synthetic
datalist, saves each section as it finishes (an interrupted run resumes) and writes ``report.md`` and
``metrics.json``. ``bundles/oct_synthesis_eval`` and ``medicraft evaluate`` are thin wrappers around it.
"""

from medicraft_monai.evaluation.pipeline import EvaluationError, evaluate_synthesis
from medicraft_monai.evaluation.report import write_report
from medicraft_monai.evaluation.settings import EvaluationSettings

__all__ = ["EvaluationError", "EvaluationSettings", "evaluate_synthesis", "write_report"]
