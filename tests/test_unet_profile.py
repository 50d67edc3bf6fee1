"""benchmarks/unet_profile.py: operators fall into the right families, and the quick run's profile adds up (no speed
asserted)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests._subprocess import run_group

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "unet_profile.py"


def _profile_module():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import unet_profile
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return unet_profile


def test_operators_are_sorted_into_families() -> None:
    up = _profile_module()
    expected = {
        "aten::mkldnn_convolution": "convolution",
        "aten::_slow_conv2d_forward": "convolution",
        "aten::_softmax": "attention",
        "aten::baddbmm": "attention",
        "aten::bmm": "attention",
        "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
        "aten::addmm": "linear",
        "aten::mm": "linear",
        "aten::native_group_norm": "normalisation",
        "aten::silu": "activation",
        "aten::upsample_nearest2d": "resampling",
        "aten::avg_pool2d": "resampling",
        "aten::copy_": "copies and layout",
        "aten::_to_copy": "copies and layout",
        "aten::cat": "copies and layout",
        "aten::add": "elementwise",
        "aten::mul": "elementwise",
        "aten::randn": "other",
    }
    assert {op: up.family(op) for op in expected} == expected
    assert up.ORDER[-1] == "other" and len(set(up.ORDER)) == len(up.ORDER)


def test_quick_run_profiles_both_precisions_and_the_shares_add_up(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = run_group([sys.executable, str(SCRIPT), "--quick", "--passes", "2", "--json", str(out)], timeout=240,
                     cwd=REPO, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    peaks = result["peaks_gflops"]
    assert peaks["bf16"] > 0 and peaks["fp32"] > 0
    rows = result["rows"]
    assert [r["precision"] for r in rows] == [
        "bf16 + channels_last",
        "fp32 eager",
        "bf16 + channels_last + fused attention",
        "bf16 weights + channels_last",
    ]
    assert rows[1]["max_abs_diff_vs_fp32"] == 0.0  # the reference itself
    # the candidates compute the same network: they differ from fp32 by bf16 rounding (8 mantissa bits: 2^-8 of a
    # value, accumulated over the network's depth), far below the output's own spread
    for r in (rows[0], rows[2], rows[3]):
        assert 0 < r["max_abs_diff_vs_fp32"] < 0.5 * r["output_std"]
    up = _profile_module()
    for r in rows:
        assert set(r["families"]) <= set(up.ORDER) and r["families"]["convolution"] > 0
        assert abs(sum(r["families"].values()) - r["profiled_seconds"]) <= 1e-9 * r["profiled_seconds"]
        assert r["pass_seconds"] > 0 and r["gflop_per_pass"] > 0
        assert abs(r["gflops"] - r["gflop_per_pass"] / r["pass_seconds"]) <= 1e-9 * r["gflops"]
        own = peaks["bf16"] if r["precision"].startswith("bf16") else peaks["fp32"]
        assert abs(r["of_own_peak"] - r["gflops"] / own) <= 1e-9 * r["of_own_peak"]
        assert f"| {r['model']} | {r['precision']} |" in proc.stdout
