"""MONAI Deploy App SDK operators of the ``classify``, ``synthesize`` and ``qa`` applications.

Each operator declares its ports in ``setup`` and does its work in ``compute``; the objects passed between them are
plain Python objects (lists of :class:`~medicraft_monai.deploy.inputs.InputFrame`, dictionaries). The work itself
lives in :mod:`.inputs`, :mod:`.classifier`, :mod:`.synthesis` and :mod:`.qa_gate`, which do not need the App SDK.

``classify``:  OCTImageLoaderOperator --frames--> OCTClassifierOperator --predictions--> PredictionWriterOperator
``synthesize``: SynthesisRequestOperator --request--> DiffusionSynthesisOperator --result--> SynthesisReportOperator
``qa``:        OCTImageLoaderOperator --frames--> ImageQAOperator --qa--> QATableWriterOperator
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

from medicraft_monai.utils import write_csv_atomic, write_json_atomic

from . import resolve_device
from .classifier import TorchScriptClassifier, classify_frames, csv_rows, prediction_fields
from .inputs import read_input_frames
from .qa_gate import QASettings, assess_frames
from .synthesis import SynthesisRequest, load_generator, synthesize

__all__ = [
    "DiffusionSynthesisOperator",
    "ImageQAOperator",
    "OCTClassifierOperator",
    "OCTImageLoaderOperator",
    "PredictionWriterOperator",
    "QATableWriterOperator",
    "SynthesisReportOperator",
    "SynthesisRequestOperator",
]

logger = logging.getLogger(__name__)

PREDICTIONS_JSON = "predictions.json"
PREDICTIONS_CSV = "predictions.csv"


class OCTImageLoaderOperator(Operator):
    """Read every OCT file of the input (PNG/JPEG/TIFF/NIfTI, DICOM Ophthalmic Tomography: one record per frame).

    Output ``frames``: list of :class:`~medicraft_monai.deploy.inputs.InputFrame`; a file that cannot be read is a
    record with its error, not a failure of the batch.

    Args:
        fragment: the application.
        input_path: a file or a folder (searched recursively, hidden files skipped).
        exclude_suffixes: files whose name ends with one of these are not read (e.g. a synthesis job's manifest).
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        input_path: str | PathLike,
        exclude_suffixes: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        self.input_path = Path(input_path)
        self.exclude_suffixes = tuple(exclude_suffixes)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("frames")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        frames = read_input_frames(self.input_path, self.exclude_suffixes)
        bad = sum(1 for f in frames if not f.ok)
        logger.info("read %d B-scan(s) from %s; %d file(s) unreadable", len(frames) - bad, self.input_path, bad)
        op_output.emit(frames, "frames")


class OCTClassifierOperator(Operator):
    """Classify B-scans with a TorchScript classifier bundle export (its own preprocessing and class names).

    Input ``frames``; output ``predictions``: ``{"model": {...}, "rows": [...]}`` (see
    :func:`~medicraft_monai.deploy.classifier.classify_frames`).

    Args:
        fragment: the application.
        model_path: the TorchScript file, or a folder holding one (default: the app context's model path).
        batch_size: B-scans per forward pass.
        device: where to run (default: ``$MEDICRAFT_DEVICE``, else CUDA when available, else CPU).
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        model_path: str | PathLike,
        batch_size: int = 8,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.model_path = Path(model_path)
        self.batch_size = int(batch_size)
        self.device = device
        self._classifier: TorchScriptClassifier | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("frames")
        spec.output("predictions")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        frames = op_input.receive("frames")
        if self._classifier is None:
            self._classifier = TorchScriptClassifier.load(self.model_path, device=self.device)
        rows = classify_frames(self._classifier, frames, batch_size=self.batch_size)
        op_output.emit({"model": self._classifier.describe(), "rows": rows}, "predictions")


class PredictionWriterOperator(Operator):
    """Write ``predictions.json`` (summary, model, one entry per B-scan) and ``predictions.csv`` (one row per B-scan,
    a ``prob_<class>`` column per class, ``status``/``error`` for unreadable files).

    Args:
        fragment: the application.
        output_folder: where to write (created).
        input_path: recorded in the summary.
    """

    def __init__(
        self, fragment: Fragment, *args: Any, output_folder: str | PathLike, input_path: str = "", **kwargs: Any
    ) -> None:
        self.output_folder = Path(output_folder)
        self.input_path = str(input_path)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("predictions")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        result = op_input.receive("predictions")
        rows, model = result["rows"], result["model"]
        errors = [r for r in rows if r["status"] != "ok"]
        summary = {
            "app": "medicraft_monai.deploy.classify",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": self.input_path,
            "model": model,
            "num_files": len({r["file"] for r in rows}),
            "num_predictions": len(rows) - len(errors),
            "num_errors": len(errors),
            "predictions": rows,
        }
        self.output_folder.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(
            self.output_folder / PREDICTIONS_CSV,
            csv_rows(rows, model["class_names"]),
            prediction_fields(model["class_names"]),
        )
        write_json_atomic(self.output_folder / PREDICTIONS_JSON, summary)
        for row in errors:
            logger.warning("not classified: %s", row["error"])
        print(
            f"classify: {summary['num_predictions']} prediction(s) from {summary['num_files']} file(s), "
            f"{len(errors)} error(s); wrote {self.output_folder / PREDICTIONS_JSON} and {PREDICTIONS_CSV}",
            flush=True,
        )


class SynthesisRequestOperator(Operator):
    """Read the synthesis request: defaults, ``MEDICRAFT_SYNTH_*`` variables, and ``synthesis_request.json`` in the
    input (see :class:`~medicraft_monai.deploy.synthesis.SynthesisRequest`). Output ``request``.

    Args:
        fragment: the application.
        input_path: the input folder or request file (may be missing: then the environment and defaults decide).
    """

    def __init__(self, fragment: Fragment, *args: Any, input_path: str | PathLike | None = None, **kwargs: Any) -> None:
        self.input_path = None if input_path is None else Path(input_path)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("request")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        request = SynthesisRequest.from_sources(self.input_path)
        logger.info("synthesis request: %s", request)
        op_output.emit(request, "request")


class DiffusionSynthesisOperator(Operator):
    """Sample the requested images from a class-conditioned diffusion bundle and write them, marked synthetic.

    Input ``request``; output ``result`` (the summary of :func:`~medicraft_monai.deploy.synthesis.synthesize`).

    Args:
        fragment: the application.
        bundle_path: the generator bundle, or a folder holding exactly one.
        output_folder: where to write images and the manifest.
        device: where to sample (default: ``$MEDICRAFT_DEVICE``, else CUDA when available, else CPU).
        progress: show a progress bar.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        bundle_path: str | PathLike,
        output_folder: str | PathLike,
        device: str | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        self.bundle_path = Path(bundle_path)
        self.output_folder = Path(output_folder)
        self.device = device
        self.progress = progress
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("request")
        spec.output("result")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        request = op_input.receive("request")
        generator = load_generator(self.bundle_path, request, device=resolve_device(self.device))
        result = synthesize(generator, request, self.output_folder, progress=self.progress)
        op_output.emit(result, "result")


class SynthesisReportOperator(Operator):
    """Report what was synthesised (counts per class, where the manifest is). Input ``result``."""

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("result")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        result = op_input.receive("result")
        counts = ", ".join(f"{c}: {n}" for c, n in result["counts"].items())
        print(
            f"synthesize: {result['total']} synthetic image(s) ({counts}); {result['generated']} new, "
            f"{result['skipped']} already there; manifest {result['manifest']}",
            flush=True,
        )


class ImageQAOperator(Operator):
    """Assess every B-scan with :class:`~medicraft_monai.evaluation.per_image.ImageQA` (anatomy, classifier
    agreement, memorisation), the bundles loaded once.

    Input ``frames``; output ``qa``: ``{"rows": [...], "settings": {...}}`` (see
    :func:`~medicraft_monai.deploy.qa_gate.assess_frames`).

    Args:
        fragment: the application.
        settings: the checks and their bundles (:meth:`~medicraft_monai.deploy.qa_gate.QASettings.from_environ`).
        device: where to run (default: ``$MEDICRAFT_DEVICE``, else CUDA when available, else CPU).
        progress: show progress bars.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        settings: QASettings,
        device: str | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        self.settings = settings
        self.device = device
        self.progress = progress
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("frames")
        spec.output("qa")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        frames = op_input.receive("frames")
        qa = self.settings.build(device=self.device, progress=self.progress)
        rows = assess_frames(qa, frames, progress=self.progress)
        op_output.emit(
            {"rows": rows, "settings": {**self.settings.describe(), **qa.settings()}, "real": qa.real_reference()}, "qa"
        )


class QATableWriterOperator(Operator):
    """Write the QA table and the gate's verdict: ``qa.csv``, ``qa.json`` (settings, summary, rows) and
    ``qa_summary.json`` (see :func:`~medicraft_monai.evaluation.per_image.write_qa_table`). Input ``qa``.

    The summary is kept as :attr:`summary` for the application's exit status.

    Args:
        fragment: the application.
        output_folder: where to write (created).
        input_path: recorded in the settings.
        min_pass_fraction: the share of images that must pass (times the real images' pass fraction when known).
        max_memorised_fraction: the largest share of images flagged as memorised that still passes.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        output_folder: str | PathLike,
        input_path: str = "",
        min_pass_fraction: float = 0.8,
        max_memorised_fraction: float = 0.05,
        **kwargs: Any,
    ) -> None:
        self.output_folder = Path(output_folder)
        self.input_path = str(input_path)
        self.min_pass_fraction = float(min_pass_fraction)
        self.max_memorised_fraction = float(max_memorised_fraction)
        self.summary: dict[str, Any] | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("qa")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        from medicraft_monai.evaluation.per_image import write_qa_table

        result = op_input.receive("qa")
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        settings = {**result["settings"], "input": self.input_path, "created": created}
        written = write_qa_table(
            result["rows"],
            self.output_folder,
            settings,
            self.min_pass_fraction,
            result.get("real"),
            self.max_memorised_fraction,
        )
        self.summary = summary = written["summary"]
        for row in result["rows"]:
            if row.get("error"):
                logger.warning("not assessed: %s", row["error"])
        print(
            f"qa: {summary['n_passed']} of {summary['n']} image(s) passed, {summary['n_errors']} unreadable, "
            f"{summary['n_memorised']} memorised; verdict: {summary['verdict']}; wrote "
            f"{self.output_folder / 'qa_summary.json'}, qa.json and qa.csv",
            flush=True,
        )
