"""medicraft_monai.ssl: networks, loading pretrained encoders, label subsampling, phantom segmentation labels,
restoration metrics, the encoder export, and the label-efficiency experiment through its bundle config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medicraft_monai.data import OCTDataError, build_datalist, write_datalist
from medicraft_monai.data.phantom import OCTPhantom, PhantomConfig
from medicraft_monai.networks import load_state_dict
from medicraft_monai.ssl import (
    ENCODER_PREFIXES,
    BasicUNetEncoder,
    ContextRestorationNet,
    EncoderClassifier,
    PooledEncoder,
    RestorationImageHandler,
    build_phantom_segmentation_datalist,
    classification_output,
    export_encoder,
    load_encoder_meta,
    load_pretrained,
    ms_ssim_weights,
    phantom_label_map,
    restoration_report,
    segmentation_class_names,
    subsample_by_patient,
    trainable_parameters,
    unlabelled_items,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "oct_context_restoration"
FEATURES = (4, 4, 8, 8, 16, 4)


def _trained_like(net: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Give every parameter distinct random values (so "loaded" cannot be confused with a fresh init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    net = _trained_like(ContextRestorationNet(features=FEATURES))
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(net.state_dict(), path)
    return path, {k: v.clone() for k, v in net.state_dict().items()}


# --------------------------------------------------------------------------------------------------------------------
# networks and loading
# --------------------------------------------------------------------------------------------------------------------
def test_restoration_net_shapes_and_its_encoder_equals_a_separate_encoder(pretrained) -> None:
    path, state = pretrained
    net = ContextRestorationNet(features=FEATURES)
    net.load_state_dict(state)
    x = torch.rand(2, 1, 32, 64)
    assert net(x).shape == (2, 1, 32, 64)
    enc = net.make_encoder()
    assert isinstance(enc, BasicUNetEncoder) and enc.out_channels == FEATURES[4]
    assert set(enc.state_dict()) == set(net.encoder_state_dict())
    assert all(k.startswith(ENCODER_PREFIXES) for k in enc.state_dict())
    with torch.no_grad():
        deep = net.down_4(net.down_3(net.down_2(net.down_1(net.conv_0(x)))))
        torch.testing.assert_close(enc(x), deep)
        assert enc(x).shape == (2, FEATURES[4], 2, 4)
        assert EncoderClassifier(3, features=FEATURES)(x).shape == (2, 3)
        assert PooledEncoder(enc, (32, 64))(torch.rand(3, 1, 50, 70)).shape == (3, FEATURES[4])


def test_load_pretrained_fills_the_classifier_encoder_and_freezes_it(pretrained) -> None:
    path, state = pretrained
    torch.manual_seed(0)
    clf = EncoderClassifier(4, features=FEATURES)
    head = clf.head.weight.detach().clone()
    before = clf.encoder.conv_0.conv_0.conv.weight.detach().clone()
    load_pretrained(clf, path)
    for key, value in clf.encoder.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert not torch.equal(before, clf.encoder.conv_0.conv_0.conv.weight)
    torch.testing.assert_close(clf.head.weight, head, rtol=0, atol=0)  # the head is not touched
    assert all(p.requires_grad for p in clf.parameters())

    frozen = load_pretrained(EncoderClassifier(4, features=FEATURES), str(path), freeze="true")
    trainable = trainable_parameters(frozen)
    assert {id(p) for p in trainable} == {id(p) for p in frozen.head.parameters()}

    scratch = EncoderClassifier(4, features=FEATURES)
    ref = {k: v.clone() for k, v in scratch.state_dict().items()}
    load_pretrained(scratch, "")
    assert all(torch.equal(ref[k], v) for k, v in scratch.state_dict().items())


def test_load_pretrained_segmentation_net_encoder_or_all_and_checkpoint_formats(pretrained, tmp_path) -> None:
    path, state = pretrained
    seg = load_pretrained(ContextRestorationNet(out_channels=7, features=FEATURES), path)
    own = seg.state_dict()
    enc_keys = [k for k in own if k.startswith(ENCODER_PREFIXES)]
    assert enc_keys and all(torch.equal(own[k], state[k]) for k in enc_keys)
    assert not torch.equal(own["upcat_1.convs.conv_0.conv.weight"], state["upcat_1.convs.conv_0.conv.weight"])

    seg_all = load_pretrained(ContextRestorationNet(out_channels=7, features=FEATURES), path, part="all")
    own = seg_all.state_dict()
    assert torch.equal(own["upcat_1.convs.conv_0.conv.weight"], state["upcat_1.convs.conv_0.conv.weight"])
    assert own["final_conv.weight"].shape[0] == 7  # the output layer has another shape: not loaded

    # a training checkpoint (CheckpointSaver's dict) from DistributedDataParallel, and a fine-tuned classifier
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"network": {"module." + k: v for k, v in state.items()}, "trainer": {"epoch": 3}}, wrapped)
    assert set(load_state_dict(wrapped)) == set(state)
    clf = load_pretrained(EncoderClassifier(2, features=FEATURES), wrapped)
    clf_path = tmp_path / "clf.pt"
    torch.save(clf.state_dict(), clf_path)
    again = load_pretrained(EncoderClassifier(3, features=FEATURES), clf_path)
    assert torch.equal(again.encoder.down_4.convs.conv_1.conv.weight, state["down_4.convs.conv_1.conv.weight"])


def test_load_pretrained_errors_name_the_file(pretrained, tmp_path) -> None:
    path, _ = pretrained
    with pytest.raises(OCTDataError, match="not found"):
        load_pretrained(EncoderClassifier(2, features=FEATURES), tmp_path / "missing.pt")
    with pytest.raises(OCTDataError, match=r"model\.pt.*shape.*features"):
        load_pretrained(EncoderClassifier(2, features=(8, 8, 8, 8, 16, 4)), path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(OCTDataError, match="junk.pt: cannot read"):
        load_pretrained(EncoderClassifier(2, features=FEATURES), junk)
    other = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(OCTDataError, match="other.pt: no encoder weights"):
        load_pretrained(EncoderClassifier(2, features=FEATURES), other)
    with pytest.raises(ValueError, match="part"):
        load_pretrained(EncoderClassifier(2, features=FEATURES), path, part="decoder")


# --------------------------------------------------------------------------------------------------------------------
# data: label fractions by patient, unlabelled sources, phantom segmentation labels
# --------------------------------------------------------------------------------------------------------------------
def test_subsample_by_patient_is_stratified_patient_level_seeded_and_nested(oct2017_dir) -> None:
    items = build_datalist(oct2017_dir, check_images=False)["training"]
    pids = {it["patient_id"] for it in items}
    for fraction in (0.1, 0.25, 0.5):
        a = subsample_by_patient(items, fraction, seed=0)
        assert a == subsample_by_patient(items, fraction, seed=0)
        assert a != subsample_by_patient(items, fraction, seed=1)
        kept = {it["patient_id"] for it in a}
        # whole patients: every image of a kept patient is kept
        assert len(a) == sum(it["patient_id"] in kept for it in items)
        assert {it["label"] for it in a} == {0, 1, 2, 3}
        assert abs(len(kept) / len(pids) - fraction) < 0.05
    small = {it["patient_id"] for it in subsample_by_patient(items, 0.1, seed=3)}
    large = {it["patient_id"] for it in subsample_by_patient(items, 0.5, seed=3)}
    assert small < large
    assert subsample_by_patient(items, 1.0, seed=5) == [dict(it) for it in items]
    with pytest.raises(ValueError, match="fraction"):
        subsample_by_patient(items, 0.0)


def test_unlabelled_items_mix_sources_with_fractions(oct2017_dir, tmp_path) -> None:
    full = build_datalist(oct2017_dir, check_images=False)
    a = write_datalist(tmp_path / "a" / "datalist.json", {**full, "training": full["training"][:40]})
    b = write_datalist(tmp_path / "b" / "datalist.json", {**full, "training": full["training"][40:60]})
    items = unlabelled_items([str(a), {"datalist": str(b), "fraction": 0.5}], "training", seed=0)
    assert sum(it["source"] == 0 for it in items) == 40
    assert sum(it["source"] == 1 for it in items) == 10
    assert all(Path(it["image"]).is_file() for it in items)
    assert items == unlabelled_items([str(a), {"datalist": str(b), "fraction": 0.5}], "training", seed=0)
    both = unlabelled_items([{"datalist": str(b), "splits": {"training": ["training", "validation"]}}])
    assert len(both) == 20 + len(full["validation"])
    with pytest.raises(ValueError, match="fraction"):
        unlabelled_items([{"datalist": str(a), "fraction": 2}])


def test_phantom_label_map_bands_follow_the_ground_truth() -> None:
    cfg = PhantomConfig(height=64, width=128, n_planes=2)
    exam = OCTPhantom(cfg).generate_exam(3, "melanoma", "R")
    truth = exam.truth_arrays()
    names = segmentation_class_names()
    assert names == ["background", "inner_retina", "onl_is", "os_rpe", "choroid", "lesion", "fluid"]
    for plane in range(2):
        lab = phantom_label_map(truth, plane, 64)
        no_lesion = phantom_label_map(truth, plane, 64, lesions=False)
        assert lab.shape == (64, 128) and lab.dtype == np.uint8
        # along every column the bands come in anatomical order (labels never decrease with depth)
        for col in range(128):
            seq = no_lesion[:, col][no_lesion[:, col] > 0]
            assert np.all(np.diff(seq.astype(int)) >= 0)
        # a band starts at its boundary row: the ILM row of a column is the first inner-retina pixel
        col = 40
        ilm = truth["layer_ILM"][plane][col]
        if np.isfinite(ilm) and np.isfinite(truth["layer_OPL_ONL"][plane][col]):
            assert no_lesion[int(np.ceil(ilm)), col] == 1 and no_lesion[int(np.ceil(ilm)) - 1, col] == 0
        np.testing.assert_array_equal(lab == 5, truth["lesion_mask"][plane] & ~truth["fluid_mask"][plane])
        np.testing.assert_array_equal(lab == 6, truth["fluid_mask"][plane])
    assert (phantom_label_map(truth, 0, 64) == 5).any() or (phantom_label_map(truth, 1, 64) == 5).any()


def test_phantom_segmentation_datalist_is_split_by_patient_and_matches_the_truth(tmp_path) -> None:
    path = build_phantom_segmentation_datalist(tmp_path, n_exams=5, height=32, width=64, n_planes=2, progress=False)
    data = json.loads(path.read_text())
    assert data["labels"]["5"] == "lesion" and data["num_classes"] == 7
    splits = [{it["patient_id"] for it in data[s]} for s in ("training", "validation", "test")]
    assert not (splits[0] & splits[1]) and not (splits[0] & splits[2]) and not (splits[1] & splits[2])
    item = data["training"][0]
    label = np.asarray(Image.open(tmp_path / item["label"]))
    with np.load(tmp_path / item["truth"]) as npz:
        truth = {k: npz[k] for k in npz.files}
    plane = int(np.argmin(np.abs(truth["plane_angles"] - item["plane_angle"])))
    np.testing.assert_array_equal(label, phantom_label_map(truth, plane, 32))
    assert np.asarray(Image.open(tmp_path / item["image"])).shape == (32, 64)
    mtime = path.stat().st_mtime_ns
    assert build_phantom_segmentation_datalist(tmp_path, n_exams=5, height=32, width=64) == path
    assert path.stat().st_mtime_ns == mtime  # an existing datalist is kept


# --------------------------------------------------------------------------------------------------------------------
# restoration metrics, pictures and the encoder export
# --------------------------------------------------------------------------------------------------------------------
def test_ms_ssim_weights_fit_the_image_size() -> None:
    assert len(ms_ssim_weights((256, 512), 7)) == 5
    assert len(ms_ssim_weights((64, 128), 7)) == 4  # 64 > 6 * 2**3
    assert len(ms_ssim_weights((32, 64), 7)) == 3
    assert abs(sum(ms_ssim_weights((64, 128))) - 1) < 1e-9
    with pytest.raises(ValueError, match="too small"):
        ms_ssim_weights((6, 64), 7)


def test_restoration_report_measures_corrupted_and_restored_images(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    original = torch.rand(4, 1, 32, 64, generator=gen)
    corrupted = original.clone()
    corrupted[:, :, :8, :8], corrupted[:, :, 16:24, 32:40] = original[:, :, 16:24, 32:40], original[:, :, :8, :8]
    batches = [{"image": corrupted[:2], "label": original[:2]}, {"image": corrupted[2:], "label": original[2:]}]

    class Oracle(torch.nn.Module):  # "restores" perfectly: the metric must reach 1
        def forward(self, x):
            return original[: x.shape[0]] if x.data_ptr() == corrupted.data_ptr() else original[2:]

    ident = restoration_report(torch.nn.Identity(), batches, tmp_path / "id")
    assert ident["n_images"] == 4
    assert ident["ssim_restored"] == pytest.approx(ident["ssim_corrupted"])
    assert 0.3 < ident["ssim_corrupted"] < 0.999 and 0.3 < ident["ms_ssim_corrupted"] < 0.999
    oracle = restoration_report(Oracle(), batches, tmp_path / "oracle")
    assert oracle["ssim_restored"] == pytest.approx(1.0, abs=1e-4)
    assert oracle["ms_ssim_restored"] == pytest.approx(1.0, abs=1e-4)
    assert oracle["mse_restored"] == pytest.approx(0.0, abs=1e-8) and oracle["mse_corrupted"] > 0
    saved = json.loads((tmp_path / "oracle" / "restoration_metrics.json").read_text())
    assert saved["ssim_restored"] == pytest.approx(oracle["ssim_restored"]) and len(saved["per_image"]) == 4
    grid = np.asarray(Image.open(tmp_path / "oracle" / "before_after.png"))
    assert grid.ndim == 2 and grid.shape[0] > 3 * 128


def test_restoration_image_handler_writes_the_first_batch(tmp_path) -> None:
    from ignite.engine import Engine

    x = torch.rand(3, 1, 16, 32)

    def step(engine, batch):
        return [{"pred": b} for b in batch["label"]]

    engine = Engine(step)
    RestorationImageHandler(None, max_images=2, tag="val", output_dir=tmp_path).attach(engine)
    engine.run([{"image": x, "label": x}] * 3, max_epochs=2)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["val_epoch1.png", "val_epoch2.png"]
    assert np.asarray(Image.open(tmp_path / files[0])).shape[0] >= 3 * 96


def test_export_encoder_torchscript_gives_pooled_features(pretrained, tmp_path) -> None:
    path, state = pretrained
    out = export_encoder(path, tmp_path / "models" / "encoder.ts", input_size=(32, 64))
    loaded = torch.jit.load(str(out))
    x = torch.rand(5, 1, 48, 96)
    feats = loaded(x)
    assert feats.shape == (5, FEATURES[4])
    enc = BasicUNetEncoder(features=FEATURES)
    enc.load_state_dict({k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)})
    with torch.no_grad():
        torch.testing.assert_close(feats, PooledEncoder(enc, (32, 64))(x), rtol=1e-4, atol=1e-4)
    assert loaded(torch.rand(1, 1, 128, 256)).shape == (1, FEATURES[4])
    meta = load_encoder_meta(out)
    assert meta["feature_dim"] == FEATURES[4] and meta["input_size"] == [32, 64] and meta["value_range"] == [0, 1]
    free = torch.jit.load(str(export_encoder(path, tmp_path / "free.ts")))
    assert free(torch.rand(2, 1, 32, 48)).shape == (2, FEATURES[4])
    with pytest.raises(OCTDataError, match="cannot export"):
        bad = tmp_path / "bad.pt"
        torch.save({"fc.weight": torch.zeros(1)}, bad)
        export_encoder(bad, tmp_path / "bad.ts")


def test_classification_output_for_metrics() -> None:
    out = [{"pred": torch.tensor([2.0, 0.0, 0.0]), "label": torch.tensor(0)}, {"pred": torch.zeros(3), "label": 2}]
    prob, label = classification_output(3)(out)
    assert prob.shape == (2, 3) and torch.allclose(prob.sum(1), torch.ones(2)) and label.tolist() == [0, 2]
    prob, onehot = classification_output(3, onehot=True)(out)
    assert onehot.tolist() == [[1, 0, 0], [0, 0, 1]]
