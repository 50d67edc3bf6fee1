"""medicraft_monai: multiply small OCT data sets with class-conditioned diffusion models (a MONAI extension).

Sub-packages:

- :mod:`medicraft_monai.data`: readers (PNG/JPEG/TIFF, NIfTI, DICOM Ophthalmic Tomography, vendor files),
  datalists, patient-grouped splits and the procedural OCT phantom.
- :mod:`medicraft_monai.transforms`: OCT transforms, array and dictionary twins in MONAI style.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
