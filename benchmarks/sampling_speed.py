"""Sampling throughput and multiplication memory of the oct_ddpm generator, as ratios measured in one run.

What it prints (one table per part):

1. Time per image and images per second at the bundle's default resolution and network (random weights: speed
   does not depend on them) for DDIM-50 and for a 1000-step DDPM of the same UNet (the way medicraft sampled), in
   fp32 and in bf16 autocast + channels_last. The UNet step time is measured over ``--measure-steps`` steps and
   multiplied by the sampler's step count (every step is one UNet pass of the same shape plus an elementwise
   update), so the 1000-step figure is not run in full unless ``--full`` is given.
2. How close bf16 + channels_last stays to fp32: the same seeds sampled with DDIM both ways, max and mean absolute
   difference and PSNR of the [0, 1] images.
3. Peak resident memory of ``multiply`` for 20 and for 200 images (each in a fresh process, tiny network), whose
   ratio should be close to 1: sampling streams batch by batch.

Usage: ``python benchmarks/sampling_speed.py [--batch 4] [--threads 2] [--measure-steps 3] [--full]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medicraft_monai.bundles import bundle_path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = bundle_path("oct_ddpm")


def build(overrides: dict | None = None):
    """The bundle's network, inferer and image size from configs/inference.json (with overrides)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / n) for n in ("common.json", "inference.json")])
    parser["bundle_root"] = str(BUNDLE)
    parser["device"] = "$torch.device('cpu')"
    for k, v in (overrides or {}).items():
        parser[k] = v
    return parser


def step_time(network, inferer, batch: int, shape, steps: int) -> float:
    """Seconds per sampling step (one guided UNet pass + scheduler update) for a batch, after one warm-up step."""
    import torch

    from medicraft_monai.schedulers import make_scheduler

    sched = make_scheduler("ddim", 1000)
    sched.set_timesteps(50)
    x = torch.randn(batch, *shape)
    labels = torch.zeros(batch, dtype=torch.long)
    with torch.inference_mode():
        inferer.predict(network, x, 999, labels, 1.0)  # warm-up
        start = time.perf_counter()
        for t in sched.timesteps[:steps]:
            model_output = inferer.predict(network, x, int(t), labels, 1.0)
            x = sched.step(model_output, int(t), x)[0]
        return (time.perf_counter() - start) / steps


def speed_part(args) -> dict:
    import torch

    from medicraft_monai.inferers import ClassConditionedDiffusionInferer, seeded_noise
    from medicraft_monai.networks import randomise_zero_weights
    from medicraft_monai.schedulers import make_scheduler

    parser = build()
    network = parser.get_parsed_content("network_def").eval()
    # MONAI zero-initialises the output layers: redraw them so the network's output (and the bf16 comparison)
    # is not trivially zero
    randomise_zero_weights(network)
    size = parser.get_parsed_content("image_size")
    shape = (1, *size)
    n_params = sum(p.numel() for p in network.parameters())
    rows = {}
    for name, amp, cl in (("fp32 eager", None, False), ("bf16 + channels_last", "bfloat16", True)):
        if cl:
            network = network.to(memory_format=torch.channels_last)
        inferer = ClassConditionedDiffusionInferer(
            make_scheduler("ddpm", 1000), null_class=3, amp_dtype=amp, channels_last=cl
        )
        rows[name] = step_time(network, inferer, args.batch, shape, args.measure_steps)
    base = rows["fp32 eager"]
    print(
        f"\nUNet {n_params / 1e6:.1f} M parameters, images {size[0]}x{size[1]}, batch {args.batch}, "
        f"{torch.get_num_threads()} threads; step time measured over {args.measure_steps} steps"
    )
    print(f"{'sampler':<10} {'precision':<22} {'s/step':>8} {'s/image':>9} {'images/s':>9} {'speed-up':>9}")
    table = []
    for sampler, steps in (("DDPM-1000", 1000), ("DDIM-50", 50)):
        for name, t in rows.items():
            per_image = t * steps / args.batch
            ref = base * 1000 / args.batch  # medicraft-style baseline: DDPM-1000 fp32
            table.append(
                {
                    "sampler": sampler,
                    "precision": name,
                    "s_per_step": t,
                    "s_per_image": per_image,
                    "images_per_s": 1 / per_image,
                    "speedup_vs_ddpm1000_fp32": ref / per_image,
                }
            )
            print(f"{sampler:<10} {name:<22} {t:8.3f} {per_image:9.2f} {1 / per_image:9.3f} {ref / per_image:8.1f}x")

    # quality of bf16 + channels_last against fp32, same seeds, real DDIM sampling
    seeds = list(range(args.batch))
    outs = {}
    for name, amp, cl in (("fp32", None, False), ("bf16", "bfloat16", True)):
        inferer = ClassConditionedDiffusionInferer(
            make_scheduler("ddpm", 1000), null_class=3, amp_dtype=amp, channels_last=cl
        )
        noise, gens = seeded_noise(seeds, shape)
        start = time.perf_counter()
        img = inferer.sample(
            noise,
            network,
            [s % 3 for s in seeds],
            scheduler=make_scheduler("ddim", 1000),
            num_inference_steps=args.quality_steps,
            generators=gens,
            verbose=False,
        )
        outs[name] = ((img.clamp(-1, 1) + 1) / 2, time.perf_counter() - start)
    diff = (outs["fp32"][0] - outs["bf16"][0]).abs()
    mse = float((diff**2).mean())
    psnr = 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item()
    print(
        f"\nbf16 + channels_last vs fp32, DDIM-{args.quality_steps}, {args.batch} images: max |diff| "
        f"{float(diff.max()):.4f}, mean |diff| {float(diff.mean()):.5f}, PSNR {psnr:.1f} dB; "
        f"wall time ratio fp32/bf16 {outs['fp32'][1] / outs['bf16'][1]:.2f}x"
    )
    if args.full:
        inferer = ClassConditionedDiffusionInferer(make_scheduler("ddpm", 1000), null_class=3)
        noise, gens = seeded_noise(seeds, shape)
        start = time.perf_counter()
        inferer.sample(noise, network, [0] * args.batch, num_inference_steps=1000, generators=gens, verbose=True)
        print(f"full DDPM-1000 fp32 run: {(time.perf_counter() - start) / args.batch:.1f} s per image")
    return {
        "params": n_params,
        "image_size": size,
        "batch": args.batch,
        "table": table,
        "bf16_vs_fp32": {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "psnr_db": psnr},
    }


CHILD = r"""
import json, resource, sys, torch
from pathlib import Path
torch.set_num_threads(1)
sys.path.insert(0, {repo!r})
from benchmarks.sampling_speed import build
from medicraft_monai.synthesis import multiply
tmp = Path({tmp!r})
over = {over!r}
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
base = rss_mb()
parser = build(over)
ckpt = tmp / "model.pt"
if not ckpt.exists():
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
res = multiply(tmp / "real" / "datalist.json", tmp / "out_{n}", bundle_root={bundle!r}, target={{"healthy": {n}}},
               batch_size=8, ckpt_path=ckpt, overrides=over, device="cpu", progress=False)
print(json.dumps({{"n": {n}, "generated": res["generated"], "rss_before_mb": base, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def memory_part() -> dict:
    import numpy as np

    from medicraft_monai.data import build_datalist, write_bscan_png

    over = {
        "image_size": [32, 64],
        "channels": [8, 16],
        "attention_levels": [False, False],
        "num_res_blocks": 1,
        "norm_num_groups": 8,
        "num_head_channels": 8,
        "num_inference_steps": 2,
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for c in ("healthy", "benign", "melanoma"):
            for p in range(3):
                path = Path(tmp) / "real" / "images" / c / f"{c}-{p}-1.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_bscan_png(path, rng.integers(0, 255, (32, 64), dtype=np.uint8))
        build_datalist(Path(tmp) / "real" / "images", output=Path(tmp) / "real" / "datalist.json", fractions=(1, 0, 0))
        for n in (20, 200):
            code = CHILD.format(repo=str(REPO), tmp=tmp, over=over, n=n, bundle=str(BUNDLE))
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\n{'images':>7} {'RSS after imports (MB)':>23} {'peak RSS (MB)':>14} {'growth (MB)':>12}")
    for r in results:
        growth = r["peak_rss_mb"] - r["rss_before_mb"]
        print(f"{r['n']:>7} {r['rss_before_mb']:23.1f} {r['peak_rss_mb']:14.1f} {growth:12.1f}")
    ratio = results[1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    print(f"peak memory ratio 200 / 20 images: {ratio:.3f} (flat is 1.0)")
    return {"multiply_peak_rss": results, "ratio_200_over_20": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--measure-steps", type=int, default=3)
    ap.add_argument("--quality-steps", type=int, default=10, help="DDIM steps of the fp32 vs bf16 comparison")
    ap.add_argument("--full", action="store_true", help="also run a full 1000-step DDPM batch (slow)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    result = {"speed": speed_part(args)}
    if not args.skip_memory:
        result["memory"] = memory_part()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
