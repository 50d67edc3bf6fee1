"""Where a UNet pass spends its time: a profile by operator family, beside the bf16 matmul peak of the same run.

Issue 18 asks for a sampling pass at 50% or more of the CPU's bf16 matmul peak; this profile says where the rest goes,
so each optimisation is chosen from evidence. For each configuration it runs a few warm-up passes, then profiles
``--passes`` forward passes with ``torch.profiler`` (CPU activities) and sums the *self* CPU time of every operator
into families:

- ``convolution`` (``aten::convolution`` and the oneDNN/MKL kernels under it), ``linear`` (``addmm``, ``mm``),
  ``attention`` (``bmm``, ``baddbmm``, ``softmax``, ``scaled_dot_product_attention`` and its kernels),
  ``normalisation`` (GroupNorm, LayerNorm), ``activation`` (SiLU, GELU), ``resampling`` (interpolation, pooling),
  ``copies and layout`` (``copy_``, ``to``, ``contiguous``, ``clone``, ``cat``, reorders between formats),
  ``elementwise`` (add, mul, div, ...), and ``other``.

The table gives each family's share of the profiled time, with the pass's achieved GFLOP/s (FLOPs counted with
``torch.utils.flop_counter``) as a fraction of the bf16 and fp32 matmul peaks timed in the same process. Profiling
adds overhead to every operator call: the fractions of the profiled run are lower bounds (the unprofiled pass time
is given too). Nothing here asserts a time.

Configurations: the shipped ``oct_ddpm`` UNet at its own size (32 x 64, its weights) and medicraft's UNet size at
256 x 512 (random weights), each in bf16 autocast + channels_last (the fast-synthesis configuration) and fp32 eager
(the baseline), and two candidate changes on top of the fast configuration, with the same weights: attention
through PyTorch's fused ``scaled_dot_product_attention`` (MONAI's ``use_flash_attention``), and the weights cast to
bf16 once instead of by autocast on every pass. "diff vs fp32" is the largest absolute difference of one pass's
output from fp32 eager's on the same input, over that output's standard deviation: a candidate must not round worse
than the fast configuration does.

Usage::

    python benchmarks/unet_profile.py [--passes 3] [--batch 1] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from fast_synthesis import MEDICRAFT_SIZE_NET, QUICK_NET, build_unet, matmul_peak, unet_flops  # noqa: E402

#: operator families: the first family whose patterns match a profiled operator's name takes its time
FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("bmm", "baddbmm", "softmax", "scaled_dot_product", "_flash_attention", "_efficient_attention")),
    ("convolution", ("conv", "mkldnn_convolution", "_convolution", "slow_conv")),
    ("linear", ("addmm", "aten::mm", "aten::linear", "aten::matmul")),
    ("normalisation", ("group_norm", "layer_norm", "batch_norm")),
    ("activation", ("silu", "gelu", "relu", "sigmoid")),
    ("resampling", ("upsample", "interpolate", "pool")),
    (
        "copies and layout",
        (
            "copy_",
            "_to_copy",
            "aten::to",
            "contiguous",
            "clone",
            "aten::cat",
            "reorder",
            "as_strided",
            "permute",
            "transpose",
            "reshape",
            "view",
        ),
    ),  # fmt: skip
    (
        "elementwise",
        (
            "aten::add",
            "aten::mul",
            "aten::div",
            "aten::sub",
            "aten::pow",
            "aten::exp",
            "aten::cos",
            "aten::sin",
            "aten::neg",
            "aten::fill",
            "aten::zero",
            "aten::empty",
        ),
    ),  # fmt: skip
)
ORDER = [name for name, _ in FAMILIES] + ["other"]


def family(op_name: str) -> str:
    """The family of a profiled operator (see :data:`FAMILIES`)."""
    for name, patterns in FAMILIES:
        if any(p in op_name for p in patterns):
            return name
    return "other"


def shipped_unet(overrides: dict[str, Any] | None = None):
    """The shipped ``oct_ddpm`` network with its weights (and config ``overrides``), and its image shape (C, H, W)."""
    from medicraft_monai.bundles import bundle_path
    from medicraft_monai.networks import load_bundle_network

    loaded = load_bundle_network(bundle_path("oct_ddpm"), overrides=overrides)
    size = [int(s) for s in loaded.parser.get_parsed_content("image_size")]
    return loaded.network.eval(), (1, *size)


def with_fused_attention(unet, make):
    """A twin of ``unet`` built by ``make(use_flash_attention=True)`` with the same weights."""
    twin = make(use_flash_attention=True)
    twin.load_state_dict(unet.state_dict())
    return twin.eval()


def profile_pass(
    unet, shape, batch: int, amp: bool, channels_last: bool, passes: int, bf16_weights: bool = False
) -> dict[str, Any]:
    """Self CPU time per family over ``passes`` forward passes (after warm-up), the unprofiled pass time, and the
    output of one pass on a fixed input (float32, to compare configurations)."""
    import copy

    import torch
    from torch.profiler import ProfilerActivity, profile

    net = (
        unet.to(memory_format=torch.channels_last) if channels_last else unet.to(memory_format=torch.contiguous_format)
    )
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    if bf16_weights:  # cast once, here, instead of autocast casting the weights on every pass
        net, x = copy.deepcopy(net).to(torch.bfloat16), x.to(torch.bfloat16)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    kwargs = {"x": x, "timesteps": torch.full((batch,), 500, dtype=torch.long)}
    if getattr(net, "num_class_embeds", None):
        kwargs["class_labels"] = torch.zeros(batch, dtype=torch.long)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp and not bf16_weights):
            return net(**kwargs)

    with torch.inference_mode():
        output = run().float()
        for _ in range(2):
            run()  # warm-up: oneDNN primitives are created on the first passes
        start = time.perf_counter()
        for _ in range(passes):
            run()
        plain = (time.perf_counter() - start) / passes
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(passes):
                run()
    times: dict[str, float] = defaultdict(float)
    ops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in prof.key_averages():
        fam = family(event.key)
        seconds = event.self_cpu_time_total / 1e6 / passes
        times[fam] += seconds
        ops[fam][event.key] += seconds
    total = sum(times.values())
    top = {f: sorted(o.items(), key=lambda kv: -kv[1])[:3] for f, o in ops.items()}
    return {"pass_seconds": plain, "profiled_seconds": total, "families": dict(times), "top_ops": top,
            "output": output}  # fmt: skip


def CONFIGURATIONS(unet, fused) -> tuple:  # noqa: N802 - a table, read like a constant
    """(label, network, bf16 autocast, channels_last, bf16 weights) of each profiled configuration: the fast
    configuration first, fp32 eager (the reference) second."""
    return (
        ("bf16 + channels_last", unet, True, True, False),
        ("fp32 eager", unet, False, False, False),
        ("bf16 + channels_last + fused attention", fused, True, True, False),
        ("bf16 weights + channels_last", unet, True, True, True),
    )


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=3, help="profiled forward passes per configuration")
    ap.add_argument("--batch", type=int, default=1, help="images per pass")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="CI-size smoke run: a tiny UNet at 32 x 64 only")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    return ap.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    import torch

    args = parse_args(argv)
    device = torch.device("cpu")
    peak_bf16 = matmul_peak(torch.bfloat16, device, 1024 if args.quick else 2048)
    peak_fp32 = matmul_peak(torch.float32, device, 1024 if args.quick else 2048)
    print(f"matmul peaks (same run): bf16 {peak_bf16 / 1e9:,.0f} GFLOP/s, fp32 {peak_fp32 / 1e9:,.0f} GFLOP/s")
    models = []
    if args.quick:
        models.append(("tiny UNet (random)", build_unet(QUICK_NET), (1, 32, 64),
                       lambda **kw: build_unet({**QUICK_NET, **kw})))  # fmt: skip
    else:
        net, shape = shipped_unet()
        models.append((f"shipped oct_ddpm ({shape[1]} x {shape[2]})", net, shape, lambda **kw: shipped_unet(kw)[0]))
        models.append((f"medicraft-size UNet (random, {args.height} x {args.width})", build_unet(MEDICRAFT_SIZE_NET),
                       (1, args.height, args.width), lambda **kw: build_unet({**MEDICRAFT_SIZE_NET, **kw})))  # fmt: skip
    rows = []
    for name, unet, shape, make in models:
        flops = unet_flops(unet, shape, device) * args.batch
        fused = with_fused_attention(unet, make)
        outputs = []
        for precision, net, amp, channels_last, bf16_weights in CONFIGURATIONS(unet, fused):
            result = profile_pass(net, shape, args.batch, amp, channels_last, args.passes, bf16_weights)
            outputs.append(result.pop("output"))
            peak = peak_bf16 if amp else peak_fp32
            achieved = flops / result["pass_seconds"]
            rows.append({"model": name, "precision": precision, "batch": args.batch, "gflop_per_pass": flops / 1e9,
                         "gflops": achieved / 1e9, "of_own_peak": achieved / peak, "of_bf16_peak": achieved / peak_bf16,
                         **result})  # fmt: skip
        exact = outputs[1]  # fp32 eager: the network itself
        for row, output in zip(rows[-len(outputs) :], outputs):
            row["max_abs_diff_vs_fp32"] = float((output - exact).abs().max())
            row["output_std"] = float(exact.std())
    print_table(rows)
    out = {"peaks_gflops": {"bf16": peak_bf16 / 1e9, "fp32": peak_fp32 / 1e9}, "rows": rows,
           "torch": torch.__version__, "threads": torch.get_num_threads()}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    """The profile as a Markdown table: one row per configuration, one column per family (share of the time)."""
    head = ["model", "configuration", "ms / pass", "GFLOP/s", "of own peak", "of bf16 peak", "diff vs fp32", *ORDER]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        total = r["profiled_seconds"] or 1.0
        shares = [f"{100 * r['families'].get(f, 0.0) / total:.0f}%" for f in ORDER]
        diff = r["max_abs_diff_vs_fp32"] / (r["output_std"] or 1.0)
        print(f"| {r['model']} | {r['precision']} | {1e3 * r['pass_seconds']:.1f} | {r['gflops']:.0f} | "
              f"{r['of_own_peak']:.2f} | {r['of_bf16_peak']:.2f} | {diff:.3f} | " + " | ".join(shares) + " |")  # fmt: skip
    print("\nlargest operators per family (ms per pass, profiled):")
    for r in rows:
        tops = "; ".join(
            f"{f}: " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in r["top_ops"][f])
            for f in ORDER
            if f in r["top_ops"] and r["families"].get(f, 0) > 0.05 * r["profiled_seconds"]
        )
        print(f"- {r['model']}, {r['precision']}: {tops}")


if __name__ == "__main__":
    main()
