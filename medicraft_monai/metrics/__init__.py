"""Evaluation of synthetic OCT data: utility, fidelity, diversity, privacy (memorisation) and anatomy.

Each module is usable on its own (tensors in, JSON-able dicts out); :func:`medicraft_monai.evaluation.evaluate_synthesis`
runs them all on a real and a synthetic datalist and writes the report.

- :mod:`.images`: loading real and synthetic B-scans into one (N, 1, H, W) tensor in [0, 1];
- :mod:`.features`: the pluggable OCT feature extractor (an OCT-trained network, no download) and pixel features;
- :mod:`.fidelity`: Frechet distance, KID, precision/recall, density/coverage, nearest-real SSIM;
- :mod:`.diversity`: mean pairwise MS-SSIM within each class;
- :mod:`.privacy`: the memorisation audit;
- :mod:`.anatomy`: anatomical plausibility checks per B-scan and their validation on phantoms;
- :mod:`.classification`: classification metrics and the ``oct_classifier`` bundle's helpers.

The studies that train classifiers (the TRTR/TSTR/TRTS utility study) are in :mod:`medicraft_monai.evaluation`.
"""

from __future__ import annotations

from .anatomy import AnatomyChecker, AnatomyResult, check_images, false_alarm_rate, summarise, validate_on_phantom
from .classification import classification_metrics, save_confusion_matrix
from .diversity import diversity_by_class, mean_pairwise_ms_ssim
from .features import FeatureExtractor, extract_features, load_feature_extractor, pixel_features
from .fidelity import fidelity_report, frechet_distance, kernel_inception_distance, nearest_real_ssim, prdc
from .images import evaluation_transform, load_images
from .privacy import memorisation_audit, save_closest_pairs

__all__ = [
    "AnatomyChecker",
    "AnatomyResult",
    "FeatureExtractor",
    "check_images",
    "classification_metrics",
    "diversity_by_class",
    "evaluation_transform",
    "extract_features",
    "false_alarm_rate",
    "fidelity_report",
    "frechet_distance",
    "kernel_inception_distance",
    "load_feature_extractor",
    "load_images",
    "mean_pairwise_ms_ssim",
    "memorisation_audit",
    "nearest_real_ssim",
    "pixel_features",
    "prdc",
    "save_closest_pairs",
    "save_confusion_matrix",
    "summarise",
    "validate_on_phantom",
]
