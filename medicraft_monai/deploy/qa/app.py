"""The ``qa`` application: the per-image QA gate a synthetic set passes before it leaves the lab.

Graph: ``OCTImageLoaderOperator`` (input folder or file; ``.json``/``.jsonl``/``.csv`` files, such as a synthesis
job's manifest, are skipped) -> ``ImageQAOperator`` (anatomy checks, classifier agreement, memorisation) ->
``QATableWriterOperator`` (``qa.json``, ``qa.csv`` and ``qa_summary.json`` in the output folder).

Paths come from ``-i/-o/-m`` or, when not given, ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH`` and
``HOLOSCAN_MODEL_PATH``. The model path is a folder holding the bundles (``oct_classifier/``,
``oct_synthesis_eval/``) and the real ``reference_datalist.json``; ``MEDICRAFT_QA_*`` variables change them and the
thresholds (:class:`~medicraft_monai.deploy.qa_gate.QASettings`).

Exit status: 0 when the gate ran, whatever its verdict (``qa_summary.json`` ``passed``/``verdict``); 2 for a usage
error (a missing bundle, datalist or input, a bad setting: the message names it); 3 when the gate fails and
``MEDICRAFT_QA_FAIL_EXIT=1``; 1 when the run itself breaks.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application

from medicraft_monai.deploy.operators import ImageQAOperator, OCTImageLoaderOperator, QATableWriterOperator
from medicraft_monai.deploy.qa_gate import SIDECAR_SUFFIXES, QASettings, QAUsageError

__all__ = ["EXIT_GATE_FAILED", "EXIT_USAGE", "OCTQAApp", "main"]

EXIT_USAGE = 2
EXIT_GATE_FAILED = 3


class OCTQAApp(Application):
    """Assess every synthetic B-scan of a folder and decide whether the set passes (see :mod:`.qa_gate`).

    Unreadable files are rows with their error (and fail the gate), never a failed run. After :meth:`run`,
    :attr:`summary` holds the gate's summary (None when the writer did not run).
    """

    name = "medicraft_oct_qa"
    description = "Per-image QA gate of synthetic OCT B-scans: anatomy, classifier agreement, memorisation."
    version = "0.1.0"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.settings: QASettings | None = None
        self._writer: QATableWriterOperator | None = None
        super().__init__(*args, **kwargs)

    @property
    def summary(self) -> dict[str, Any] | None:
        """The summary written to ``qa_summary.json`` (None before the writer ran)."""
        return None if self._writer is None else self._writer.summary

    def compose(self) -> None:
        """Check the inputs and settings, then wire loader -> QA -> writer, run once.

        Raises:
            QAUsageError: a missing input, bundle or datalist, or a bad ``MEDICRAFT_QA_*`` setting.
        """
        app_context: AppContext = Application.init_app_context(self.argv)
        logging.info("qa: %s", app_context)
        if not Path(app_context.input_path).exists():
            raise QAUsageError(f"{app_context.input_path}: input file or folder not found (-i or HOLOSCAN_INPUT_PATH)")
        if not Path(app_context.model_path).is_dir():
            raise QAUsageError(
                f"{app_context.model_path}: model folder not found (-m or HOLOSCAN_MODEL_PATH: the folder holding "
                "the bundles and the reference datalist)"
            )
        self.settings = QASettings.from_environ(app_context.model_path)
        loader = OCTImageLoaderOperator(
            self,
            CountCondition(self, 1),
            input_path=app_context.input_path,
            exclude_suffixes=SIDECAR_SUFFIXES,
            name="oct_loader",
        )
        qa = ImageQAOperator(self, settings=self.settings, name="image_qa")
        self._writer = QATableWriterOperator(
            self,
            output_folder=app_context.output_path,
            input_path=str(app_context.input_path),
            min_pass_fraction=self.settings.min_pass_fraction,
            max_memorised_fraction=self.settings.max_memorised_fraction,
            name="qa_writer",
        )
        self.add_flow(loader, qa, {("frames", "frames")})
        self.add_flow(qa, self._writer, {("qa", "qa")})


def main(argv: Sequence[str] | None = None) -> None:
    """Run the application (``argv`` like ``sys.argv``: program name first) and exit with its status."""
    app = OCTQAApp() if argv is None else OCTQAApp(list(argv))
    try:
        app.run()
    except QAUsageError as err:
        print(f"qa: error: {err}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)
    summary = app.summary
    if summary is None:
        print("qa: error: the QA table was not written (see the log above)", file=sys.stderr, flush=True)
        sys.exit(1)
    if app.settings is not None and app.settings.fail_exit and not summary["passed"]:
        sys.exit(EXIT_GATE_FAILED)


if __name__ == "__main__":
    main(sys.argv)
