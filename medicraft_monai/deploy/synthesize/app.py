"""The ``synthesize`` application: N synthetic B-scans per class from a class-conditioned diffusion bundle.

Graph: ``SynthesisRequestOperator`` (defaults, ``MEDICRAFT_SYNTH_*`` variables, ``synthesis_request.json`` in the
input) -> ``DiffusionSynthesisOperator`` (bundle at the model path) -> ``SynthesisReportOperator``.

Paths come from ``-i/-o/-m`` or, when not given, ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH`` and
``HOLOSCAN_MODEL_PATH``. The model path is the bundle folder (``configs/inference.json`` and its weights) or a
folder holding one bundle. The input may be missing or empty: the request then comes from the environment.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application

from medicraft_monai.deploy.operators import (
    DiffusionSynthesisOperator,
    SynthesisReportOperator,
    SynthesisRequestOperator,
)

__all__ = ["OCTSynthesizeApp", "main"]


class OCTSynthesizeApp(Application):
    """Write N synthetic OCT B-scans per class, marked synthetic (names, manifest, DICOM DERIVED\\SECONDARY)."""

    name = "medicraft_oct_synthesize"
    description = "Synthesise OCT B-scans per class with a class-conditioned diffusion bundle (oct_ddpm)."
    version = "0.1.0"

    def compose(self) -> None:
        """Wire request -> synthesis -> report, run once."""
        app_context: AppContext = Application.init_app_context(self.argv)
        logging.info("synthesize: %s", app_context)
        input_path = Path(app_context.input_path) if app_context.input_path else None
        request = SynthesisRequestOperator(
            self, CountCondition(self, 1), input_path=input_path, name="synthesis_request"
        )
        synthesis = DiffusionSynthesisOperator(
            self, bundle_path=app_context.model_path, output_folder=app_context.output_path, name="diffusion_synthesis"
        )
        report = SynthesisReportOperator(self, name="synthesis_report")
        self.add_flow(request, synthesis, {("request", "request")})
        self.add_flow(synthesis, report, {("result", "result")})


def main(argv: Sequence[str] | None = None) -> None:
    """Run the application (``argv`` like ``sys.argv``: program name first)."""
    app = OCTSynthesizeApp() if argv is None else OCTSynthesizeApp(list(argv))
    app.run()


if __name__ == "__main__":
    main(sys.argv)
