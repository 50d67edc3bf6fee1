"""benchmarks/fast_synthesis.py in quick mode: the table has its rows and columns and sane values (no speed asserted)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests._subprocess import run_group

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "fast_synthesis.py"

COLUMNS = (
    "| configuration | sampler | steps | precision | batch | s / step | s / image | images / s | speed-up | "
    "x vs 4260 s | GFLOP / image | GFLOP/s | of own-precision peak | of bf16 peak | how |"
)


def test_quick_run_prints_a_sane_table(tmp_path: Path) -> None:
    out = tmp_path / "fast.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = run_group(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--json", str(out)],
        timeout=240,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert COLUMNS in proc.stdout
    result = json.loads(out.read_text())
    sampling = result["sampling"]
    assert sampling["image_size"] == [32, 64] and sampling["unet_gflop_per_image_step"] > 0
    assert all(v > 0 for v in sampling["matmul_peak_gflops"].values())
    rows = {r["name"]: r for r in sampling["table"]}
    assert list(rows) == [
        "medicraft-style",
        "MONAI DiffusionInferer",
        "ours",
        "ours, distilled",
        "ours, distilled + fused attention + bf16 weights",
    ]
    distilled = rows["ours, distilled"]
    # by default the shipped student's passes
    shipped = REPO / "bundles" / "oct_ddpm" / "models" / "distilled" / "diffusion.json"
    passes = json.loads(shipped.read_text())["num_inference_steps"]
    assert (distilled["sampler"], distilled["steps"]) == ("distilled", passes)
    # the same UNet pass: the work per image scales with the passes alone
    per_pass = rows["ours"]["gflop_per_image"] / rows["ours"]["steps"]
    assert abs(distilled["gflop_per_image"] - passes * per_pass) <= 1e-9 * distilled["gflop_per_image"]
    assert (rows["medicraft-style"]["sampler"], rows["medicraft-style"]["steps"]) == ("DDPM", 1000)
    assert "x1000" in rows["medicraft-style"]["how"] and rows["ours"]["how"] == "complete run"
    assert rows["medicraft-style"]["speedup_vs_baseline"] == 1.0
    assert (
        rows["ours"]["batch"] == sampling["chosen_batch"] and str(sampling["chosen_batch"]) in sampling["batch_sweep"]
    )
    for r in rows.values():
        # every row printed, with its own figures
        assert f"| {r['name']} | {r['sampler']} | {r['steps']} |" in proc.stdout
        assert r["s_per_image"] > 0 and r["images_per_s"] > 0
        assert abs(r["s_per_image"] - r["s_per_step"] * r["steps"] / r["batch"]) < 1e-9
        assert r["speedup_vs_baseline"] > 0 and r["speedup_vs_medicraft_4260s"] > 0
        # the fractions are ratios of two timings on a shared machine (a busy neighbour can slow the matmul that
        # measures the peak more than the UNet run), so no upper bound holds everywhere: check how they are made
        peaks = sampling["matmul_peak_gflops"]
        assert r["achieved_gflops"] > 0
        assert abs(r["frac_of_peak"] - r["achieved_gflops"] / peaks[r["peak_dtype"]]) <= 1e-9 * r["frac_of_peak"]
        assert abs(r["frac_bf16_peak"] - r["achieved_gflops"] / peaks["bf16"]) <= 1e-9 * r["frac_bf16_peak"]
        assert r["peak_dtype"] == ("bf16" if r["precision"].startswith("bf16") else "fp32")
    # fewer UNet passes than 1000 DDPM steps: the work per image really is smaller
    assert rows["ours"]["gflop_per_image"] < rows["medicraft-style"]["gflop_per_image"] / 100
    cmp = sampling["bf16_vs_fp32"]
    assert 0 <= cmp["mean_abs"] <= cmp["max_abs"] <= 1 and cmp["psnr_db"] > 10
    train = result["training"]
    assert train["loader_samples_per_s"] > 0 and train["train_samples_per_s"] > 0
    assert 0 <= train["loader_share_of_train_time"] < 1
    assert "loader alone (CacheDataset" in proc.stdout
    assert [r["name"] for r in train["rows"]] == ["the bundle's step", "+ fused attention"]
    # a training step is one forward and one backward pass of the batch: the backward pass of a convolution or a
    # matmul costs two forward passes (input and weight gradients) less the network input's gradient, never needed
    forward = train["batch"] * sampling["unet_gflop_per_image_step"]
    for r in train["rows"]:
        assert 2.0 * forward < r["gflop_per_step"] <= 3.0 * forward * (1 + 1e-9)
        assert r["gflop_per_step"] == train["rows"][0]["gflop_per_step"]  # the same arithmetic, fused or not
        assert abs(r["frac_of_peak"] - r["achieved_gflops"] / peaks[r["peak_dtype"]]) <= 1e-9 * r["frac_of_peak"]
        assert abs(r["frac_bf16_peak"] - r["achieved_gflops"] / peaks["bf16"]) <= 1e-9 * r["frac_bf16_peak"]
        assert f"| training step, {r['name']} " in proc.stdout


def test_run_all_finds_every_benchmark_and_passes_quick() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    names = [p.name for p in run_all.benchmark_scripts()]
    expected = sorted(p.name for p in (REPO / "benchmarks").glob("*.py") if p.name not in ("run_all.py", "__init__.py"))
    assert names == expected and "fast_synthesis.py" in names
    assert run_all.has_quick_mode(SCRIPT)
    assert run_all.script_command(SCRIPT, quick=True, json_dir=Path("res")) == [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--json",
        str(Path("res") / "fast_synthesis.json"),
    ]
    no_json = next(p for p in run_all.benchmark_scripts() if not run_all.has_option(p, "--json"))
    assert "--json" not in run_all.script_command(no_json, json_dir=Path("res"))
    proc = run_group([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--only", "nope"], timeout=60, cwd=REPO)
    assert proc.returncode != 0 and "unknown benchmark" in proc.stderr


def test_quality_curve_picks_the_fewest_steps_within_the_reference_spread(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import quality_vs_steps as q
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    fd = {5: 10.0, 10: 6.0, 15: 4.3, 20: 4.1, 50: 3.9}
    passes = {5: 0.5, 10: 0.7, 15: 0.6, 20: 0.78, 50: 0.8}
    rows = [{"sampler": "dpmpp_2m", "steps": s, "frechet_distance": fd[s], "anatomy_pass_rate": passes[s]} for s in fd]
    rows += [{"sampler": "ddim", "steps": s, "frechet_distance": 2 * fd[s], "anatomy_pass_rate": 0.5} for s in fd]
    ref = {"fd_mean": 4.0, "fd_spread": 0.3, "pass_mean": 0.8, "pass_spread": 0.05}
    # 15 steps is close enough in distance but not in anatomy; 20 steps is within both spreads
    assert q.choose_default(rows, ref) == 20
    assert q.choose_default(rows, {**ref, "fd_spread": 0.0, "fd_mean": 3.0}) is None
    png = tmp_path / "curve.png"
    q.plot(png, rows, ref, 20, "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args = q.parse_args(["--quick"])
    assert args.steps == [2, 4] and args.work_dir.name.endswith("_quick")


def test_quality_curve_scores_a_candidate_student_without_touching_the_bundle(tmp_path: Path) -> None:
    """``--student`` loads a distill.json run's model.pt at its own step count; the bundle's files stay as they are."""
    import pytest

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import quality_vs_steps as q
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from medicraft_monai.utils import file_sha256

    shipped = q.BUNDLE / "models" / "distilled"
    shipped_steps = json.loads((shipped / "diffusion.json").read_text())["num_inference_steps"]
    assert q.student_files(None) == (shipped / "model.pt", shipped_steps)
    before = {p.name: file_sha256(p) for p in shipped.iterdir()}

    # a candidate distilled for one step fewer: the shipped weights with one bias moved, so it is told apart
    import torch

    cand = tmp_path / "student"
    cand.mkdir()
    state = torch.load(shipped / "model.pt", map_location="cpu", weights_only=True)
    state["conv_in.conv.bias"] = state["conv_in.conv.bias"] + 1.0
    torch.save(state, cand / "model.pt")
    settings = json.loads((shipped / "diffusion.json").read_text())
    (cand / "diffusion.json").write_text(json.dumps({**settings, "num_inference_steps": shipped_steps - 1}))
    assert q.student_files(cand) == (cand / "model.pt", shipped_steps - 1)
    assert q.parse_args(["--model", "shipped", "--student", str(cand)]).distilled_steps == [shipped_steps - 1]
    gen = q.shipped_generator("distilled", "fp32 eager (shipped)", cand / "model.pt")
    assert gen.sampler == "distilled" and gen.num_inference_steps == shipped_steps - 1
    assert gen.checksum == file_sha256(cand / "model.pt") != before["model.pt"]
    assert torch.equal(gen.network.conv_in.conv.bias.detach().half(), state["conv_in.conv.bias"])
    teacher = q.shipped_generator("dpmpp_2m", "fp32 eager (shipped)", cand / "model.pt")
    assert teacher.checksum == file_sha256(q.BUNDLE / "models" / "model.pt")  # --student only replaces the student
    assert {p.name: file_sha256(p) for p in shipped.iterdir()} == before

    # a missing settings file, or weights that are not a student, are named
    (cand / "diffusion.json").unlink()
    with pytest.raises(SystemExit, match=r"student/diffusion\.json: no such file"):
        q.student_files(cand / "model.pt")
    (cand / "diffusion.json").write_text(json.dumps({**settings, "sampler": "dpmpp_2m"}))
    with pytest.raises(SystemExit, match=r"diffusion\.json: not the settings of a distilled student"):
        q.student_files(cand)
