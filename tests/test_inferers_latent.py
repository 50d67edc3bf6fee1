"""Latent diffusion pieces in-process: the latent inferer, the latent cache, the autoencoder training step.

Tiny MONAI networks with random weights (output layers re-drawn so outputs depend on inputs); no bundle runs here
(tests/test_oct_ldm.py runs the bundle end to end).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import Dataset
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet, PatchDiscriminator

from medicraft_monai.data.latent_cache import build_latent_cache
from medicraft_monai.engines.latent import (
    AutoencoderKLUpdate,
    load_frozen_autoencoder,
    output_scalars,
    unit_range_pair,
)
from medicraft_monai.engines.losses import kl_loss
from medicraft_monai.engines.records import GeneratorError, LatentInfoWriter, read_latent_info
from medicraft_monai.inferers.conditional import ClassConditionedDiffusionInferer, seeded_noise
from medicraft_monai.inferers.latent import (
    AutoencoderReconstructionInferer,
    LatentClassConditionedInferer,
    autoencoder_downsampling,
)
from medicraft_monai.networks import randomise_zero_weights
from medicraft_monai.schedulers import make_scheduler
from medicraft_monai.synthesis.generator import DiffusionGenerator
from medicraft_monai.utils import file_sha256
from tests._numerics import sampling_atol

IMAGE = (1, 16, 32)
CLASSES = ["a", "b", "c"]


def tiny_autoencoder(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    ae = AutoencoderKL(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(8, 8),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=4,
        latent_channels=2,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )
    return randomise_zero_weights(ae, seed=seed)


def tiny_unet(seed: int = 0) -> DiffusionModelUNet:
    torch.manual_seed(seed)
    unet = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=2,
        out_channels=2,
        channels=(8, 8),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=4,
        num_class_embeds=len(CLASSES) + 1,
    )
    return randomise_zero_weights(unet, seed=seed).eval()


def latent_inferer(ae: AutoencoderKL, scale: float = 0.5, **kw) -> LatentClassConditionedInferer:
    return LatentClassConditionedInferer(
        make_scheduler("ddpm", 100, clip_sample=False), ae, scale_factor=scale, null_class=len(CLASSES), **kw
    )


class ImageSet(Dataset):
    """Random images with labels, counting how often an image is read (to prove a cache is reused)."""

    def __init__(self, n: int = 5, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        images = torch.rand((n, *IMAGE), generator=gen) * 2 - 1
        super().__init__([{"image": f"img{i}.png", "label": i % 3, "_x": images[i]} for i in range(n)])
        self.reads = 0

    def _transform(self, index: int):
        self.reads += 1
        item = self.data[index]
        return {"image": item["_x"], "label": item["label"]}


# --------------------------------------------------------------------------------------------------------------------
# the inferer
# --------------------------------------------------------------------------------------------------------------------
def test_latent_shape_follows_the_autoencoder_and_rejects_indivisible_sizes() -> None:
    ae = tiny_autoencoder()
    inferer = latent_inferer(ae)
    assert autoencoder_downsampling(ae) == 2
    assert inferer.latent_shape(IMAGE) == (2, 8, 16)
    assert inferer.latent_shape((64, 128)) == (2, 32, 64)
    with pytest.raises(ValueError, match="multiple of the autoencoder's down-sampling factor 2"):
        inferer.latent_shape((1, 15, 32))
    with pytest.raises(ValueError, match="positive"):
        latent_inferer(ae, scale=0.0)
    with pytest.raises(TypeError, match="not a MONAI AutoencoderKL"):
        autoencoder_downsampling(torch.nn.Linear(2, 2))


def test_sample_is_the_parent_loop_then_decoding_by_the_scale_factor() -> None:
    ae, unet = tiny_autoencoder(), tiny_unet()
    inferer = latent_inferer(ae, scale=0.5)
    parent = ClassConditionedDiffusionInferer(make_scheduler("ddpm", 100, clip_sample=False), null_class=3)
    assert isinstance(inferer, ClassConditionedDiffusionInferer)
    noise, gens = seeded_noise([1, 2], inferer.latent_shape(IMAGE))
    sched = make_scheduler("ddim", 100, clip_sample=False)
    images = inferer.sample(noise, unet, [0, 2], scheduler=sched, num_inference_steps=4, generators=gens, verbose=False)
    latents = parent.sample(noise, unet, [0, 2], scheduler=sched, num_inference_steps=4, verbose=False)
    with torch.no_grad():
        expected = ae.decode(latents / 0.5)
    assert images.shape == (2, *IMAGE) and images.dtype == torch.float32
    torch.testing.assert_close(images, expected)
    # encode is the inverse direction at the same scale
    z = inferer.encode(images)
    assert z.shape == (2, 2, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(z, ae.encode(images)[0] * 0.5)
    with pytest.raises(ValueError, match="latent_shape"):
        inferer.sample(torch.zeros(1, *IMAGE), unet, [0], verbose=False)


def test_same_seed_same_image_whatever_the_batch_and_guidance_and_ddpm_work() -> None:
    ae, unet = tiny_autoencoder(), tiny_unet()
    inferer = latent_inferer(ae, decode_batch_size=1)
    shape = inferer.latent_shape(IMAGE)

    def draw(seeds, labels, **kw):
        noise, gens = seeded_noise(seeds, shape)
        return inferer.sample(noise, unet, labels, num_inference_steps=5, generators=gens, verbose=False, **kw)

    ddpm_a = draw([3, 4, 5], [0, 1, 2])
    ddpm_b = draw([9, 4], [2, 1])
    # stochastic DDPM, same seed, other batch: the same image up to the rounding of other kernels
    torch.testing.assert_close(ddpm_a[1], ddpm_b[1], atol=sampling_atol(5), rtol=0)
    assert not torch.allclose(ddpm_a[0], ddpm_a[1])
    ddim = make_scheduler("ddim", 100, clip_sample=False)
    plain = draw([3], [0], scheduler=ddim)
    guided = draw([3], [0], scheduler=ddim, guidance_scale=4.0)
    assert (plain - guided).abs().mean() > 1e-4, "guidance must change the image"


def test_generator_draws_latent_noise_and_records_the_autoencoder(tmp_path: Path) -> None:
    ae, unet = tiny_autoencoder(), tiny_unet()
    ckpt = tmp_path / "model.pt"
    torch.save(unet.state_dict(), ckpt)
    inferer = latent_inferer(ae, checksums={"autoencoder": "ab" * 32})
    gen = DiffusionGenerator.from_components(
        unet,
        inferer,
        make_scheduler("ddim", 100, clip_sample=False),
        CLASSES,
        IMAGE[1:],
        ckpt,
        num_inference_steps=3,
        device="cpu",
    )
    assert gen.noise_shape() == (2, 8, 16) and gen.image_shape == IMAGE
    a = gen.generate(["a", "c"], [11, 12])
    b = gen.generate(["c"], [12])
    assert a.shape == (2, *IMAGE) and 0.0 <= a.min() and a.max() <= 1.0
    assert abs(a[1] - b[0]).max() < 1e-5, "same seed, other batch: the same image"
    prov = gen.provenance("a", 11)
    assert prov["model_sha256"] == file_sha256(ckpt) and prov["autoencoder_sha256"] == "ab" * 32


def test_reconstruction_inferer_decodes_the_posterior_mean() -> None:
    ae = tiny_autoencoder().eval()
    x = torch.rand(2, *IMAGE) * 2 - 1
    with torch.no_grad():
        out = AutoencoderReconstructionInferer()(x, ae)
        torch.testing.assert_close(out, ae.decode(ae.encode(x)[0]))


# --------------------------------------------------------------------------------------------------------------------
# the latent cache
# --------------------------------------------------------------------------------------------------------------------
def test_latent_cache_is_encoded_once_reused_and_rebuilt_for_another_autoencoder(tmp_path: Path) -> None:
    ae = tiny_autoencoder()
    ckpt = tmp_path / "autoencoder.pt"
    torch.save(ae.state_dict(), ckpt)
    calls = []
    ae.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    data = ImageSet(5)
    first = build_latent_cache(ae, data, tmp_path / "cache", ckpt, batch_size=2, flips=True, progress=False)
    assert first.encoded and first.path.is_file() and len(first) == 5
    assert sum(calls) == 10, "every image and its mirror encoded once"
    assert first.mu.shape == (5, 2, 2, 8, 16) and first.labels.tolist() == [0, 1, 2, 0, 1]
    with torch.no_grad():
        torch.testing.assert_close(first.mu[3, 1], ae.encode(torch.flip(data[3]["image"], [-1])[None])[0][0])
    mtime, reads, n_calls = first.path.stat().st_mtime_ns, data.reads, sum(calls)

    again = build_latent_cache(ae, data, tmp_path / "cache", ckpt, batch_size=2, flips=True, progress=False)
    assert not again.encoded and again.path == first.path and again.path.stat().st_mtime_ns == mtime
    assert sum(calls) == n_calls and data.reads == reads, "the cache must not touch the images or the encoder"
    assert torch.equal(again.mu, first.mu) and again.scale_factor == pytest.approx(first.scale_factor)

    # the scale factor is 1 / std of latents drawn from the cached posteriors
    z = first.mu + first.sigma * torch.randn((4000, *first.mu.shape))
    assert first.scale_factor == pytest.approx(1.0 / z.std().item(), rel=0.02)

    # a retrained autoencoder (new checkpoint): new key, re-encoded, the stale cache removed
    torch.save(tiny_autoencoder(seed=1).state_dict(), ckpt)
    load_frozen_autoencoder(ae, ckpt)
    third = build_latent_cache(ae, data, tmp_path / "cache", ckpt, batch_size=2, flips=True, progress=False)
    assert third.encoded and third.path != first.path and not first.path.exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [third.path.name]

    with pytest.raises(ValueError, match="empty"):
        build_latent_cache(ae, Dataset([]), tmp_path / "cache", ckpt, progress=False)


def test_latent_info_round_trip_and_autoencoder_check(tmp_path: Path) -> None:
    ae = tiny_autoencoder()
    ckpt = tmp_path / "autoencoder.pt"
    torch.save(ae.state_dict(), ckpt)
    cache = build_latent_cache(ae, ImageSet(3), tmp_path / "cache", ckpt, flips=False, progress=False)
    info_path = tmp_path / "models" / "latent.json"
    LatentInfoWriter(info_path, cache)(None)
    info = read_latent_info(info_path, ckpt)
    assert info["scale_factor"] == pytest.approx(cache.scale_factor) and info["latent_shape"] == [2, 8, 16]
    assert info["autoencoder_sha256"] == file_sha256(ckpt)
    other = tmp_path / "other.pt"
    torch.save(tiny_autoencoder(seed=3).state_dict(), other)
    with pytest.raises(GeneratorError, match="not the one the diffusion model was trained with"):
        read_latent_info(info_path, other)
    with pytest.raises(GeneratorError, match="latent.json not found"):
        read_latent_info(tmp_path / "missing.json")
    info_path.write_text(json.dumps({"scale_factor": "x"}))
    with pytest.raises(GeneratorError, match="malformed latent.json"):
        read_latent_info(info_path)


def test_load_frozen_autoencoder_freezes_and_names_problems(tmp_path: Path) -> None:
    ae = tiny_autoencoder()
    ckpt = tmp_path / "ae.pt"
    torch.save(ae.state_dict(), ckpt)
    net = load_frozen_autoencoder(tiny_autoencoder(seed=5), ckpt)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ae.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="train stage 1 first"):
        load_frozen_autoencoder(ae, tmp_path / "missing.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit the autoencoder settings"):
        load_frozen_autoencoder(ae, tmp_path / "bad.pt")


# --------------------------------------------------------------------------------------------------------------------
# stage 1 pieces
# --------------------------------------------------------------------------------------------------------------------
def test_kl_loss_is_zero_for_the_prior_and_positive_otherwise() -> None:
    assert kl_loss(torch.zeros(2, 3, 4), torch.ones(2, 3, 4)).item() == pytest.approx(0.0, abs=1e-6)
    # KL(N(1, 1) || N(0, 1)) = 0.5 per element; 12 elements per sample
    assert kl_loss(torch.ones(2, 3, 4), torch.ones(2, 3, 4)).item() == pytest.approx(6.0)


def test_autoencoder_update_trains_and_switches_the_adversarial_loss_on_at_its_epoch() -> None:
    torch.manual_seed(0)
    ae = tiny_autoencoder()
    disc = PatchDiscriminator(spatial_dims=2, num_layers_d=2, channels=4, in_channels=1, out_channels=1)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-2)
    dopt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    update = AutoencoderKLUpdate(
        kl_weight=1e-3, discriminator=disc, disc_optimizer=dopt, adversarial=True, adv_start_epoch=2
    )
    images = torch.rand(4, *IMAGE) * 2 - 1
    engine = Engine(update)
    engine.network, engine.optimizer, engine.loss_function = ae, opt, torch.nn.L1Loss()
    engine.prepare_batch = lambda b, device, non_blocking, **kw: (b["image"], b["label"])
    engine.non_blocking, engine.to_kwargs = False, {}
    engine.state.device = torch.device("cpu")
    outputs = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    disc_before = [p.clone() for p in disc.parameters()]
    engine.run([{"image": images, "label": torch.zeros(4)}] * 3, max_epochs=1)
    assert all(o["adv_loss"] == 0 and o["disc_loss"] == 0 for o in outputs), "no adversarial loss before its epoch"
    assert all(torch.equal(a, b) for a, b in zip(disc_before, disc.parameters()))
    assert outputs[-1]["recon_loss"] < outputs[0]["recon_loss"]
    engine.run([{"image": images, "label": torch.zeros(4)}] * 3, max_epochs=2)
    assert all(o["adv_loss"] > 0 and o["disc_loss"] > 0 for o in outputs[3:])
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, disc.parameters()))
    assert output_scalars(["loss", "kl_loss"])(outputs[-1]).keys() == {"train/loss", "train/kl_loss"}
    with pytest.raises(ValueError, match="needs a discriminator"):
        AutoencoderKLUpdate(adversarial=True)


def test_unit_range_pair_maps_model_space_to_zero_one() -> None:
    out = [{"pred": torch.full((1, 2, 2), -3.0), "label": torch.zeros(1, 2, 2)}]
    preds, targets = unit_range_pair(out)
    assert torch.equal(preds[0], torch.zeros(1, 2, 2)) and torch.equal(targets[0], torch.full((1, 2, 2), 0.5))
