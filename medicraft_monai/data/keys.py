"""Names shared by datalists, metadata and transforms.

Datalists are decathlon-style JSON files::

    {
      "name": "...", "labels": {"0": "healthy", "1": "benign", "2": "melanoma"},
      "training": [item, ...], "validation": [...], "test": [...]
    }

where each item is a dictionary with the keys of :class:`OCTKeys`.
"""

from __future__ import annotations


class OCTKeys:
    """Keys of one datalist item (one B-scan)."""

    IMAGE = "image"  #: path of the file, relative to the datalist's folder or absolute
    LABEL = "label"  #: integer class index into the datalist's ``labels``
    CLASS_NAME = "class_name"  #: the class name, kept beside the index for readability
    PATIENT_ID = "patient_id"  #: pseudonymous patient identifier; splits never share one
    EXAM_ID = "exam_id"  #: one exam (visit + eye) of a patient
    PLANE_ANGLE = "plane_angle"  #: radial plane angle in degrees in [0, 360), or None if unknown
    LATERALITY = "laterality"  #: "R" (right eye, OD), "L" (left eye, OS) or "" if unknown
    FRAME = "frame"  #: frame index inside a multi-frame file (DICOM), 0 for single images
    SYNTHETIC = "synthetic"  #: True for generated images


class OCTMetaKeys:
    """Keys that readers put into an image's metadata (``MetaTensor.meta``)."""

    LATERALITY = "laterality"
    PLANE_ANGLE = "plane_angle"  #: per B-scan (after frame selection) or a list for a stack
    PIXEL_SPACING = "pixel_spacing"  #: (row spacing, column spacing) in millimetres
    PATIENT_ID = "patient_id"
    SYNTHETIC = "synthetic"
    BIT_DEPTH = "bit_depth"  #: 8 or 16 for integer images as stored, 0 for floating-point (linear or scaled) data


LATERALITY_ALIASES = {
    "R": "R",
    "OD": "R",
    "RIGHT": "R",
    "L": "L",
    "OS": "L",
    "LEFT": "L",
    "": "",
    "U": "",
    "UNKNOWN": "",
}


def normalise_laterality(value: object) -> str:
    """Return ``"R"``, ``"L"`` or ``""`` for the many ways laterality is written (OD/OS, right/left, R/L).

    Raises:
        ValueError: for a value that is not a laterality.
    """
    if value is None:
        return ""
    key = str(value).strip().upper()
    if key not in LATERALITY_ALIASES:
        raise ValueError(f"unknown laterality {value!r}; use R/L (or OD/OS)")
    return LATERALITY_ALIASES[key]
