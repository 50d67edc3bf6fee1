"""Run a bundle's configs in this process, as ``python -m monai.bundle run`` would: the studies of
:mod:`medicraft_monai.evaluation` train and test bundles through here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

__all__ = ["run_bundle_workflow"]


def run_bundle_workflow(
    config_files: Sequence[str | PathLike],
    meta_file: str | PathLike,
    overrides: Mapping[str, Any],
    keep: Sequence[str] = (),
) -> dict[str, Any]:
    """Run a MONAI ``ConfigWorkflow`` of ``config_files`` (merged in order) with ``overrides`` (``--key value``).

    Args:
        config_files: the bundle's config files in merge order (see :func:`medicraft_monai.bundles.config_files`).
        meta_file: the bundle's ``metadata.json``.
        overrides: config ids and their values (nested ids with ``#``).
        keep: config ids whose parsed objects (a trained network, the trainer...) to return after the run.

    Returns:
        ``{id: object}`` for ``keep``.
    """
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(f) for f in config_files],
        meta_file=str(meta_file),
        logging_file=False,
        workflow_type=None,
        **dict(overrides),
    )
    workflow.initialize()
    try:
        workflow.run()
        return {k: workflow.parser.get_parsed_content(k, lazy=True) for k in keep}
    finally:
        workflow.finalize()
