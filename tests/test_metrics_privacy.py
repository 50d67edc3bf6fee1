"""Memorisation audit on phantoms: copies of training images are flagged, fresh images are not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet
from PIL import Image

from medicraft_monai.data.phantom import OCTPhantom, PhantomConfig
from medicraft_monai.metrics.features import FeatureExtractor, extract_features, pixel_features
from medicraft_monai.metrics.privacy import memorisation_audit, nearest_neighbours, save_closest_pairs

CLASSES = ("healthy", "benign", "melanoma")
N = 60


def _phantoms(seeds: range) -> torch.Tensor:
    phantom = OCTPhantom(PhantomConfig(height=64, width=128))
    scans = [phantom.generate_bscan(s, CLASSES[s % 3], 30.0 * (s % 6))[0] for s in seeds]
    return torch.from_numpy(np.stack(scans))[:, None]


@pytest.fixture(scope="module")
def sets() -> dict[str, torch.Tensor]:
    train = _phantoms(range(0, N))
    noise = 0.01 * torch.randn(train.shape, generator=torch.Generator().manual_seed(1))
    return {
        "train": train,
        "test": _phantoms(range(1000, 1000 + N)),  # other patients: the reference
        "fresh": _phantoms(range(2000, 2000 + N)),  # a generator that makes new eyes
        "copies": (train + noise).clamp(0, 1),  # a generator that memorised its training set
    }


@pytest.fixture(scope="module")
def feats(sets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Features of a small DenseNet whose batch-norm statistics are calibrated on the training images."""
    torch.manual_seed(0)
    net = DenseNet(spatial_dims=2, in_channels=1, out_channels=3, init_features=16, growth_rate=8, block_config=(2, 2))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration pass
    net.train()
    with torch.no_grad():
        net(sets["train"])
    fe = FeatureExtractor.from_network(net.eval())
    return {k: extract_features(fe, v, progress=False) for k, v in sets.items()}


@pytest.fixture(scope="module")
def pixels(sets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: pixel_features(v) for k, v in sets.items()}


def _audit(name: str, feats: dict, pixels: dict, **kwargs) -> dict:
    return memorisation_audit(
        feats[name], feats["train"], feats["test"], pixels[name], pixels["train"], pixels["test"], **kwargs
    )


def test_copies_of_training_images_are_flagged(feats: dict, pixels: dict) -> None:
    out = _audit("copies", feats, pixels)
    px, ft = out["spaces"]["pixels"], out["spaces"]["features"]
    assert out["flagged"] and px["flagged"] and "memorisation suspected" in out["verdict"]
    assert px["fraction_below"] >= 0.95 and px["median_ratio"] < 0.5
    assert ft["fraction_below"] >= 0.8 and ft["flagged"]
    assert px["p_value"] < 1e-6
    # every copy is matched to the image it copies
    assert px["nearest_train_index"] == list(range(N))
    assert [p["synthetic_index"] for p in px["closest_pairs"]] == [p["train_index"] for p in px["closest_pairs"]]


def test_fresh_phantoms_are_not_flagged(feats: dict, pixels: dict) -> None:
    out = _audit("fresh", feats, pixels)
    assert not out["flagged"] and out["verdict"] == "no evidence of memorisation"
    for space in out["spaces"].values():
        assert space["fraction_below"] <= 0.05  # close to the nominal 1%
        assert 0.7 < space["median_ratio"] < 1.4  # as far from the training set as new real patients
        assert space["n_exact_copies"] == 0
    json.dumps(out)


def test_pairs_shapes_ordering_and_distances(sets: dict, pixels: dict) -> None:
    synth, train, test = pixels["fresh"], pixels["train"], pixels["test"]
    out = memorisation_audit(synth, train, test, top_k=5)
    space = out["spaces"]["features"]
    assert list(out["spaces"]) == ["features"]
    pairs = space["closest_pairs"]
    assert len(pairs) == 5 and set(pairs[0]) == {"synthetic_index", "train_index", "distance"}
    dists = [p["distance"] for p in pairs]
    assert dists == sorted(dists) and dists[0] == pytest.approx(min(space["distances"]))
    full = torch.cdist(synth.double(), train.double())  # brute force
    assert space["nearest_train_index"] == full.argmin(dim=1).tolist()
    assert np.allclose(space["distances"], full.min(dim=1).values.numpy())
    for p in pairs:
        assert p["distance"] == pytest.approx(float(full[p["synthetic_index"], p["train_index"]]))
    ref = torch.cdist(test.double(), train.double()).min(dim=1).values.numpy()
    assert space["threshold"] == pytest.approx(float(np.percentile(ref, 1.0)))
    assert space["n_below"] == int((np.asarray(space["distances"]) < space["threshold"]).sum())
    # chunked nearest neighbours agree with the brute force
    d, i = nearest_neighbours(synth, train, chunk=7)
    assert torch.equal(i, full.argmin(dim=1)) and torch.allclose(d, full.min(dim=1).values)


def test_exact_copies_images_as_input_and_errors(sets: dict) -> None:
    train, test = sets["train"], sets["test"]
    out = memorisation_audit(train[:10], train, test)  # images are flattened to pixel vectors
    space = out["spaces"]["features"]
    assert space["n_exact_copies"] == 10 and space["fraction_below"] == 1.0 and space["median_ratio"] < 1e-4
    with pytest.raises(ValueError, match="together"):
        memorisation_audit(train, train, test, synth_pixels=train)
    with pytest.raises(ValueError, match="percentile"):
        memorisation_audit(train, train, test, percentile=0)
    with pytest.raises(ValueError, match="dimensions differ"):
        memorisation_audit(train, train[:, :, :32], test)
    with pytest.raises(ValueError, match="synthetic images"):
        memorisation_audit(train[:5], train, test, train[:6], train, test)


def test_save_closest_pairs_png(tmp_path: Path, sets: dict, pixels: dict) -> None:
    out = memorisation_audit(pixels["copies"], pixels["train"], pixels["test"], top_k=3)
    pairs = out["spaces"]["features"]["closest_pairs"]
    path = save_closest_pairs(pairs, sets["copies"], sets["train"], tmp_path / "figs" / "pairs.png", tile_height=64)
    img = np.asarray(Image.open(path))
    assert img.ndim == 2 and img.shape[0] == 18 + 3 * (64 + 4) + 4  # title + one row per pair
    assert img.shape[1] == 110 + 2 * (128 + 4) + 4  # labels + synthetic + training image
    # the first row shows the synthetic image and its nearest training image (same picture here)
    left, right = img[22 : 22 + 64, 114 : 114 + 128], img[22 : 22 + 64, 114 + 132 : 114 + 132 + 128]
    assert np.abs(left.astype(float) - right.astype(float)).mean() < 10 and left.std() > 10
    tuples = [(p["synthetic_index"], p["train_index"], p["distance"]) for p in pairs]
    assert save_closest_pairs(tuples, sets["copies"], sets["train"], tmp_path / "t.png").is_file()
    with pytest.raises(IndexError):
        save_closest_pairs([(999, 0, 1.0)], sets["copies"], sets["train"], tmp_path / "x.png")
    with pytest.raises(ValueError):
        save_closest_pairs([], sets["copies"], sets["train"], tmp_path / "y.png")
