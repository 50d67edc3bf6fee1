"""The ``classify`` application: read OCT B-scans, run a TorchScript classifier bundle, write predictions.

Graph: ``OCTImageLoaderOperator`` (input folder or file) -> ``OCTClassifierOperator`` (model) ->
``PredictionWriterOperator`` (``predictions.json`` and ``predictions.csv`` in the output folder).

Paths come from ``-i/-o/-m`` or, when not given, ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH`` and
``HOLOSCAN_MODEL_PATH`` (defaults ``input``, ``output``, ``models``). ``MEDICRAFT_CLASSIFY_BATCH_SIZE`` sets the
batch size (default 8), ``MEDICRAFT_DEVICE`` the device, ``MEDICRAFT_CLASS_NAMES`` overrides the class names.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application

from medicraft_monai.deploy.operators import OCTClassifierOperator, OCTImageLoaderOperator, PredictionWriterOperator

__all__ = ["OCTClassifyApp", "main"]


class OCTClassifyApp(Application):
    """Classify retinal OCT B-scans (PNG/JPEG/TIFF/NIfTI or DICOM Ophthalmic Tomography, one prediction per frame).

    Unreadable input files are reported in the outputs (``status`` "error" and the reason), never a failed batch.
    """

    name = "medicraft_oct_classify"
    description = "Classify retinal OCT B-scans with a MONAI classifier bundle (TorchScript export)."
    version = "0.1.0"

    def compose(self) -> None:
        """Wire loader -> classifier -> writer, run once."""
        app_context: AppContext = Application.init_app_context(self.argv)
        logging.info("classify: %s", app_context)
        batch_size = int(os.environ.get("MEDICRAFT_CLASSIFY_BATCH_SIZE", "8"))
        loader = OCTImageLoaderOperator(
            self, CountCondition(self, 1), input_path=app_context.input_path, name="oct_loader"
        )
        classifier = OCTClassifierOperator(
            self, model_path=app_context.model_path, batch_size=batch_size, name="oct_classifier"
        )
        writer = PredictionWriterOperator(
            self,
            output_folder=app_context.output_path,
            input_path=str(app_context.input_path),
            name="prediction_writer",
        )
        self.add_flow(loader, classifier, {("frames", "frames")})
        self.add_flow(classifier, writer, {("predictions", "predictions")})


def main(argv: Sequence[str] | None = None) -> None:
    """Run the application (``argv`` like ``sys.argv``: program name first)."""
    app = OCTClassifyApp() if argv is None else OCTClassifyApp(list(argv))
    app.run()


if __name__ == "__main__":
    main(sys.argv)
