"""Feature extractors (module, TorchScript, bundle) and evaluation image loading."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import DenseNet, resnet10
from torch import nn

from medicraft_monai.bundles import bundle_path, config_files
from medicraft_monai.data.errors import OCTDataError
from medicraft_monai.metrics import features as features_mod
from medicraft_monai.metrics.features import (
    FeatureExtractor,
    PixelFeatures,
    extract_features,
    load_feature_extractor,
    pixel_features,
)
from medicraft_monai.metrics.images import evaluation_transform, load_images

REPO = Path(__file__).resolve().parents[1]


def _densenet(out_channels: int = 3) -> DenseNet:
    torch.manual_seed(0)
    return DenseNet(
        spatial_dims=2, in_channels=1, out_channels=out_channels, init_features=8, growth_rate=4, block_config=(2, 2)
    ).eval()


class _EncoderDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 6, 3, stride=2))
        self.decoder = nn.Conv2d(6, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@pytest.fixture()
def batch() -> torch.Tensor:
    return torch.rand(5, 1, 32, 64, generator=torch.Generator().manual_seed(0))


def test_densenet_trunk_gives_penultimate_features(batch: torch.Tensor) -> None:
    net = _densenet()
    fe = FeatureExtractor.from_network(net)
    with torch.no_grad():
        got = fe(batch)
        expected = net.class_layers[:-1](net.features(batch))
        logits = net.class_layers.out(got)
    assert got.shape == (5, net.class_layers.out.in_features)
    assert torch.allclose(got, expected)
    assert torch.allclose(logits, net(batch), atol=1e-6)  # the features are exactly what the classifier head sees
    assert "DenseNet" in fe.name


def test_resnet_trunk_is_everything_before_fc(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    net = resnet10(spatial_dims=2, n_input_channels=1, num_classes=4).eval()
    fe = FeatureExtractor.from_network(net)
    ref = copy.deepcopy(net)
    ref.fc = nn.Identity()
    with torch.no_grad():
        assert torch.allclose(fe(batch), ref(batch), atol=1e-6)
    assert fe(batch).shape == (5, net.fc.in_features)
    assert net.fc is not None  # the caller's network is not modified


def test_encoder_attribute_and_plain_modules_are_pooled(batch: torch.Tensor) -> None:
    model = _EncoderDecoder()
    fe = FeatureExtractor.from_network(model)
    with torch.no_grad():
        assert torch.allclose(fe(batch), model.encoder(batch).mean(dim=(2, 3)))
    plain = FeatureExtractor.from_network(nn.Conv2d(1, 3, 3))
    assert plain(batch).shape == (5, 3)
    vec = FeatureExtractor.from_network(nn.Flatten())  # already (B, D): unchanged
    assert torch.equal(vec(batch), batch.flatten(1))

    class Levels(nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [x[:, :, :2], x.mean(dim=(2, 3))]

    listed = FeatureExtractor(Levels())
    assert torch.allclose(listed(batch), batch.mean(dim=(2, 3)))  # the last element of a list output


def test_preprocessing_resize_range_and_channels(batch: torch.Tensor) -> None:
    seen = {}

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["x"] = x
            return x.mean(dim=(2, 3))

    fe = FeatureExtractor(Probe(), spatial_size=(16, 32), input_range=(-1.0, 1.0), in_channels=3)
    out = fe(batch)
    x = seen["x"]
    assert x.shape == (5, 3, 16, 32) and out.shape == (5, 3)
    assert torch.equal(x[:, 0], x[:, 2])
    assert float(x.min()) < -0.5 and float(x.max()) > 0.5  # [0, 1] noise mapped to [-1, 1]
    with pytest.raises(ValueError, match="channels"):
        FeatureExtractor(Probe(), in_channels=3)(torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        fe(torch.rand(8, 8))


def test_torchscript_round_trip_and_errors(tmp_path: Path, batch: torch.Tensor) -> None:
    enc = _EncoderDecoder().encoder.eval()
    path = tmp_path / "encoder.ts"
    torch.jit.save(torch.jit.trace(enc, batch), str(path))
    fe = FeatureExtractor.from_torchscript(path)
    with torch.no_grad():
        assert torch.allclose(fe(batch), enc(batch).mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(load_feature_extractor(path)(batch), fe(batch))
    state = tmp_path / "weights.pt"
    torch.save(enc.state_dict(), state)
    with pytest.raises(ValueError, match="from_bundle"):
        load_feature_extractor(state)
    with pytest.raises(FileNotFoundError, match="missing.ts"):
        load_feature_extractor(tmp_path / "missing.ts")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown feature extractor file"):
        load_feature_extractor(tmp_path / "notes.txt")


def _write_bundle(root: Path, network_def: dict, extra: dict | None = None) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    cfg = {"bundle_root": ".", "image_size": [32, 64], "network_def": network_def, **(extra or {})}
    (root / "configs" / "inference.json").write_text(json.dumps(cfg))
    return root


_SMALL_DENSENET = {
    "_target_": "DenseNet",
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 3,
    "init_features": 8,
    "growth_rate": 4,
    "block_config": [2, 2],
}


def test_from_bundle_loads_weights_in_every_checkpoint_layout(tmp_path: Path, batch: torch.Tensor) -> None:
    net = _densenet()
    root = _write_bundle(tmp_path / "bundle", _SMALL_DENSENET)
    with pytest.raises(FileNotFoundError, match="train the bundle"):
        FeatureExtractor.from_bundle(root)
    expected = FeatureExtractor.from_network(net)(batch)
    for layout in (net.state_dict(), {"model": net.state_dict()}, {"state_dict": net.state_dict()}):
        torch.save(layout, root / "models" / "model.pt")
        fe = load_feature_extractor(root)
        assert fe.spatial_size == (32, 64)  # from the config's image_size
        assert torch.allclose(fe(batch), expected, atol=1e-6)
    torch.save(_densenet(out_channels=5).state_dict(), root / "models" / "model.pt")
    with pytest.raises(ValueError, match="does not match"):
        FeatureExtractor.from_bundle(root)


def test_from_bundle_overrides_keys_the_network_depends_on(tmp_path: Path, batch: torch.Tensor) -> None:
    net_def = {**_SMALL_DENSENET, "out_channels": "@num_classes"}
    extra = {"class_names": "$json.load(open(@bundle_root + '/absent.json'))", "num_classes": "$len(@class_names)"}
    root = _write_bundle(tmp_path / "bundle", net_def, {"imports": ["$import json"], **extra})
    torch.save(_densenet().state_dict(), root / "models" / "model.pt")
    with pytest.raises(ValueError, match="overrides"):
        FeatureExtractor.from_bundle(root)
    fe = FeatureExtractor.from_bundle(root, overrides={"num_classes": 3})
    assert fe(batch).shape == (5, _densenet().class_layers.out.in_features)


def test_the_oct_classifier_bundle_network_def_is_supported(tmp_path: Path) -> None:
    """The project's classifier bundle (what feature_extractor "train" trains) builds through from_bundle (weights: a
    fresh net); its resize_mode is the extractor's."""
    root = bundle_path("oct_classifier")
    parser = ConfigParser()
    parser.read_config([str(p) for p in config_files(root, "inference.json")])
    parser["bundle_root"] = str(root)
    parser["num_classes"] = 4
    net = parser.get_parsed_content("network_def")
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    fe = FeatureExtractor.from_bundle(root, ckpt_path=ckpt, overrides={"num_classes": 4})
    feats = extract_features(fe, torch.rand(2, 1, 64, 128), progress=False)
    assert feats.shape[0] == 2 and feats.shape[1] == net.class_layers.out.in_features
    assert "oct_classifier" in fe.name and fe.resize_mode == "crop"


def test_from_bundle_reads_the_extractor_keys_and_records_the_weights(tmp_path: Path, batch: torch.Tensor) -> None:
    from medicraft_monai.utils import file_sha256

    extra = {
        "extractor_image_size": [16, 48],
        "extractor_resize_mode": "crop",
        "extractor_input_range": [-1, 1],
        "extractor_name": "tiny test trunk",
        "resize_mode": "fit",  # the extractor_ key wins
    }
    root = _write_bundle(tmp_path / "bundle", _SMALL_DENSENET, extra)
    torch.save(_densenet().state_dict(), root / "models" / "model.pt")
    fe = load_feature_extractor(root)
    info = fe.describe()
    assert info["input_size"] == [16, 48] and info["resize_mode"] == "crop" and info["input_range"] == [-1.0, 1.0]
    assert info["extractor"] == "bundle bundle: tiny test trunk"
    assert info["file"] == str((root / "models" / "model.pt").resolve())
    assert info["sha256"] == file_sha256(root / "models" / "model.pt")
    assert FeatureExtractor.from_bundle(root, resize_mode="stretch", name="mine").describe()["extractor"] == "mine"
    with pytest.raises(ValueError, match="resize_mode"):
        FeatureExtractor(nn.Identity(), resize_mode="letterbox")


def test_load_feature_extractor_specs_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = _densenet()
    assert isinstance(load_feature_extractor(net), FeatureExtractor)
    fe = load_feature_extractor(net)
    assert load_feature_extractor(fe) is fe
    px = load_feature_extractor("pixels")
    assert isinstance(px.network, PixelFeatures) and px(torch.rand(2, 1, 64, 128)).shape == (2, 32 * 64)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="not a MONAI bundle"):
        load_feature_extractor(tmp_path / "folder")
    with pytest.raises(TypeError):
        load_feature_extractor(42)
    untrained = _write_bundle(tmp_path / "oct_classifier", _SMALL_DENSENET)
    monkeypatch.setattr(features_mod, "DEFAULT_BUNDLE", untrained)
    with pytest.raises(FileNotFoundError, match="no trained weights"):
        load_feature_extractor(None)


def test_extract_features_batches_mode_and_pixel_features(batch: torch.Tensor) -> None:
    net = _densenet().train()
    whole = extract_features(net, batch, batch_size=64, progress=False)
    parts = extract_features(net, batch, batch_size=2, progress=False)
    assert whole.shape == (5, net.class_layers.out.in_features) and whole.dtype == torch.float32
    assert torch.allclose(whole, parts, atol=1e-6)  # eval mode: batch statistics do not leak in
    assert net.training  # the caller's mode is restored
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(net, batch, batch_size=0)
    # pixel features: area averages of 2 x 2 blocks
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(pixel_features(img, (2, 2)), torch.tensor([[2.5, 4.5, 10.5, 12.5]]))
    assert pixel_features(torch.rand(3, 1, 64, 128)).shape == (3, 32 * 64)
    with pytest.raises(ValueError):
        pixel_features(torch.rand(64, 128))


def test_load_real_images_with_labels_and_crop(real_bscan_paths: list[Path]) -> None:
    paths = real_bscan_paths[::6]  # one per class, different widths
    items = [{"image": str(p), "label": p.parent.name, "patient_id": p.stem.split("-")[1]} for p in paths]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RetinaCrop warns on tall retinas
        images, kept = load_images(items, (32, 64), crop_height=256, progress=False)
    assert images.shape == (4, 1, 32, 64) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0 and float(images.std()) > 0.05
    assert [k["label"] for k in kept] == [i["label"] for i in items]
    plain, kept2 = load_images([str(p) for p in paths], (32, 64), progress=False)
    assert plain.shape == (4, 1, 32, 64) and kept2[0] == {"image": str(paths[0])}
    assert not torch.allclose(plain, images)  # the retina crop changed the framing
    assert len(evaluation_transform((32, 64)).transforms) == 4
    assert len(evaluation_transform((32, 64), crop_height=128).transforms) == 5


def test_bad_files_raise_or_are_skipped(tmp_path: Path, real_bscan_paths: list[Path]) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    items = [{"image": str(real_bscan_paths[0]), "label": "CNV"}, {"image": str(bad), "label": "CNV"}]
    with pytest.raises(OCTDataError, match="broken.png"):
        load_images(items, (32, 64), progress=False)
    skipped: list[dict] = []
    with pytest.warns(UserWarning, match="broken.png"):
        images, kept = load_images(items, (32, 64), progress=False, skip_bad=True, skipped=skipped)
    assert images.shape == (1, 1, 32, 64) and kept == items[:1]
    assert len(skipped) == 1 and skipped[0]["image"] == str(bad) and "broken.png" in skipped[0]["error"]
    with pytest.raises(ValueError, match="none of the 1"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_images([str(bad)], (32, 64), skip_bad=True, progress=False)
    with pytest.raises(ValueError, match="no images"):
        load_images([], (32, 64))
