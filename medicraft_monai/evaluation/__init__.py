"""Studies that train and compare, and the evaluation report of a synthetic OCT data set.

- :mod:`.pipeline`: one call (:func:`evaluate_synthesis`), one report: runs the metrics of
  :mod:`medicraft_monai.metrics` on a real and a synthetic datalist, saves each section as it finishes (an
  interrupted run resumes) and writes ``report.md`` and ``metrics.json``. ``bundles/oct_synthesis_eval`` and
  ``medicraft evaluate`` are thin wrappers around it;
- :mod:`.utility`: the TRTR/TSTR/TRTS utility study, which trains and tests the ``oct_classifier`` bundle;
- :mod:`.label_efficiency`: pretrained versus from-scratch classification with few labels, which runs the
  ``oct_context_restoration`` bundle's pretraining and fine-tuning configs;
- :mod:`.settings`, :mod:`.report`, :mod:`.per_image`: the evaluation's settings, its report, per-image records.

The metrics themselves (pure computations) live in :mod:`medicraft_monai.metrics`.
"""

from medicraft_monai.evaluation.pipeline import EvaluationError, evaluate_synthesis
from medicraft_monai.evaluation.report import write_report
from medicraft_monai.evaluation.settings import EvaluationSettings
from medicraft_monai.evaluation.utility import ClassifierSettings, evaluate_classifier, train_classifier, utility_study

__all__ = [
    "ClassifierSettings",
    "EvaluationError",
    "EvaluationSettings",
    "evaluate_classifier",
    "evaluate_synthesis",
    "train_classifier",
    "utility_study",
    "write_report",
]
