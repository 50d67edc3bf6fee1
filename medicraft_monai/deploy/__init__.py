"""MONAI Deploy App SDK applications: ``classify`` (OCT B-scan classification), ``synthesize`` (synthetic B-scans)
and ``qa`` (the per-image QA gate of a synthetic set).

Each application is a standard App SDK ``Application`` whose ``compose`` wires operators (``setup``/``compute``)
into a graph; it reads its input, output and model paths from ``-i/-o/-m`` or ``HOLOSCAN_INPUT_PATH``,
``HOLOSCAN_OUTPUT_PATH`` and ``HOLOSCAN_MODEL_PATH``, and ships an ``app.yaml`` for MAP packaging::

    python -m medicraft_monai.deploy.classify -i scans/ -o out/ -m oct_classifier.ts
    python -m medicraft_monai.deploy.synthesize -i request/ -o out/ -m bundles/oct_ddpm
    python -m medicraft_monai.deploy.qa -i synthetic/ -o qa/ -m qa_models/

The App SDK (``monai-deploy-app-sdk`` with ``holoscan-cu13``) lives in its own virtual environment,
``.venv-deploy`` (``scripts/setup_deploy_env.sh``). The modules :mod:`.inputs`, :mod:`.classifier`,
:mod:`.synthesis` and :mod:`.qa_gate` hold the work itself and do not import the App SDK; :mod:`.operators` and the
apps do.
See ``docs/deploy.md``.
"""

from __future__ import annotations

import os

__all__ = ["classifier", "inputs", "qa_gate", "resolve_device", "synthesis"]

DEVICE_ENV = "MEDICRAFT_DEVICE"


def resolve_device(device: object = None) -> str:
    """Where an app runs its networks: ``device`` when given, else ``$MEDICRAFT_DEVICE``, else CUDA when available,
    else CPU."""
    if device:
        return str(device)
    if os.environ.get(DEVICE_ENV):
        return os.environ[DEVICE_ENV]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
