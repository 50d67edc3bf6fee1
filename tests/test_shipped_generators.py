"""The trained weights that ship in ``bundles/oct_ldm/models`` (no training here).

``model.pt`` is the EMA latent UNet in float16, loaded into the float32 network; ``autoencoder.pt`` (float32),
``latent.json`` (scale factor and the autoencoder's checksum) and ``diffusion.json`` (the training settings) come
with it. The bundle samples out of the box: no overrides, the classes and sizes the weights were trained with.

What the weights learnt is checked with the other shipped model, the OCT2017 classifier (held-out balanced accuracy
0.943 on real B-scans): it must recognise the class each synthetic B-scan was asked for. Untrained or mis-loaded
weights (chance: 0.25), a wrong scale factor or a wrong class embedding order fall far below the pass mark.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from _subprocess import monai_bundle_cmd, run_checked
from PIL import Image

from medicraft_monai.networks.bundle import load_bundle_network
from medicraft_monai.networks.checkpoint import load_state_dict
from medicraft_monai.synthesis import DiffusionGenerator
from medicraft_monai.transforms import OCTResize
from medicraft_monai.utils import file_sha256

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "oct_ldm"
MODELS = BUNDLE / "models"
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]
PER_CLASS = 4
#: on the model card's sample (4 images per class, seeds 0-3, the bundle's sampling defaults) the shipped classifier
#: names the intended class of most images (TRTS on 488 images: see the model card). 12 of 16 leaves room for one
#: miss per class; chance is 4 of 16.
MIN_ACCURACY = 0.75


def _meta() -> dict:
    return json.loads((BUNDLE / "configs" / "metadata.json").read_text())


def test_the_weights_are_float16_within_the_zoo_limit_and_match_their_records() -> None:
    weights = MODELS / "model.pt"
    assert weights.stat().st_size <= 25 * 1024**2
    state = load_state_dict(weights)
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 and torch.isfinite(v).all() for v in floats)
    latent = json.loads((MODELS / "latent.json").read_text())
    assert latent["autoencoder_sha256"] == file_sha256(MODELS / "autoencoder.pt")
    assert latent["latent_shape"] == [4, 16, 32]
    recorded = json.loads((MODELS / "diffusion.json").read_text())
    assert recorded["class_names"] == CLASSES and recorded["image_size"] == [64, 128]
    meta = _meta()
    assert meta["medicraft_diffusion"]["prediction_type"] == recorded["prediction_type"]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == latent["latent_shape"][1:]


def test_the_generator_loads_without_overrides_into_float32() -> None:
    gen = DiffusionGenerator.from_bundle(BUNDLE, device="cpu")
    assert list(gen.class_names) == CLASSES
    params = dict(gen.network.state_dict())
    shipped = load_state_dict(MODELS / "model.pt")
    assert all(params[k].dtype == torch.float32 for k, v in shipped.items() if v.is_floating_point())
    assert all(torch.equal(params[k], v.float()) for k, v in shipped.items() if v.is_floating_point())


def test_the_shipped_classifier_recognises_the_requested_classes() -> None:
    gen = DiffusionGenerator.from_bundle(BUNDLE, device="cpu")
    classes = [c for c in CLASSES for _ in range(PER_CLASS)]
    images = gen.generate(classes, seeds=list(range(PER_CLASS)) * len(CLASSES))
    assert images.shape == (len(classes), 1, 64, 128)
    assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
    classifier = load_bundle_network(REPO_ROOT / "bundles" / "oct_classifier", what="classifier bundle")
    assert list(classifier.class_names) == CLASSES
    resize = OCTResize(spatial_size=(128, 256), mode="crop")
    x = torch.stack([torch.as_tensor(resize(torch.from_numpy(im))) for im in images]).float()
    with torch.inference_mode():
        pred = classifier.network.eval()(x).argmax(1).numpy()
    truth = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    accuracy = float((pred == truth).mean())
    assert accuracy >= MIN_ACCURACY, f"classifier agrees with the requested class on {accuracy:.2f} ({pred})"


def test_monai_bundle_run_samples_every_class_out_of_the_box(tmp_path: Path) -> None:
    out = tmp_path / "synthetic"
    cmd = monai_bundle_cmd(
        [BUNDLE / "configs" / "common.json", BUNDLE / "configs" / "inference.json"],
        BUNDLE,
        output_dir=str(out),
        num_images_per_class=1,
    )
    run_checked(cmd, True, 600)
    files = sorted(out.rglob("*.png"))
    assert len(files) == len(CLASSES)
    for c in CLASSES:
        (match,) = [f for f in files if c in f.name]
        assert np.asarray(Image.open(match)).shape == (64, 128)
    assert not (BUNDLE / "synthetic").exists()
