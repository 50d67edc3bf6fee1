"""DPM-Solver++ (2M) as a MONAI scheduler: known answers, accuracy against DDIM, and the inferer/bundle paths."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, Scheduler

from medicraft_monai.inferers import ClassConditionedDiffusionInferer, seeded_noise
from medicraft_monai.networks import randomise_zero_weights
from medicraft_monai.schedulers import TIMESTEP_SPACINGS, DPMSolverMultistepScheduler, make_scheduler, spaced_timesteps

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "oct_ddpm"


def _alpha_sigma(sched: Scheduler, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = sched.alphas_cumprod.double()[int(t)]
    return a.sqrt(), (1 - a).sqrt()


def _perfect_output(sched: Scheduler, x: torch.Tensor, t: int, x0: torch.Tensor, kind: str) -> torch.Tensor:
    """What a perfect model of the single data point ``x0`` outputs at ``x_t``."""
    alpha, sigma = _alpha_sigma(sched, t)
    eps = (x - alpha * x0) / sigma
    return {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0}[kind]


def _gaussian_run(sched: Scheduler, steps: int, mu: float, sd: float, seed: int = 1):
    """Sample N(mu, sd^2) (every pixel independent) with its exact noise predictor; also the exact ODE solution."""
    sched.set_timesteps(steps)
    x_T = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x_T.clone()
    for t in sched.timesteps:
        alpha, sigma = _alpha_sigma(sched, t)
        eps = sigma * (x - alpha * mu) / (alpha**2 * sd**2 + sigma**2)  # E[eps | x_t] for Gaussian data
        x = sched.step(eps, int(t), x)[0]
    alpha, sigma = _alpha_sigma(sched, sched.timesteps[0])
    exact = mu + sd * (x_T - alpha * mu) / torch.sqrt(alpha**2 * sd**2 + sigma**2)  # the flow map of the ODE
    return x, exact


# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [1, 7, 50, 1000])
def test_spaced_timesteps_are_decreasing_unique_and_in_range(spacing: str, n: int) -> None:
    steps = spaced_timesteps(n, 1000, spacing)
    assert steps.dtype == np.int64 and len(steps) == n
    assert steps.min() >= 0 and steps.max() <= 999
    assert np.all(np.diff(steps) < 0)
    if spacing != "leading":
        assert steps[0] == 999  # starts from pure noise
    if spacing == "linspace":
        ddim = DDIMScheduler(1000)
        ddim.set_timesteps(n)
        assert np.array_equal(steps, ddim.timesteps.numpy())  # the same grid as MONAI's DDIM


def test_spacing_and_settings_errors() -> None:
    with pytest.raises(ValueError, match="unknown timestep spacing"):
        spaced_timesteps(10, 1000, "quadratic")
    with pytest.raises(ValueError, match=r"\[1, 1000\]"):
        spaced_timesteps(0, 1000)
    with pytest.raises(ValueError, match="unknown timestep spacing"):
        DPMSolverMultistepScheduler(timestep_spacing="quadratic")
    with pytest.raises(ValueError, match="solver_order"):
        DPMSolverMultistepScheduler(solver_order=3)
    with pytest.raises(ValueError, match="prediction_type"):
        DPMSolverMultistepScheduler(prediction_type="score")
    sched = DPMSolverMultistepScheduler()
    with pytest.raises(ValueError, match=r"\[1, 1000\]"):
        sched.set_timesteps(1001)
    sched.set_timesteps(5)
    with pytest.raises(ValueError, match="not one of this run's timesteps"):
        sched.step(torch.zeros(1, 1, 4, 4), 998, torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("n", [2, 20, 50, 1000])
def test_noise_level_spacings_keep_the_asked_step_count(karras: bool, n: int) -> None:
    sched = DPMSolverMultistepScheduler(use_karras_sigmas=karras)
    sched.set_timesteps(n)
    steps = sched.timesteps.numpy()
    assert len(steps) == n == sched.num_inference_steps
    assert steps[0] == 999 and steps[-1] == 0 and np.all(np.diff(steps) < 0)
    if n == 20:  # denser at low noise than evenly spaced timesteps
        assert np.sum(steps < 100) >= 5  # evenly spaced: 2


# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("options", [{}, {"timestep_spacing": "trailing"}, {"use_karras_sigmas": True}])
@pytest.mark.parametrize("n", [1, 3, 6])
def test_perfect_predictor_lands_on_the_data_point(kind: str, options: dict, n: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 1, 8, 16, generator=gen, dtype=torch.float64) * 1.6 - 0.8
    sched = DPMSolverMultistepScheduler(prediction_type=kind, **options)
    sched.set_timesteps(n)
    x = torch.randn(2, 1, 8, 16, generator=gen, dtype=torch.float64)
    for t in sched.timesteps:
        x, pred = sched.step(_perfect_output(sched, x, int(t), x0, kind), t, x)
        torch.testing.assert_close(pred, x0)  # every step's clean-image prediction is exact
    torch.testing.assert_close(x, x0, atol=1e-9, rtol=0)


@pytest.mark.parametrize(("mu", "sd"), [(0.3, 0.25), (0.0, 0.5)])
@pytest.mark.parametrize("steps", [10, 15, 20])
def test_gaussian_data_moments_and_accuracy_beat_ddim(mu: float, sd: float, steps: int) -> None:
    x, exact = _gaussian_run(DPMSolverMultistepScheduler(clip_sample=False), steps, mu, sd)
    assert abs(float(x.mean()) - mu) < 0.01
    assert abs(float(x.std()) - sd) < 0.04 * sd
    err = float((x - exact).abs().mean())
    y, exact_ddim = _gaussian_run(make_scheduler("ddim", 1000, clip_sample=False), steps, mu, sd)
    err_ddim = float((y - exact_ddim).abs().mean())
    assert abs(float(y.std()) - sd) > abs(float(x.std()) - sd)  # DDIM misses the spread more at equal steps
    assert err < 0.5 * err_ddim, (err, err_ddim)


def test_second_order_beats_first_order_and_converges() -> None:
    errs = {}
    for order in (1, 2):
        for n in (10, 40):
            x, exact = _gaussian_run(DPMSolverMultistepScheduler(solver_order=order, clip_sample=False), n, 0.0, 0.5)
            errs[order, n] = float((x - exact).abs().mean())
    assert errs[2, 10] < errs[1, 10] and errs[2, 40] < errs[1, 40]
    assert errs[2, 40] < errs[2, 10] / 4  # 4x the steps: at least 4x more accurate (second order: ~16x)


def test_state_resets_between_runs() -> None:
    sched = DPMSolverMultistepScheduler(clip_sample=False)
    first, _ = _gaussian_run(sched, 10, 0.0, 0.5)
    again, _ = _gaussian_run(sched, 10, 0.0, 0.5)
    assert torch.equal(first, again)


def test_make_scheduler_names_and_rflow_reason() -> None:
    sched = make_scheduler("DPMPP_2M", 100, "scaled_linear_beta", timestep_spacing="trailing")
    assert isinstance(sched, DPMSolverMultistepScheduler) and sched.num_train_timesteps == 100
    assert sched.timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="velocity"):
        make_scheduler("rflow")
    with pytest.raises(ValueError, match="dpmpp_2m"):
        make_scheduler("euler")


# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_unet() -> DiffusionModelUNet:
    torch.manual_seed(0)
    net = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(8, 16),
        attention_levels=(False, True),
        num_res_blocks=1,
        num_head_channels=8,
        norm_num_groups=8,
        num_class_embeds=4,
    )
    return randomise_zero_weights(net, std=0.2).eval()


@pytest.fixture(scope="module")
def tiny_unet64(tiny_unet) -> DiffusionModelUNet:
    """The same network in float64: tests about the algorithm compare in float64, where the rounding differences of
    the CPU kernels chosen for one batch composition or another (oneDNN picks other kernels on AMX, AVX512-BF16 or
    AVX2 machines) are ~1e-16 relative instead of ~1e-7, so an exact algorithm matches to 1e-9 on any x86 CPU."""
    return copy.deepcopy(tiny_unet).double()


def _sample(net, seeds, labels, w=1.0, null_class=3, steps=6, sched=None, dtype=torch.float32, **inferer_kw):
    inferer = ClassConditionedDiffusionInferer(make_scheduler("ddpm", 1000), null_class=null_class, **inferer_kw)
    noise, gens = seeded_noise(seeds, (1, 16, 32), dtype=dtype)
    return inferer.sample(
        noise,
        net,
        labels,
        scheduler=sched or make_scheduler("dpmpp_2m", 1000),
        num_inference_steps=steps,
        guidance_scale=w,
        generators=gens,
        verbose=False,
    )


def test_inferer_drives_the_solver_deterministically(tiny_unet, tiny_unet64) -> None:
    a = _sample(tiny_unet, [3, 4, 5], [0, 1, 2])
    b = _sample(tiny_unet, [3, 4, 5], [0, 1, 2])
    assert torch.equal(a, b) and a.shape == (3, 1, 16, 32) and torch.isfinite(a).all()
    assert not torch.allclose(a[0], a[1])
    # an image depends on its seed, not on its batch: checked in float64, where batched and single convolutions
    # differ only by float64 rounding whatever kernels this CPU picks
    batch64 = _sample(tiny_unet64, [3, 4, 5], [0, 1, 2], dtype=torch.float64)
    alone = _sample(tiny_unet64, [4], [1], dtype=torch.float64)
    assert batch64.dtype == torch.float64
    torch.testing.assert_close(alone[0], batch64[1], atol=1e-9, rtol=0)
    # in float32 the same holds to float32 rounding: the batched float32 run stays near the float64 one
    torch.testing.assert_close(a.double(), batch64, atol=1e-3, rtol=0)
    assert float(a.abs().max()) <= 1.0 + 1e-6  # the last step returns the clipped clean-image prediction


def test_default_steps_come_from_the_scheduler(tiny_unet) -> None:
    sched = make_scheduler("dpmpp_2m", 1000)
    _sample(tiny_unet, [0], [0], steps=None, sched=sched)
    assert sched.num_inference_steps == DPMSolverMultistepScheduler.default_inference_steps


def test_guidance_one_is_the_unguided_path_and_guidance_matches_by_hand(tiny_unet, tiny_unet64) -> None:
    guided_off = _sample(tiny_unet, [1, 2], [0, 2], w=1.0, null_class=3)
    no_null = _sample(tiny_unet, [1, 2], [0, 2], w=1.0, null_class=None)
    assert torch.equal(guided_off, no_null)  # w = 1 takes the very same code path: one pass, no null class
    w = 3.0
    out = _sample(tiny_unet, [1, 2], [0, 2], w=w)
    assert not torch.allclose(out, guided_off, atol=1e-3)
    # the same run by hand: out = out_null + w (out_class - out_null), stepped by the solver. The inferer batches the
    # conditional and null passes, the hand run makes two passes: the kernels differ, so compare in float64.
    out64 = _sample(tiny_unet64, [1, 2], [0, 2], w=w, dtype=torch.float64)
    sched = make_scheduler("dpmpp_2m", 1000)
    sched.set_timesteps(6)
    x, _ = seeded_noise([1, 2], (1, 16, 32), dtype=torch.float64)
    labels = torch.tensor([0, 2])
    with torch.inference_mode():
        for t in sched.timesteps:
            ts = torch.full((2,), int(t), dtype=torch.long)
            cond = tiny_unet64(x=x, timesteps=ts, class_labels=labels)
            uncond = tiny_unet64(x=x, timesteps=ts, class_labels=torch.full_like(labels, 3))
            x = sched.step(uncond + w * (cond - uncond), t, x)[0]
    torch.testing.assert_close(out64, x, atol=1e-9, rtol=0)
    # and the float32 run is that float64 run up to float32 rounding (amplified by w and the steps)
    torch.testing.assert_close(out.double(), out64, atol=1e-2, rtol=0)


def test_bf16_channels_last_stays_close_to_fp32(tiny_unet) -> None:
    fp32 = _sample(tiny_unet, [0, 1], [0, 1])
    bf16 = _sample(tiny_unet, [0, 1], [0, 1], amp_dtype="bfloat16", channels_last=True)
    assert bf16.dtype == torch.float32
    mean_abs = float((fp32 - bf16).abs().mean())
    assert 0 < mean_abs < 0.05


def test_bundle_config_selects_the_solver(tmp_path: Path, tiny_unet) -> None:
    from medicraft_monai.synthesis.generator import DiffusionGenerator

    ckpt = tmp_path / "model.pt"
    torch.save(tiny_unet.state_dict(), ckpt)
    overrides = {
        "class_names": ["healthy", "benign", "melanoma"],  # the tiny UNet's 3 classes + null
        "image_size": [16, 32],
        "channels": [8, 16],
        "attention_levels": [False, True],
        "num_res_blocks": 1,
        "num_head_channels": 8,
        "norm_num_groups": 8,
        "use_flash_attention": False,
        "sampler": "dpmpp_2m",
        "sampler_options": {"timestep_spacing": "trailing", "clip_sample": True},
        "num_inference_steps": 4,
    }
    gen = DiffusionGenerator.from_bundle(BUNDLE, ckpt_path=ckpt, device="cpu", overrides=overrides)
    assert isinstance(gen.scheduler, DPMSolverMultistepScheduler) and gen.scheduler.timestep_spacing == "trailing"
    assert gen.inferer.compile_model is False
    images = gen.generate(["healthy", "melanoma"], [0, 1])
    assert images.shape == (2, 1, 16, 32) and 0 <= images.min() and images.max() <= 1
    assert gen.scheduler.timesteps.tolist() == spaced_timesteps(4, 1000, "trailing").tolist()
    prov = gen.provenance("healthy", 0)
    assert (prov["sampler"], prov["steps"]) == ("dpmpp_2m", 4)
    # the multiply config forwards its own sampler key to the generator
    multiply_cfg = json.loads((BUNDLE / "configs" / "multiply.json").read_text())
    assert multiply_cfg["sampler"] is None and "'sampler': @sampler" in multiply_cfg["multiply"]


def test_spacings_constant_lists_every_option() -> None:
    for spacing in TIMESTEP_SPACINGS:
        sched = DPMSolverMultistepScheduler(timestep_spacing=spacing)
        sched.set_timesteps(8)
        assert len(sched.timesteps) == 8
