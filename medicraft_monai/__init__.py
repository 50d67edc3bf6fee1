"""medicraft_monai: multiply small OCT data sets with class-conditioned diffusion models (a MONAI extension).

Sub-packages:

- :mod:`medicraft_monai.data`: readers (PNG/JPEG/TIFF, NIfTI, DICOM Ophthalmic Tomography, vendor files),
  datalists, patient-grouped splits and the procedural OCT phantom.
- :mod:`medicraft_monai.transforms`: OCT transforms, array and dictionary twins in MONAI style.
- :mod:`medicraft_monai.inferers`: class-conditioned diffusion (training pass, guided DDPM/DDIM sampling).
- :mod:`medicraft_monai.engines`: prepare-batch and handlers for ignite/MONAI engines.
- :mod:`medicraft_monai.synthesis`: generator bundles behind one interface, and dataset multiplication.
- :mod:`medicraft_monai.demo`, :mod:`medicraft_monai.cli`: the main job and the ``medicraft`` command.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
