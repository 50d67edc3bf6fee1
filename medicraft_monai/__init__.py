"""medicraft_monai: multiply small OCT data sets with class-conditioned diffusion models (a MONAI extension).

Rooms, lowest first; a room imports only rooms above it in this list (``tests/test_architecture.py`` checks it):

- :mod:`medicraft_monai.utils`: the shared helpers (atomic writes, sha256 of a file, JSON-able values, switches);
  ``visualize`` beside it draws image grids.
- :mod:`medicraft_monai.bundles`: finds the MONAI bundles shipped with the package.
- :mod:`medicraft_monai.data`: readers (PNG/JPEG/TIFF, NIfTI, DICOM Ophthalmic Tomography, vendor files),
  datalists, patient-grouped splits and the procedural OCT phantom (a package).
- :mod:`medicraft_monai.transforms`: OCT transforms, array and dictionary twins in MONAI style.
- :mod:`medicraft_monai.networks`: network helpers and the one checkpoint loader.
- :mod:`medicraft_monai.schedulers`: samplers beside MONAI's (DPM-Solver++ 2M) and the sampler registry.
- :mod:`medicraft_monai.inferers`: class-conditioned diffusion (training pass, guided sampling, pixel and latent).
- :mod:`medicraft_monai.metrics`: pure computations (fidelity, diversity, privacy, anatomy, classification).
- :mod:`medicraft_monai.engines`: prepare-batch and handlers for ignite/MONAI engines.
- :mod:`medicraft_monai.synthesis`: generator bundles behind one interface, and the synthesis job (multiply);
  :mod:`medicraft_monai.ssl` beside it: self-supervised context restoration.
- :mod:`medicraft_monai.evaluation`: studies that train and compare (utility, label efficiency) and the report.
- :mod:`medicraft_monai.label`, :mod:`medicraft_monai.deploy`: the MONAI Label app and the MONAI Deploy apps.
- :mod:`medicraft_monai.demo`, :mod:`medicraft_monai.cli`: the main job and the ``medicraft`` command.

The one-call API is reachable from here without importing a room when the package is imported: ``generate`` is
looked up on first use (:data:`LAZY`, PEP 562)::

    import medicraft_monai

    images = medicraft_monai.generate("oct_ldm", class_name="DME", num_samples=4, seed=0)
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:  # the installed distribution's version, which pyproject.toml sets (the one place it is written)
    __version__ = version("medicraft-monai")
except PackageNotFoundError:  # a source tree that was never installed: no version to report
    __version__ = "0+unknown"

LAZY: dict[str, str] = {"generate": "medicraft_monai.synthesis.generation"}
"""Names of the package that live in a room, and the module each is taken from on first use."""

__all__ = ["LAZY", "__version__", "generate"]


def __getattr__(name: str) -> Any:
    """``medicraft_monai.generate``, imported when first used (see :data:`LAZY`)."""
    if name in LAZY:
        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'medicraft_monai' has no attribute {name!r}")
