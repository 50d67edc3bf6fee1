"""Speed of the procedural OCT phantom: B-scans per second on one core, against baselines measured in the same run.

What it prints:

1. B-scans per second of whole exams (12 radial planes, eye model included) per class, at 256 x 512 by default.
   The target is at least 20 B-scans per second on one core.
2. The time per B-scan of each rendering stage (eye model, boundaries, layered reflectivity, choroid texture,
   speckle draw, the rest), to show where the time goes.
3. Two baselines of the same image size drawn in the same run, and the phantom's time per B-scan as a multiple of
   each: a plain ``Generator.random`` image (the cheapest possible "image") and the gamma speckle field alone
   (one draw the phantom itself has to make per B-scan).

One core: the thread variables are set before numpy is imported. Usage::

    python benchmarks/phantom_speed.py [--height 256] [--width 512] [--exams 6] [--repeat 3]
"""

from __future__ import annotations

import os

for _var in (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medicraft_monai.data import phantom as ph  # noqa: E402
from medicraft_monai.data.phantom.config import _RENDER_BOUNDARIES  # noqa: E402
from medicraft_monai.data.phantom.eye import _EyeModel  # noqa: E402


def best_of(fn, repeat: int, number: int = 1) -> float:
    """Best mean seconds per call of ``fn`` over ``repeat`` rounds of ``number`` calls."""
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def stage_times(phantom: ph.OCTPhantom, repeat: int) -> dict[str, float]:
    """Seconds per B-scan of the main stages (measured by calling them on their own)."""
    cfg = phantom.config
    model = _EyeModel(cfg, 11, "R", "melanoma", None)
    angle = 30.0
    a = math.radians(angle)
    direction = np.array([math.cos(a), math.sin(a)])
    u, v = phantom._s * direction[0], phantom._s * direction[1]
    zmm, _, _ = model.boundaries(u, v)
    bm = (zmm["BM"] / phantom._dz - 0.5).astype(np.float32)
    csi = (zmm["CSI"] / phantom._dz - 0.5).astype(np.float32)
    rng = np.random.default_rng(0)
    rows = phantom._rows
    zr = [(zmm[name] / phantom._dz - 0.5).astype(np.float32) for name in _RENDER_BOUNDARIES]

    def layers() -> None:
        R = np.zeros((cfg.height, cfg.width), np.float32)
        A = np.zeros_like(R)
        for z in zr:
            ramp = np.clip(rows + 0.5 - z[None, :], 0.0, 1.0)
            R += 0.1 * ramp
            A += 0.2 * ramp

    def total() -> None:
        phantom.generate_bscan(11, "melanoma", angle)

    times = {
        "eye model (per exam / planes)": best_of(lambda: _EyeModel(cfg, 11, "R", "melanoma", None), repeat, 5)
        / cfg.n_planes,
        "boundaries of one plane": best_of(lambda: model.boundaries(u, v), repeat, 20),
        "layered reflectivity + attenuation": best_of(layers, repeat, 10),
        "choroid texture": best_of(lambda: phantom._choroid_texture(rng, bm, csi), repeat, 10),
        "speckle draw": best_of(
            lambda: rng.standard_gamma(cfg.speckle_looks, size=(cfg.height, cfg.width), dtype=np.float32), repeat, 10
        ),
        "vessel crossings": best_of(lambda: model.vessel_crossings(direction), repeat, 20),
    }
    whole = best_of(total, repeat, 5) - times["eye model (per exam / planes)"] * (cfg.n_planes - 1)
    times["the rest (lines, vessels, log, truth)"] = max(whole - sum(times.values()), 0.0)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--exams", type=int, default=6, help="exams per class in the throughput measurement")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    cfg = ph.PhantomConfig(height=args.height, width=args.width)
    phantom = ph.OCTPhantom(cfg)
    phantom.generate_exam(0, "healthy")  # warm-up (imports, caches)
    print(f"OCT phantom speed: {cfg.height} x {cfg.width} B-scans, {cfg.n_planes} planes per exam, one core")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.processor() or platform.machine()}")
    print()
    print(f"{'class':<10} {'exams':>5} {'B-scans':>8} {'seconds':>8} {'B-scans/s':>10}")
    rates = []
    for cls in cfg.classes:
        best = math.inf
        for _ in range(args.repeat):
            start = time.perf_counter()
            for seed in range(args.exams):
                phantom.generate_exam(seed, cls, "RL"[seed % 2])
            best = min(best, time.perf_counter() - start)
        n = args.exams * cfg.n_planes
        rates.append(n / best)
        print(f"{cls:<10} {args.exams:>5} {n:>8} {best:>8.3f} {n / best:>10.1f}")
    rate = float(np.mean(rates))
    per_bscan = 1.0 / rate
    print(f"{'mean':<10} {'':>5} {'':>8} {'':>8} {rate:>10.1f}   (target >= 20: {'met' if rate >= 20 else 'NOT met'})")
    print()
    print("stage (ms per B-scan)")
    for name, sec in stage_times(phantom, args.repeat).items():
        print(f"  {name:<40} {sec * 1e3:8.2f}")
    print()
    rng = np.random.default_rng(0)
    shape = (cfg.height, cfg.width)
    base_rand = best_of(lambda: rng.random(shape, dtype=np.float32), args.repeat, 50)
    base_speckle = best_of(lambda: rng.standard_gamma(cfg.speckle_looks, size=shape, dtype=np.float32), args.repeat, 20)
    print(f"{'baseline (same size, same run)':<40} {'ms':>8} {'phantom / baseline':>20}")
    print(f"  {'Generator.random image':<38} {base_rand * 1e3:8.3f} {per_bscan / base_rand:>19.1f}x")
    print(f"  {'gamma speckle field alone':<38} {base_speckle * 1e3:8.3f} {per_bscan / base_speckle:>19.1f}x")
    print(f"  {'phantom B-scan (mean over classes)':<38} {per_bscan * 1e3:8.3f} {'':>20}")


if __name__ == "__main__":
    main()
