"""OCT data: readers, datalists, patient-grouped splits and the procedural OCT phantom."""

from __future__ import annotations

from .datalist import (
    build_datalist,
    check_splits,
    class_weights,
    count_table,
    load_datalist,
    split_by_patient,
    write_datalist,
)
from .dicom import (
    OPT_SOP_CLASS_UID,
    OphthalmicTomographyReader,
    OphthalmicTomographyWriter,
    dicom_folder_items,
    read_oct_dicom,
    write_oct_dicom,
)
from .errors import (
    CorruptImageError,
    DataProblems,
    DimensionalityError,
    EmptyDatasetError,
    OCTDataError,
    SplitLeakError,
    UnknownLabelError,
    UnsupportedFormatError,
)
from .io import (
    SUPPORTED_SUFFIXES,
    LoadOCTImage,
    LoadOCTImageD,
    LoadOCTImaged,
    LoadOCTImageDict,
    image_format,
    probe_image,
    read_bscan,
    read_frames,
    write_bscan_png,
    write_bscan_tiff,
    write_nifti_bscan,
)
from .keys import OCTKeys, OCTMetaKeys, normalise_laterality
from .vendor import convert_vendor_to_dicom, read_vendor_volume

__all__ = [
    "OPT_SOP_CLASS_UID",
    "SUPPORTED_SUFFIXES",
    "CorruptImageError",
    "DataProblems",
    "DimensionalityError",
    "EmptyDatasetError",
    "LoadOCTImage",
    "LoadOCTImageD",
    "LoadOCTImageDict",
    "LoadOCTImaged",
    "OCTDataError",
    "OCTKeys",
    "OCTMetaKeys",
    "OphthalmicTomographyReader",
    "OphthalmicTomographyWriter",
    "SplitLeakError",
    "UnknownLabelError",
    "UnsupportedFormatError",
    "build_datalist",
    "check_splits",
    "class_weights",
    "convert_vendor_to_dicom",
    "count_table",
    "dicom_folder_items",
    "image_format",
    "load_datalist",
    "normalise_laterality",
    "probe_image",
    "read_bscan",
    "read_frames",
    "read_oct_dicom",
    "read_vendor_volume",
    "split_by_patient",
    "write_bscan_png",
    "write_bscan_tiff",
    "write_datalist",
    "write_nifti_bscan",
    "write_oct_dicom",
]
