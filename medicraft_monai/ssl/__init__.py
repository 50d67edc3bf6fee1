"""Self-supervised context restoration for OCT (Chen et al., Medical Image Analysis 58:101539, 2019).

Pretrain an encoder-decoder to undo :class:`~medicraft_monai.transforms.ContextDisorder` on unlabelled B-scans
(real, phantom or synthetic), then reuse its encoder:

- :mod:`.networks`: :class:`ContextRestorationNet` (a MONAI BasicUNet), :class:`BasicUNetEncoder`,
  :class:`EncoderClassifier`, :class:`PooledEncoder`;
- :mod:`.finetune`: :func:`load_pretrained` (encoder weights into a classifier or a segmentation UNet, optional
  freezing), :func:`subsample_by_patient` (class-stratified label fractions by patient);
- :mod:`.data`: :func:`unlabelled_items` (mix datalists for pretraining), :func:`oct_preprocessing`;
- :mod:`.phantom_seg`: :func:`build_phantom_segmentation_datalist` (layer bands, lesion and fluid masks from the
  phantom's ground truth);
- :mod:`.handlers`: :class:`RestorationImageHandler` (before/after pictures in TensorBoard);
- :mod:`.restoration`: :func:`restoration_report` (SSIM/MS-SSIM, before/after picture), :func:`export_encoder`
  (TorchScript feature extractor for Frechet distances).

The bundle ``bundles/oct_context_restoration`` runs all of it from configs; the label-efficiency study that runs
those configs (pretrained versus from scratch with 10-100 % of the labels) is
:func:`medicraft_monai.evaluation.label_efficiency.run_label_efficiency`.
"""

from __future__ import annotations

from .data import load_items, oct_preprocessing, preprocess_items, unlabelled_items
from .finetune import (
    classification_output,
    encoder_module,
    load_pretrained,
    subsample_by_patient,
    trainable_parameters,
)
from .handlers import RestorationImageHandler
from .networks import (
    DEFAULT_FEATURES,
    ENCODER_PREFIXES,
    BasicUNetEncoder,
    ContextRestorationNet,
    EncoderClassifier,
    PooledEncoder,
    features_from_state_dict,
)
from .phantom_seg import (
    SEGMENTATION_BOUNDARIES,
    build_phantom_segmentation_datalist,
    phantom_label_map,
    segmentation_class_names,
)
from .restoration import (
    ENCODER_META_FILE,
    export_encoder,
    load_encoder_meta,
    ms_ssim_metric,
    ms_ssim_weights,
    restoration_report,
    ssim_metric,
)

__all__ = [
    "DEFAULT_FEATURES",
    "ENCODER_META_FILE",
    "ENCODER_PREFIXES",
    "SEGMENTATION_BOUNDARIES",
    "BasicUNetEncoder",
    "ContextRestorationNet",
    "EncoderClassifier",
    "PooledEncoder",
    "RestorationImageHandler",
    "build_phantom_segmentation_datalist",
    "classification_output",
    "encoder_module",
    "export_encoder",
    "features_from_state_dict",
    "load_encoder_meta",
    "load_items",
    "load_pretrained",
    "ms_ssim_metric",
    "ms_ssim_weights",
    "oct_preprocessing",
    "phantom_label_map",
    "preprocess_items",
    "restoration_report",
    "segmentation_class_names",
    "ssim_metric",
    "subsample_by_patient",
    "trainable_parameters",
    "unlabelled_items",
]
