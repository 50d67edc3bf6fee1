"""Fast synthesis: seconds per image against the medicraft baseline, FLOP efficiency, and training throughput.

Everything is measured in one run on one machine, so the ratios hold even on a shared, noisy machine:

1. **Matmul peak**: a large ``torch.matmul`` in fp32 and in bf16, best of a few repeats (FLOP/s = 2 n^3 / time).
2. **UNet FLOPs** of one sampling step (one forward pass) per image, counted with
   ``torch.utils.flop_counter.FlopCounterMode``.
3. **The main table**, at 256 x 512 by default, with a UNet of medicraft's size (MONAI ``DiffusionModelUNet``,
   channels 64-128-256-256-256, attention at the two lowest levels, 2 residual blocks: 36.2 M parameters against
   medicraft's 35.7 M; random weights, the speed does not depend on them):

   - *medicraft-style*: 1000-step DDPM in fp32 eager, batch 1. A few steps are timed and the time is multiplied by
     1000 (every DDPM step is one UNet pass of the same shape plus an elementwise update); the table says so.
   - *MONAI DDIM*: plain ``monai.inferers.DiffusionInferer`` with a ``DDIMScheduler``, 50 steps, fp32 eager, the same
     UNet without class embeddings (MONAI's inferer passes no class labels); timed over a few steps, extrapolated.
   - *ours*: ``ClassConditionedDiffusionInferer`` + DPM-Solver++ (2M) at ``--steps`` steps, bf16 autocast +
     channels_last + ``torch.inference_mode``, at the batch size with the best throughput; a complete sampling run.
   - *ours, distilled*: the same fast step on the distilled student's grid (``sampler: distilled``), at
     ``--distilled-steps`` steps (by default the shipped student's, 2); and again with the UNet's attention through PyTorch's
     fused ``scaled_dot_product_attention`` and its weights cast to bf16 once (the two changes
     ``unet_profile.py`` measures; ``quality_vs_steps.py`` checks them on the trained weights).
   - with ``--compile``: the fused bf16 student with ``torch.compile`` (a first complete run pays the compile, the
     second is timed; the row says after how many images the compile pays back), and ours with ``torch.compile``
     (compile time reported apart; steps timed after it).

   Columns: seconds per step and per image, images per second, the speed-up against the medicraft-style row and
   against the 4,260 s per image medicraft needed on these 2-core machines, the UNet GFLOP per image, the achieved
   GFLOP/s and that as a fraction of the matmul peak of the row's own precision (fp32 rows: the fp32 peak; bf16
   rows: the bf16 peak) and of the bf16 peak (the fastest matmul on CPUs with AMX or AVX512-BF16). Both peaks are
   timed in the same run as the rows, so on a busy machine a fraction can exceed 1: read it beside a quiet rerun.
4. **Batch size**: images per second of a bf16 + channels_last sampling step against the batch size.
5. **bf16 against fp32**: the first image of ours sampled again in fp32 from the same seed: mean and max absolute
   difference and PSNR of the [0, 1] images (random weights amplify rounding: an upper bound).
6. **Training**: samples per second of training steps (bf16 autocast + channels_last on a CPU with AMX, as the
   bundle trains) fed from a MONAI ``CacheDataset`` of phantom B-scans, beside the rate of the loader alone, and a
   step's achieved GFLOP/s (forward + backward FLOPs counted with ``FlopCounterMode``, over the step's compute time)
   as a fraction of the same-run matmul peaks: the bundle's step, then with fused attention.

``--device cuda`` runs the same on a GPU (the ``reduce-overhead`` compile mode uses CUDA graphs). ``--quick`` is a
CI-size smoke run (a tiny UNet at 32 x 64). Nothing here asserts a time.

Usage::

    python benchmarks/fast_synthesis.py [--height 256 --width 512] [--steps 20] [--batches 1 2 4] [--compile]
        [--device cpu|cuda] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: medicraft's seconds per image (1000-step DDPM, 35.7 M parameter UNet, 256 x 512) on the project's 2-core machines
MEDICRAFT_SECONDS_PER_IMAGE = 4260.0

#: a MONAI DiffusionModelUNet of medicraft's size (36.2 M parameters with 4 class embeddings)
MEDICRAFT_SIZE_NET: dict[str, Any] = {
    "channels": (64, 128, 256, 256, 256),
    "attention_levels": (False, False, False, True, True),
    "num_res_blocks": 2,
    "num_head_channels": 32,
    "norm_num_groups": 32,
}
QUICK_NET: dict[str, Any] = {
    "channels": (8, 16),
    "attention_levels": (False, True),
    "num_res_blocks": 1,
    "num_head_channels": 8,
    "norm_num_groups": 8,
}
NUM_CLASSES = 3


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def build_unet(net: dict[str, Any], class_embeds: bool = True, seed: int = 0):
    """The UNet (eval mode, random weights with the zero-initialised output layers redrawn)."""
    import torch
    from monai.networks.nets import DiffusionModelUNet

    from medicraft_monai.networks import randomise_zero_weights

    torch.manual_seed(seed)
    unet = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        num_class_embeds=NUM_CLASSES + 1 if class_embeds else None,
        **net,
    )
    return randomise_zero_weights(unet, seed=seed).eval()


def sync(device) -> None:
    """Wait for the device's queued work (timings on a GPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat: int = 1) -> float:
    """Best wall seconds of ``fn()`` over ``repeat`` calls."""
    best = math.inf
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(dtype, device, n: int, repeat: int = 3) -> float:
    """Achieved FLOP/s of an n x n matrix product in ``dtype`` (best of ``repeat``, after a warm-up)."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with torch.inference_mode():
        torch.matmul(a, b)  # warm-up
        number = max(1, int(2e10 // (2 * n**3)))  # enough products for a measurable time
        seconds = timed(lambda: [torch.matmul(a, b) for _ in range(number)], device, repeat)
    return 2 * n**3 * number / seconds


def unet_flops(unet, shape, device) -> int:
    """FLOPs of one forward pass of the UNet for one image of ``shape`` (C, H, W)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, *shape, device=device)
    kwargs = {"x": x, "timesteps": torch.tensor([500], device=device)}
    if getattr(unet, "num_class_embeds", None):
        kwargs["class_labels"] = torch.tensor([0], device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        unet(**kwargs)
    return int(counter.get_total_flops())


def psnr(a, b) -> float:
    """PSNR (dB) of two images in [0, 1]."""
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _inferer(amp: bool, channels_last: bool, compile_mode: str | None = None, compile_model: bool = False):
    from medicraft_monai.inferers import ClassConditionedDiffusionInferer
    from medicraft_monai.schedulers import make_scheduler

    return ClassConditionedDiffusionInferer(
        make_scheduler("ddpm", 1000),
        null_class=NUM_CLASSES,
        amp_dtype="bfloat16" if amp else None,
        channels_last=channels_last,
        compile_model=compile_model,
        compile_mode=compile_mode,
    )


def step_seconds(unet, inferer, sampler: str, batch: int, shape, steps: int, device) -> float:
    """Seconds per sampling step (one UNet pass + the solver's update) over ``steps`` steps after a warm-up step."""
    import torch

    from medicraft_monai.schedulers import make_scheduler

    sched = make_scheduler(sampler, 1000)
    sched.set_timesteps(max(steps + 1, 2), device=device)
    ts = [int(t) for t in sched.timesteps]
    x = torch.randn(batch, *shape, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    with torch.inference_mode():
        model_output = inferer.predict(unet, x, ts[0], labels, 1.0)  # warm-up (and compilation, if any)
        x = sched.step(model_output, ts[0], x)[0]

        def run():
            nonlocal x
            for t in ts[1 : steps + 1]:
                model_output = inferer.predict(unet, x, t, labels, 1.0)
                x = sched.step(model_output, t, x)[0]

        return timed(run, device) / steps


def monai_ddim_step_seconds(unet, batch: int, shape, steps: int, device) -> float:
    """Seconds per step of plain MONAI ``DiffusionInferer.sample`` with a ``DDIMScheduler`` (fp32 eager)."""
    import torch
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000)
    inferer = DiffusionInferer(sched)
    noise = torch.randn(batch, *shape, device=device)
    # every DDIM step costs the same whatever the step count: time a short run, one step of which warms up
    sched.set_timesteps(1)
    inferer.sample(input_noise=noise, diffusion_model=unet, scheduler=sched, verbose=False)
    sched.set_timesteps(steps)
    return (
        timed(lambda: inferer.sample(input_noise=noise, diffusion_model=unet, scheduler=sched, verbose=False), device)
        / steps
    )


# ---------------------------------------------------------------------------------------------------------------------
# parts
# ---------------------------------------------------------------------------------------------------------------------
def peaks(args, device) -> dict[str, float]:
    """The fp32 and bf16 matmul peaks (FLOP/s) of this run, the yardstick of every efficiency figure."""
    import torch

    return {
        "fp32": matmul_peak(torch.float32, device, args.matmul_size),
        "bf16": matmul_peak(torch.bfloat16, device, args.matmul_size),
    }


def sampling_part(args, device, peak: dict[str, float]) -> dict[str, Any]:
    import torch

    from medicraft_monai.inferers import seeded_noise
    from medicraft_monai.schedulers import make_scheduler

    net_cfg = QUICK_NET if args.quick else MEDICRAFT_SIZE_NET
    shape = (1, args.height, args.width)
    unet = build_unet(net_cfg).to(device)
    n_params = sum(p.numel() for p in unet.parameters())
    flops = unet_flops(unet, shape, device)
    print(
        f"\nUNet {n_params / 1e6:.1f} M parameters, images {args.height}x{args.width}, device {device}, "
        f"{torch.get_num_threads()} threads; {flops / 1e9:.1f} GFLOP per image per step (FlopCounterMode); "
        f"matmul peak {args.matmul_size}^2: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s"
    )

    rows: list[dict[str, Any]] = []

    def add(name, sampler, steps, precision, batch, s_step, how):
        s_image = s_step * steps / batch
        achieved = flops * batch / s_step
        rows.append(
            {
                "name": name,
                "sampler": sampler,
                "steps": steps,
                "precision": precision,
                "batch": batch,
                "s_per_step": s_step,
                "s_per_image": s_image,
                "images_per_s": 1.0 / s_image,
                "gflop_per_image": flops * steps / 1e9,
                "achieved_gflops": achieved / 1e9,
                "peak_dtype": "bf16" if precision.startswith("bf16") else "fp32",
                "frac_of_peak": achieved / peak["bf16" if precision.startswith("bf16") else "fp32"],
                "frac_bf16_peak": achieved / peak["bf16"],
                "how": how,
            }
        )

    # 1. medicraft-style: DDPM-1000, fp32 eager, batch 1, extrapolated
    t = step_seconds(unet, _inferer(False, False), "ddpm", 1, shape, args.measure_steps, device)
    add("medicraft-style", "DDPM", 1000, "fp32 eager", 1, t, f"{args.measure_steps} steps timed, x1000")
    # 2. plain MONAI DiffusionInferer + DDIM-50, fp32 eager, extrapolated
    plain = build_unet(net_cfg, class_embeds=False).to(device)
    t = monai_ddim_step_seconds(plain, 1, shape, args.measure_steps, device)
    add("MONAI DiffusionInferer", "DDIM", 50, "fp32 eager", 1, t, f"{args.measure_steps} steps timed, x50")
    del plain

    # batch sweep of our fast step (bf16 + channels_last)
    amp = device.type == "cuda" or args.cpu_bf16
    fast_precision = "bf16 + channels_last" if amp else "fp32 + channels_last"
    unet = unet.to(memory_format=torch.channels_last)
    fast = _inferer(amp, True)
    sweep = {}
    for b in args.batches:
        sweep[b] = step_seconds(unet, fast, "dpmpp_2m", b, shape, args.measure_steps, device)
    best = max(sweep, key=lambda b: b / sweep[b])
    print(f"\nbatch size sweep ({fast_precision}, {args.measure_steps} steps each):")
    print(f"{'batch':>6} {'s/step':>8} {'images/s per step':>18}")
    for b, s in sweep.items():
        print(f"{b:>6} {s:8.3f} {b / s:18.2f}" + ("   <- chosen" if b == best else ""))

    # 3. ours: a complete DPM-Solver++ run at the chosen batch
    seeds = list(range(best))
    noise, gens = seeded_noise(seeds, shape, device=device)
    labels = [s % NUM_CLASSES for s in seeds]
    sched = make_scheduler("dpmpp_2m", 1000)
    ours_img = None

    def run_ours():
        nonlocal ours_img
        ours_img = fast.sample(
            noise, unet, labels, scheduler=sched, num_inference_steps=args.steps, generators=gens, verbose=False
        )

    seconds = timed(run_ours, device)
    add("ours", "DPM-Solver++ 2M", args.steps, fast_precision, best, seconds / args.steps, "complete run")

    # 4. the distilled student: the same fast step on the student's grid, --distilled-steps passes (random weights:
    # the time does not depend on them; the student's quality is measured by quality_vs_steps.py on the shipped one)
    distilled = make_scheduler("distilled", 1000)
    distilled_steps = args.distilled_steps or distilled.default_inference_steps

    def run_distilled(net, inferer):
        return lambda: inferer.sample(
            noise,
            net,
            labels,
            scheduler=distilled,
            num_inference_steps=distilled_steps,
            generators=gens,
            verbose=False,
        )

    def add_distilled(name, net):
        seconds = timed(run_distilled(net, fast), device)
        add(name, "distilled", distilled_steps, fast_precision, best, seconds / distilled_steps, "complete run")

    def fused_student():
        """The two changes unet_profile.py measures: fused attention, bf16 weights cast once."""
        net = build_unet({**net_cfg, "use_flash_attention": True}).to(device)
        net.load_state_dict(unet.state_dict())
        return net.to(dtype=torch.bfloat16, memory_format=torch.channels_last)

    add_distilled("ours, distilled", unet)
    if amp:
        add_distilled("ours, distilled + fused attention + bf16 weights", fused_student())

    compile_note = None
    if args.compile and amp:
        # the same student compiled: the first run pays the compile, the second is the steady state of a long run
        net, compiled = fused_student(), _inferer(amp, True, compile_mode=args.compile_mode, compile_model=True)
        first = timed(run_distilled(net, compiled), device)
        seconds = timed(run_distilled(net, compiled), device)
        saved = rows[-1]["s_per_image"] - seconds / best  # against the same student eager, the row above
        compile_s = max(first - seconds, 0.0)
        payback_images = compile_s / saved if saved > 0 else None
        payback = "never pays back" if payback_images is None else f"pays back after {payback_images:.0f} images"
        add(
            "ours, distilled + fused attention + bf16 weights + torch.compile",
            "distilled",
            distilled_steps,
            fast_precision,
            best,
            seconds / distilled_steps,
            f"complete run after a {compile_s:.0f} s compile ({payback})",
        )
        rows[-1]["compile_seconds"] = compile_s
        rows[-1]["payback_images"] = payback_images
        del net, compiled
    if args.compile:
        compiled = _inferer(amp, True, compile_mode=args.compile_mode, compile_model=True)
        start = time.perf_counter()
        step_seconds(unet, compiled, "dpmpp_2m", best, shape, 1, device)  # compiles
        compile_s = time.perf_counter() - start
        t = step_seconds(unet, compiled, "dpmpp_2m", best, shape, args.measure_steps, device)
        add(
            "ours + torch.compile",
            "DPM-Solver++ 2M",
            args.steps,
            fast_precision,
            best,
            t,
            f"{args.measure_steps} steps timed after a {compile_s:.0f} s compile",
        )
        compile_note = compile_s

    base = rows[0]["s_per_image"]
    for r in rows:
        r["speedup_vs_baseline"] = base / r["s_per_image"]
        r["speedup_vs_medicraft_4260s"] = MEDICRAFT_SECONDS_PER_IMAGE / r["s_per_image"]
    print_table(rows)

    compare = None
    if not args.skip_compare:
        ref = _inferer(False, False).sample(
            noise[:1].float().contiguous(),
            unet.to(memory_format=torch.contiguous_format),
            labels[:1],
            scheduler=make_scheduler("dpmpp_2m", 1000),
            num_inference_steps=args.steps,
            verbose=False,
        )
        a = ((ref.clamp(-1, 1) + 1) / 2).cpu()
        b = ((ours_img[:1].clamp(-1, 1) + 1) / 2).cpu()
        diff = (a - b).abs()
        compare = {"mean_abs": float(diff.mean()), "max_abs": float(diff.max()), "psnr_db": psnr(a, b)}
        print(
            f"\n{fast_precision} vs fp32, DPM-Solver++ {args.steps} steps, same seed (random weights, an upper "
            f"bound): mean |diff| {compare['mean_abs']:.4f}, max |diff| {compare['max_abs']:.4f}, "
            f"PSNR {compare['psnr_db']:.1f} dB"
        )
    return {
        "params": n_params,
        "image_size": [args.height, args.width],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "unet_gflop_per_image_step": flops / 1e9,
        "matmul_peak_gflops": {k: v / 1e9 for k, v in peak.items()},
        "batch_sweep": {str(b): {"s_per_step": s, "images_per_s_per_step": b / s} for b, s in sweep.items()},
        "chosen_batch": best,
        "table": rows,
        "bf16_vs_fp32": compare,
        "compile_seconds": compile_note,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    """The main table (also the Markdown table of docs/benchmarks.md)."""
    head = (
        "| configuration | sampler | steps | precision | batch | s / step | s / image | images / s | speed-up | "
        "x vs 4260 s | GFLOP / image | GFLOP/s | of own-precision peak | of bf16 peak | how |"
    )
    print("\n" + head)
    print("|" + "|".join([" --- "] * 4 + [" ---: "] * 10 + [" --- "]) + "|")
    for r in rows:
        print(
            f"| {r['name']} | {r['sampler']} | {r['steps']} | {r['precision']} | {r['batch']} | "
            f"{r['s_per_step']:.3f} | {r['s_per_image']:.2f} | {r['images_per_s']:.4f} | "
            f"{r['speedup_vs_baseline']:.1f}x | {r['speedup_vs_medicraft_4260s']:.1f}x | {r['gflop_per_image']:.0f} | "
            f"{r['achieved_gflops']:.1f} | {r['frac_of_peak']:.2f} ({r['peak_dtype']}) | {r['frac_bf16_peak']:.2f} | "
            f"{r['how']} |"
        )


def training_part(args, device, peak: dict[str, float]) -> dict[str, Any]:
    """Samples per second of training from a CacheDataset, beside the loader's own rate, and a training step's
    achieved FLOP/s as a fraction of the matmul peaks (the bundle's step, then with fused attention)."""
    import numpy as np
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import Compose, RandFlipd, Resized, ScaleIntensityRanged
    from torch.utils.flop_counter import FlopCounterMode

    from medicraft_monai.data.phantom import OCTPhantom, PhantomConfig
    from medicraft_monai.inferers import ClassConditionedDiffusionInferer, autocast_context
    from medicraft_monai.schedulers import make_scheduler

    size = (args.height, args.width)
    phantom = OCTPhantom(PhantomConfig(height=size[0], width=size[1], n_planes=args.train_planes))
    items = []
    for i, name in enumerate(("healthy", "benign", "melanoma")):
        exam = phantom.generate_exam(seed=i, class_name=name)
        items += [{"image": img[None].astype(np.float32), "label": i} for img in exam.images]
    transforms = Compose(
        [
            ScaleIntensityRanged("image", a_min=0.0, a_max=1.0, b_min=-1.0, b_max=1.0),
            Resized("image", spatial_size=size),
            RandFlipd("image", prob=0.5, spatial_axis=1),  # random: after the cache
        ]
    )
    ds = CacheDataset(items, transforms, progress=False)
    loader = DataLoader(ds, batch_size=args.train_batch, shuffle=True, num_workers=0, drop_last=True)

    # the loader alone
    n_loaded, start = 0, time.perf_counter()
    while n_loaded < args.loader_samples:
        for batch in loader:
            n_loaded += batch["image"].shape[0]
    loader_rate = n_loaded / (time.perf_counter() - start)

    amp = device.type == "cuda" or args.cpu_bf16
    net_cfg = QUICK_NET if args.quick else MEDICRAFT_SIZE_NET
    inferer = ClassConditionedDiffusionInferer(make_scheduler("ddpm", 1000), null_class=NUM_CLASSES)
    autocast = autocast_context(device, torch.bfloat16 if amp else None)
    precision = "bf16 autocast + channels_last" if amp else "fp32"

    def measure(name: str, fused_attention: bool, step_flops: int | None = None) -> dict[str, Any]:
        unet = build_unet({**net_cfg, "use_flash_attention": fused_attention}).train().to(device)
        if amp:
            unet = unet.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(unet.parameters(), lr=1e-4)

        def train_step(batch):
            x = batch["image"].to(device)
            if amp:
                x = x.contiguous(memory_format=torch.channels_last)
            labels = torch.as_tensor(batch["label"], device=device)
            noise = torch.randn_like(x)
            t = torch.randint(0, 1000, (x.shape[0],), device=device)
            opt.zero_grad(set_to_none=True)
            with autocast:
                pred = inferer(x, unet, noise, t, class_labels=labels)
                loss = torch.nn.functional.mse_loss(pred.float(), noise)
            loss.backward()
            opt.step()

        it = iter(loader)
        counter = FlopCounterMode(display=False)
        with counter:  # the warm-up step, counted: forward + backward (Adam's elementwise update is not a matmul)
            train_step(next(it))
        # the FLOP counter has no formula for the CPU's fused attention kernel: a fused step does the same
        # arithmetic as the unfused one, so it takes the unfused count
        step_flops = int(counter.get_total_flops()) if step_flops is None else step_flops
        waiting = computing = 0.0
        done = 0
        for _ in range(args.train_iters):
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            t1 = time.perf_counter()
            train_step(batch)
            sync(device)
            t2 = time.perf_counter()
            waiting += t1 - t0
            computing += t2 - t1
            done += batch["image"].shape[0]
        achieved = step_flops * args.train_iters / computing
        own = "bf16" if amp else "fp32"
        return {
            "name": name,
            "train_samples_per_s": done / (waiting + computing),
            "loader_share_of_train_time": waiting / (waiting + computing),
            "flop_per_step": step_flops,
            "gflop_per_step": step_flops / 1e9,
            "achieved_gflops": achieved / 1e9,
            "frac_of_peak": achieved / peak[own],
            "peak_dtype": own,
            "frac_bf16_peak": achieved / peak["bf16"],
        }

    rows = [measure("the bundle's step", False)]
    rows.append(measure("+ fused attention", True, rows[0]["flop_per_step"]))
    result = {
        "image_size": list(size),
        "batch": args.train_batch,
        "precision": precision,
        "loader_samples_per_s": loader_rate,
        "train_samples_per_s": rows[0]["train_samples_per_s"],
        "loader_share_of_train_time": rows[0]["loader_share_of_train_time"],
        "cached_items": len(ds),
        "rows": rows,
    }
    print(
        f"\ntraining ({precision}, batch {args.train_batch}, {args.height}x{args.width}, "
        f"{args.train_iters} iterations, CacheDataset of {len(ds)} phantom B-scans, Adam):"
    )
    print("| stage | samples / s | GFLOP / step | GFLOP/s | of own-precision peak | of bf16 peak |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| loader alone (CacheDataset + random flip) | {loader_rate:.1f} | | | | |")
    for r in rows:
        print(
            f"| training step, {r['name']} (data + forward + backward + Adam) | {r['train_samples_per_s']:.2f} | "
            f"{r['gflop_per_step']:.2f} | {r['achieved_gflops']:.1f} | {r['frac_of_peak']:.2f} ({r['peak_dtype']}) | "
            f"{r['frac_bf16_peak']:.2f} |"
        )
    print(
        f"loader / training rate: {loader_rate / result['train_samples_per_s']:.0f}x; time waiting for data: "
        f"{100 * result['loader_share_of_train_time']:.2f}% of training"
    )
    return result


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=None, help="image height (default 256; 32 with --quick)")
    ap.add_argument("--width", type=int, default=None, help="image width (default 512; 64 with --quick)")
    ap.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps of ours (the bundle default)")
    ap.add_argument(
        "--distilled-steps",
        type=int,
        default=None,
        help="steps of the distilled student's rows (default: the shipped student's, DistilledScheduler's default)",
    )
    ap.add_argument("--measure-steps", type=int, default=None, help="steps timed for extrapolated rows (default 3)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes to sweep (default 1 2 4)")
    ap.add_argument("--matmul-size", type=int, default=None, help="matrix size of the peak (default 2048)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--compile", action="store_true", help="also time ours with torch.compile")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (reduce-overhead: CUDA graphs)")
    ap.add_argument("--no-cpu-bf16", dest="cpu_bf16", action="store_false", help="fp32 for ours on a CPU")
    ap.add_argument("--skip-compare", action="store_true", help="skip the bf16 vs fp32 image comparison")
    ap.add_argument("--skip-train", action="store_true", help="skip the training throughput part")
    ap.add_argument("--skip-sampling", action="store_true", help="only the training throughput part")
    ap.add_argument("--train-batch", type=int, default=None, help="training batch (default 2)")
    ap.add_argument("--train-iters", type=int, default=None, help="timed training iterations (default 3)")
    ap.add_argument("--train-planes", type=int, default=4, help="phantom B-scans per class in the cache")
    ap.add_argument("--loader-samples", type=int, default=200, help="samples drawn to time the loader alone")
    ap.add_argument("--quick", action="store_true", help="CI-size smoke run: tiny UNet at 32 x 64")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    quick = args.quick
    defaults = {
        "height": 32 if quick else 256,
        "width": 64 if quick else 512,
        "measure_steps": 2 if quick else 3,
        "batches": [1, 2] if quick else [1, 2, 4],
        "matmul_size": 256 if quick else 2048,
        "train_batch": 2,
        "train_iters": 2 if quick else 3,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if quick:
        args.steps = min(args.steps, 4)
        args.loader_samples = min(args.loader_samples, 20)
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    result: dict[str, Any] = {"quick": args.quick}
    peak = peaks(args, device)
    if not args.skip_sampling:
        result["sampling"] = sampling_part(args, device, peak)
    if not args.skip_train:
        result["training"] = training_part(args, device, peak)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
