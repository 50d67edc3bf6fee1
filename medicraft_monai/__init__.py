"""medicraft_monai: multiply small OCT data sets with class-conditioned diffusion models (a MONAI extension).

Sub-packages:

- :mod:`medicraft_monai.data`: readers (PNG/JPEG/TIFF, NIfTI, DICOM Ophthalmic Tomography, vendor files),
  datalists, patient-grouped splits and the procedural OCT phantom.
- :mod:`medicraft_monai.transforms`: OCT transforms, array and dictionary twins in MONAI style.
- :mod:`medicraft_monai.inferers`: class-conditioned diffusion (training pass, guided sampling, pixel and latent).
- :mod:`medicraft_monai.schedulers`: samplers beside MONAI's (DPM-Solver++ 2M) and the sampler registry.
- :mod:`medicraft_monai.engines`: prepare-batch and handlers for ignite/MONAI engines.
- :mod:`medicraft_monai.synthesis`: generator bundles behind one interface, and dataset multiplication.
- :mod:`medicraft_monai.demo`, :mod:`medicraft_monai.cli`: the main job and the ``medicraft`` command.
- :mod:`medicraft_monai.bundles`: finds the MONAI bundles shipped with the package.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:  # the installed distribution's version, which pyproject.toml sets (the one place it is written)
    __version__ = version("medicraft-monai")
except PackageNotFoundError:  # a source tree that was never installed: no version to report
    __version__ = "0+unknown"

__all__ = ["__version__"]
