"""The trained weights that ship in ``bundles/oct_ldm/models`` and ``bundles/oct_ddpm/models`` (no training here).

``model.pt`` is the EMA UNet in float16, loaded into the float32 network; ``diffusion.json`` (the training settings)
comes with it, and for the latent model ``autoencoder.pt`` (float32) and ``latent.json`` (scale factor and the
autoencoder's checksum). Each bundle samples out of the box: no overrides, the classes and sizes the weights were
trained with.

What the weights learnt is checked with the project's other shipped models: each synthetic B-scan must be recognised
as the class it was asked for. For oct_ldm (64 x 128) the judge is the OCT2017 classifier (held-out balanced
accuracy 0.943 at 128 x 256). At oct_ddpm's 32 x 64 that classifier is out of its depth (real held-out B-scans
shrunk to 32 x 64 and enlarged again: accuracy 0.35), so the judge there is the nearest class mean in the fixed OCT
feature space (oct_synthesis_eval), the means taken from real training B-scans at the same 32 x 64 (real held-out
B-scans: 0.73; the 488 synthetic images of the model card: 0.875). Untrained or mis-loaded weights (chance: 0.25),
a wrong scale factor or a wrong class embedding order fall far below the pass mark.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _subprocess import monai_bundle_cmd, run_checked
from PIL import Image

from medicraft_monai.data import build_datalist
from medicraft_monai.metrics.features import extract_features, load_feature_extractor
from medicraft_monai.metrics.images import load_images
from medicraft_monai.networks.bundle import load_bundle_network
from medicraft_monai.networks.checkpoint import load_state_dict
from medicraft_monai.synthesis import DiffusionGenerator
from medicraft_monai.transforms import OCTResize
from medicraft_monai.utils import file_sha256

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]
#: each shipped generator: the image size its weights make, and the latent shape (None: pixel space)
SHIPPED = {
    "oct_ldm": {"image_size": [64, 128], "latent_shape": [4, 16, 32], "judge": "classifier"},
    "oct_ddpm": {"image_size": [32, 64], "latent_shape": None, "judge": "class_means"},
}
#: real training B-scans per class for the class means (the first of each class in the patient-level split)
MEANS_PER_CLASS = 40
PER_CLASS = 4
#: on 4 images per class (seeds 0-3) sampled with guidance 3 the judge names the intended class of most images (TRTS
#: on 488 images: see each model card). 12 of 16 leaves room for one miss per class; chance is 4 of 16.
MIN_ACCURACY = 0.75
#: at the bundle's default guidance (oct_ddpm 0.7.0: 1, no guidance, chosen for utility on the validation split)
#: classes are less pronounced; the judge must still agree on half (8 of 16, twice chance)
MIN_ACCURACY_DEFAULT = 0.5
GUIDED = 3.0

pytestmark = pytest.mark.parametrize("name", sorted(SHIPPED))


def _bundle(name: str) -> Path:
    return REPO_ROOT / "bundles" / name


def _meta(name: str) -> dict:
    return json.loads((_bundle(name) / "configs" / "metadata.json").read_text())


def test_the_weights_are_float16_within_the_zoo_limit_and_match_their_records(name: str) -> None:
    models, spec = _bundle(name) / "models", SHIPPED[name]
    weights = models / "model.pt"
    assert weights.stat().st_size <= 25 * 1024**2
    state = load_state_dict(weights)
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 and torch.isfinite(v).all() for v in floats)
    recorded = json.loads((models / "diffusion.json").read_text())
    assert recorded["class_names"] == CLASSES and recorded["image_size"] == spec["image_size"]
    meta = _meta(name)
    assert meta["medicraft_diffusion"]["prediction_type"] == recorded["prediction_type"]
    assert meta["eval_metrics"]["TSTR_balanced_accuracy"] > 0.25  # the held-out figures are filled in
    model_space = spec["image_size"]
    if spec["latent_shape"]:
        latent = json.loads((models / "latent.json").read_text())
        assert latent["autoencoder_sha256"] == file_sha256(models / "autoencoder.pt")
        assert latent["latent_shape"] == spec["latent_shape"]
        model_space = latent["latent_shape"][1:]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == model_space
    labels = meta["network_data_format"]["inputs"]["class_labels"]["channel_def"]
    assert [labels[str(i)] for i in range(len(CLASSES))] == CLASSES


def test_the_generator_loads_without_overrides_into_float32(name: str) -> None:
    gen = DiffusionGenerator.from_bundle(_bundle(name), device="cpu")
    assert list(gen.class_names) == CLASSES
    params = dict(gen.network.state_dict())
    shipped = load_state_dict(_bundle(name) / "models" / "model.pt")
    assert all(params[k].dtype == torch.float32 for k, v in shipped.items() if v.is_floating_point())
    assert all(torch.equal(params[k], v.float()) for k, v in shipped.items() if v.is_floating_point())


def _classifier_predictions(images: np.ndarray) -> np.ndarray:
    classifier = load_bundle_network(REPO_ROOT / "bundles" / "oct_classifier", what="classifier bundle")
    assert list(classifier.class_names) == CLASSES
    resize = OCTResize(spatial_size=(128, 256), mode="crop")
    x = torch.stack([torch.as_tensor(resize(torch.from_numpy(im))) for im in images]).float()
    with torch.inference_mode():
        return classifier.network.eval()(x).argmax(1).numpy()


def _class_mean_predictions(images: np.ndarray, size: list[int], oct2017_dir: Path) -> np.ndarray:
    extractor = load_feature_extractor("oct")
    training = build_datalist(oct2017_dir, check_images=False)["training"]
    items = [it for c in range(len(CLASSES)) for it in [i for i in training if i["label"] == c][:MEANS_PER_CLASS]]
    real, _ = load_images(items, size, crop_height=256, progress=False, resize_mode="crop")

    def features(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(extract_features(extractor, x, progress=False), dim=1)

    labels = torch.tensor([int(it["label"]) for it in items])
    real_features = features(real)
    means = torch.stack([real_features[labels == c].mean(0) for c in range(len(CLASSES))])
    return (features(torch.from_numpy(images).float()) @ means.T).argmax(1).numpy()


def test_the_shipped_judges_recognise_the_requested_classes(name: str, oct2017_dir: Path) -> None:
    gen = DiffusionGenerator.from_bundle(_bundle(name), device="cpu")
    classes = [c for c in CLASSES for _ in range(PER_CLASS)]
    size = SHIPPED[name]["image_size"]
    truth = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    for guidance, least in ((None, MIN_ACCURACY_DEFAULT), (GUIDED, MIN_ACCURACY)):
        images = gen.generate(classes, seeds=list(range(PER_CLASS)) * len(CLASSES), guidance_scale=guidance)
        assert images.shape == (len(classes), 1, *size)
        assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
        if SHIPPED[name]["judge"] == "classifier":
            pred = _classifier_predictions(images)
        else:
            pred = _class_mean_predictions(images, size, oct2017_dir)
        accuracy = float((pred == truth).mean())
        assert accuracy >= least, f"guidance {guidance or 'default'}: the judge agrees on {accuracy:.2f} ({pred})"


def test_monai_bundle_run_samples_every_class_out_of_the_box(name: str, tmp_path: Path) -> None:
    bundle, out = _bundle(name), tmp_path / "synthetic"
    cmd = monai_bundle_cmd(
        [bundle / "configs" / "common.json", bundle / "configs" / "inference.json"],
        bundle,
        output_dir=str(out),
        num_images_per_class=1,
    )
    run_checked(cmd, True, 600)
    files = sorted(out.rglob("*.png"))
    assert len(files) == len(CLASSES)
    for c in CLASSES:
        (match,) = [f for f in files if c in f.name]
        assert np.asarray(Image.open(match)).shape == tuple(SHIPPED[name]["image_size"])
    assert not (bundle / "synthetic").exists()
