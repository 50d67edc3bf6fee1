"""MONAI Deploy App SDK applications: ``classify`` (OCT B-scan classification) and ``synthesize`` (synthetic B-scans).

Each application is a standard App SDK ``Application`` whose ``compose`` wires operators (``setup``/``compute``)
into a graph; it reads its input, output and model paths from ``-i/-o/-m`` or ``HOLOSCAN_INPUT_PATH``,
``HOLOSCAN_OUTPUT_PATH`` and ``HOLOSCAN_MODEL_PATH``, and ships an ``app.yaml`` for MAP packaging::

    python -m medicraft_monai.deploy.classify -i scans/ -o out/ -m oct_classifier.ts
    python -m medicraft_monai.deploy.synthesize -i request/ -o out/ -m bundles/oct_ddpm

The App SDK (``monai-deploy-app-sdk`` with ``holoscan-cu13``) lives in its own virtual environment,
``.venv-deploy`` (``scripts/setup_deploy_env.sh``). The modules :mod:`.inputs`, :mod:`.classifier` and
:mod:`.synthesis` hold the work itself and do not import the App SDK; :mod:`.operators` and the two apps do.
See ``docs/deploy.md``.
"""

from __future__ import annotations

__all__ = ["classifier", "inputs", "synthesis"]
