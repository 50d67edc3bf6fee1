"""Sampling speed and peak memory of oct_ldm (latent diffusion) against oct_ddpm (pixel diffusion), in one run.

Both generators are built from their bundles' ``configs/inference.json`` at the **same image size** (oct_ldm's
default, 256 x 512, unless ``--image-size`` says otherwise) with their default networks and random weights (speed and
memory do not depend on the weights), and sample the same number of DDIM steps with the same batch size. Each one
runs in a fresh process, so the peak resident memory (``ru_maxrss``; on CUDA ``torch.cuda.max_memory_allocated``) is
its own. The UNet step time is measured over ``--measure-steps`` steps after a warm-up step, and the time per image
for ``--steps`` steps is ``steps * step time / batch`` plus, for oct_ldm, the time to decode the latents.

Printed: a table per generator and the ratios oct_ddpm / oct_ldm (how many times faster / smaller oct_ldm is). These
are not tests: the machines are shared and noisy, so read the ratios, not the absolute figures.

Usage: ``python benchmarks/ldm_vs_ddpm.py [--image-size 256 512] [--batch 2] [--steps 50] [--measure-steps 2]
[--threads 2] [--device cpu] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from medicraft_monai.bundles import bundle_path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = {name: bundle_path(name) for name in ("oct_ddpm", "oct_ldm")}


def _rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(name: str, image_size: list[int], batch: int, steps: int, measure_steps: int, device: str) -> dict:
    """Build one generator's network (and autoencoder) with random weights and time its sampling; in this process."""
    import torch
    from monai.bundle import ConfigParser

    from medicraft_monai.inferers import seeded_noise
    from medicraft_monai.networks import randomise_zero_weights
    from medicraft_monai.schedulers import make_scheduler

    parser = ConfigParser()
    parser.read_config([str(BUNDLES[name] / "configs" / n) for n in ("common.json", "inference.json")])
    parser["bundle_root"] = str(BUNDLES[name])
    parser["device"] = f"$torch.device('{device}')"
    parser["image_size"] = list(image_size)
    dev = torch.device(device)
    network = randomise_zero_weights(parser.get_parsed_content("network_def")).to(dev).eval()
    params = sum(p.numel() for p in network.parameters())
    image_shape = (int(parser.get_parsed_content("in_channels")), *image_size)
    num_train = int(parser.get_parsed_content("num_train_timesteps"))
    if name == "oct_ldm":
        from medicraft_monai.inferers.latent import LatentClassConditionedInferer

        autoencoder = randomise_zero_weights(parser.get_parsed_content("autoencoder_def")).to(dev)
        params_ae = sum(p.numel() for p in autoencoder.parameters())
        inferer = LatentClassConditionedInferer(make_scheduler("ddpm", num_train), autoencoder, null_class=3)
        noise_shape = inferer.latent_shape(image_shape)
    else:
        from medicraft_monai.inferers import ClassConditionedDiffusionInferer

        params_ae = 0
        inferer = ClassConditionedDiffusionInferer(make_scheduler("ddpm", num_train), null_class=3)
        noise_shape = image_shape
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = _rss_mib()
    sched = make_scheduler("ddim", num_train, clip_sample=name == "oct_ddpm")
    sched.set_timesteps(steps)
    x, _ = seeded_noise(list(range(batch)), noise_shape, device=dev)
    labels = torch.zeros(batch, dtype=torch.long, device=dev)
    with torch.inference_mode():
        inferer.predict(network, x, int(sched.timesteps[0]), labels, 1.0)  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        for t in sched.timesteps[:measure_steps]:
            model_output = inferer.predict(network, x, int(t), labels, 1.0)
            x = sched.step(model_output, int(t), x)[0]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        step_s = (time.perf_counter() - start) / measure_steps
        decode_s = 0.0
        if name == "oct_ldm":
            start = time.perf_counter()
            images = inferer.decode(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            decode_s = time.perf_counter() - start
            assert tuple(images.shape[1:]) == image_shape
    per_image = (steps * step_s + decode_s) / batch
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _rss_mib()
    return {
        "generator": name,
        "image_size": list(image_size),
        "noise_shape": list(noise_shape),
        "unet_params_m": params / 1e6,
        "autoencoder_params_m": params_ae / 1e6,
        "batch": batch,
        "steps": steps,
        "s_per_step": step_s,
        "decode_s_per_batch": decode_s,
        "s_per_image": per_image,
        "images_per_s": 1.0 / per_image,
        "peak_mib": peak,
        "sampling_mib": peak - (0.0 if dev.type == "cuda" else rss_before),
        "memory": "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "peak RSS (ru_maxrss)",
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, nargs=2, default=None, help="H W (default: oct_ldm's image_size)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps per image")
    ap.add_argument("--measure-steps", type=int, default=2, help="steps actually timed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one generator, print JSON
    args = ap.parse_args(argv)

    if args.image_size is None:
        from monai.bundle import ConfigParser

        size = ConfigParser.load_config_file(BUNDLES["oct_ldm"] / "configs" / "common.json")["image_size"]
        args.image_size = [int(s) for s in size]
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        result = measure(args.one, args.image_size, args.batch, args.steps, args.measure_steps, args.device)
        print("RESULT " + json.dumps(result))
        return result

    results = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for name in ("oct_ddpm", "oct_ldm"):
        cmd = [sys.executable, __file__, "--one", name, "--image-size", *map(str, args.image_size)]
        cmd += ["--batch", str(args.batch), "--steps", str(args.steps), "--measure-steps", str(args.measure_steps)]
        cmd += ["--threads", str(args.threads), "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            raise SystemExit(f"{name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        results[name] = json.loads(line[0][len("RESULT ") :])

    d, ldm = results["oct_ddpm"], results["oct_ldm"]
    h, w = args.image_size
    print(
        f"\nimages {h}x{w}, batch {args.batch}, DDIM-{args.steps}, {d['threads']} threads, device {args.device}; "
        f"UNet step time over {args.measure_steps} steps; memory: {d['memory']}"
    )
    head = f"{'generator':<10} {'noise':<14} {'UNet M':>7} {'AE M':>6} {'s/step':>8} {'decode s':>9}"
    head += f" {'s/image':>8} {'images/s':>9} {'peak MiB':>9} {'sampling MiB':>13}"
    print(head)
    for r in (d, ldm):
        noise = "x".join(map(str, r["noise_shape"]))
        print(
            f"{r['generator']:<10} {noise:<14} {r['unet_params_m']:7.1f} {r['autoencoder_params_m']:6.1f} "
            f"{r['s_per_step']:8.3f} {r['decode_s_per_batch']:9.3f} {r['s_per_image']:8.2f} "
            f"{r['images_per_s']:9.3f} {r['peak_mib']:9.0f} {r['sampling_mib']:13.0f}"
        )
    ratios = {
        "speedup_images_per_s": ldm["images_per_s"] / d["images_per_s"],
        "step_time_ratio": d["s_per_step"] / ldm["s_per_step"],
        "peak_memory_ratio": d["peak_mib"] / ldm["peak_mib"],
        "sampling_memory_ratio": d["sampling_mib"] / max(ldm["sampling_mib"], 1e-6),
    }
    print(
        f"oct_ldm vs oct_ddpm: {ratios['speedup_images_per_s']:.1f}x images/s, "
        f"{ratios['step_time_ratio']:.1f}x shorter UNet steps, {ratios['peak_memory_ratio']:.1f}x less peak memory "
        f"({ratios['sampling_memory_ratio']:.1f}x less memory for sampling itself)"
    )
    summary = {"results": results, "ratios": ratios}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
