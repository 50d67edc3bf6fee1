"""The fixed OCT feature extractor shipped in ``bundles/oct_synthesis_eval/models/model.pt`` (no training here).

It is the trunk of the trained ``oct_classifier`` (its weights without the last linear layer), stored in float16 and
the default of ``medicraft evaluate``. Real images are those of the held-out patients of the OCT2017 sample (the
``validation`` and ``test`` splits of ``medicraft datalist``'s defaults, as in the classifier's model card): the
extractor never saw them. The end-to-end default (report and metrics naming the extractor with its checksum) is
checked in test_evaluation.py (``test_medicraft_evaluate_command``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from medicraft_monai.data import build_datalist
from medicraft_monai.evaluation import EvaluationSettings
from medicraft_monai.metrics.features import (
    DEFAULT_BUNDLE,
    FeatureExtractor,
    extract_features,
    load_feature_extractor,
)
from medicraft_monai.metrics.images import load_images
from medicraft_monai.networks import DenseNetFeatures, bundle_parser, load_bundle_network
from medicraft_monai.networks.checkpoint import load_state_dict
from medicraft_monai.transforms import OCTResize
from medicraft_monai.utils import file_sha256

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "oct_synthesis_eval"
WEIGHTS = BUNDLE / "models" / "model.pt"
CLASSIFIER = REPO / "bundles" / "oct_classifier"
SIZE = (128, 256)
PER_CLASS = 4
#: class means of 4 validation B-scans per class classify 4 test B-scans per class (other patients) with nearest-mean:
#: 14 of 16 right here (0.875); with the means of all 488 training B-scans the 99 test B-scans give 0.939, the
#: classifier's own accuracy (metadata eval_metrics). Chance is 0.25; 0.7 leaves room for two more near ties to flip
#: on another CPU, and a broken trunk, weights or preprocessing falls far below it.
MIN_NEAREST_MEAN_ACCURACY = 0.7


def _meta() -> dict:
    return json.loads((BUNDLE / "configs" / "metadata.json").read_text())


def _one_per_patient(items: list[dict], n: int) -> list[dict]:
    """The first ``n`` items of each class (0..3), one per patient."""
    picked = []
    for c in range(4):
        seen: set[str] = set()
        for it in items:
            if int(it["label"]) == c and it["patient_id"] not in seen and len(seen) < n:
                seen.add(it["patient_id"])
                picked.append(it)
    return picked


@pytest.fixture(scope="module")
def held_out(oct2017_dir: Path) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """4 validation and 4 test B-scans per class (one per patient), as the classifier saw its inputs: scaled to
    [0, 1], 256 rows around the retina, centre-cropped to 1:2 and resized to 128 x 256."""
    datalist = build_datalist(oct2017_dir, check_images=False)
    out = {}
    for split in ("validation", "test"):
        items = _one_per_patient(datalist[split], PER_CLASS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RetinaCrop warns on tall retinas
            x, kept = load_images(items, SIZE, crop_height=256, resize_mode="crop", progress=False)
        out[split] = (x, np.array([int(it["label"]) for it in kept]))
        assert np.bincount(out[split][1], minlength=4).tolist() == [PER_CLASS] * 4
    return out


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return load_feature_extractor("oct")


def test_the_shipped_file_is_the_float16_trunk_of_the_classifier() -> None:
    assert WEIGHTS.stat().st_size <= 25 * 1024**2
    state = load_state_dict(WEIGHTS)
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    assert floats and all(v.dtype == torch.float16 for v in floats.values())
    classifier = load_state_dict(CLASSIFIER / "models" / "model.pt")
    assert set(classifier) - set(state) == {"class_layers.out.weight", "class_layers.out.bias"}
    assert set(state) <= set(classifier) and all(torch.equal(v, classifier[k]) for k, v in state.items())
    # it loads strictly into the bundle's float32 network_def
    loaded = load_bundle_network(BUNDLE)
    assert isinstance(loaded.network, DenseNetFeatures) and loaded.network.out_features == 1024
    params = loaded.network.state_dict()
    assert all(params[k].dtype == torch.float32 and torch.equal(params[k], v.float()) for k, v in floats.items())


def test_its_checksum_is_the_one_the_metadata_and_the_model_card_state() -> None:
    digest = file_sha256(WEIGHTS)
    meta = _meta()
    stated = meta["medicraft_feature_extractor"]
    assert stated["sha256"] == digest and stated["file"] == "models/model.pt"
    assert digest in meta["changelog"][meta["version"]]
    assert digest in (BUNDLE / "docs" / "README.md").read_text()
    assert file_sha256(CLASSIFIER / "models" / "model.pt") in stated["source"]
    # what the metadata says of the input is what the config and the loaded extractor do
    parser = bundle_parser(BUNDLE)
    fe = load_feature_extractor(None)
    assert fe.describe() == {
        "extractor": fe.name,
        "file": str(WEIGHTS.resolve()),
        "sha256": digest,
        "input_size": stated["input_size"],
        "resize_mode": stated["resize_mode"],
        "input_range": stated["input_range"],
    }
    assert list(parser.get_parsed_content("extractor_image_size")) == stated["input_size"]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == stated["input_size"]
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == stated["dimension"]
    assert Path(DEFAULT_BUNDLE).resolve() == BUNDLE.resolve()


def test_the_features_are_what_the_classifier_head_sees(held_out, extractor: FeatureExtractor) -> None:
    x, _ = held_out["test"]
    classifier = load_bundle_network(CLASSIFIER, what="classifier bundle").network
    with torch.inference_mode():
        logits = classifier(x)
        feats = extract_features(extractor, x, progress=False)
        # the same modules on the same float32 input: equal to float32 rounding
        torch.testing.assert_close(classifier.class_layers.out(feats), logits)


def test_real_features_are_deterministic_and_separate_the_classes(held_out, extractor: FeatureExtractor) -> None:
    (xv, yv), (xt, yt) = held_out["validation"], held_out["test"]
    ft = extract_features(extractor, xt, progress=False)
    assert ft.shape == (len(xt), 1024) and ft.dtype == torch.float32 and torch.isfinite(ft).all()
    assert torch.equal(extract_features(extractor, xt, progress=False), ft)  # the same call, the same bits
    # another batch size changes the order of float32 sums only (features are O(1): last-bit differences)
    torch.testing.assert_close(extract_features(extractor, xt, batch_size=3, progress=False), ft)
    fv = extract_features(extractor, xv, progress=False)
    means = torch.stack([fv[torch.as_tensor(yv == c)].mean(0) for c in range(4)])
    predicted = torch.cdist(ft, means).argmin(1).numpy()
    accuracy = float((predicted == yt).mean())
    assert accuracy >= MIN_NEAREST_MEAN_ACCURACY, (accuracy, predicted.tolist(), yt.tolist())


def test_other_sizes_reach_the_extractor_the_same_way_every_time(extractor: FeatureExtractor) -> None:
    """Centre crop to the 1:2 aspect, then OCTResize to 128 x 256, per image: a 128 x 192 image is its central
    96 x 192 rows, a 64 x 128 image is only upsampled, and the batch around an image changes nothing."""
    gen = torch.Generator().manual_seed(0)
    wide = torch.rand(3, 1, 128, 192, generator=gen)
    x = extractor.preprocess(wide)
    assert x.shape == (3, 1, *SIZE)
    assert torch.equal(x, extractor.preprocess(wide[..., 16:112, :].contiguous()))
    # alone or in a batch: the same interpolation, vectorised differently (one float32 ulp of values in [0, 1])
    torch.testing.assert_close(x[1:2], extractor.preprocess(wide[1:2]), rtol=0, atol=2.0**-23)
    small = torch.rand(2, 1, 64, 128, generator=gen)
    expected = OCTResize(SIZE, mode="crop")(small[0])
    torch.testing.assert_close(extractor.preprocess(small)[0], torch.as_tensor(expected), rtol=0, atol=0)


def test_the_evaluation_defaults_to_it_and_train_stays_an_option() -> None:
    assert EvaluationSettings().feature_extractor == "oct"
    for old in (None, "", "auto"):
        assert EvaluationSettings.from_mapping({"feature_extractor": old}).feature_extractor == "oct"
    assert EvaluationSettings(feature_extractor="train").feature_extractor == "train"
    # the bundle's evaluate.json uses the bundle's own weights
    parser = bundle_parser(BUNDLE, "evaluate.json")
    assert Path(parser.get_parsed_content("feature_extractor")) == BUNDLE
    assert load_feature_extractor(BUNDLE).checksum == file_sha256(WEIGHTS)
    with pytest.raises(ValueError, match="evaluate_synthesis"):
        load_feature_extractor("train")
