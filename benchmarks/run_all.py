"""Run every benchmark script in this folder, one after the other, and print their tables (``make benchmark``).

Every ``benchmarks/*.py`` except this file and private ``_*.py`` modules is a benchmark: it runs as its own process
(``python benchmarks/<name>.py``), so one script's threads, caches and memory do not bend the next one's figures.
The scripts run sequentially (the machines have 2 cores; running two at once would halve both). A script that
fails is reported and the others still run; the exit status is non-zero if any failed.

Usage::

    python benchmarks/run_all.py [--quick] [--only fast_synthesis ...] [--skip quality_vs_steps ...]
        [--timeout 3600] [--json-dir results/]

``--quick`` passes ``--quick`` to the scripts that have such a mode (CI-size smoke runs) and runs the others as
they are. ``--json-dir DIR`` passes ``--json DIR/<name>.json`` to the scripts that write one, so the run's figures
are kept beside the printed tables.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmark_scripts(folder: Path = HERE) -> list[Path]:
    """The benchmark scripts of ``folder``, sorted by name."""
    return sorted(p for p in folder.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))


def has_option(script: Path, option: str) -> bool:
    """Whether a script declares ``option`` (e.g. ``"--quick"``) in its argument parser."""
    return f'"{option}"' in script.read_text(encoding="utf-8")


def has_quick_mode(script: Path) -> bool:
    """Whether a script declares a ``--quick`` option."""
    return has_option(script, "--quick")


def script_command(script: Path, quick: bool = False, json_dir: Path | None = None) -> list[str]:
    """The command line that runs ``script``: ``--quick`` and ``--json DIR/<name>.json`` where it has them."""
    cmd = [sys.executable, str(script)]
    if quick and has_quick_mode(script):
        cmd.append("--quick")
    if json_dir is not None and has_option(script, "--json"):
        cmd += ["--json", str(Path(json_dir) / f"{script.stem}.json")]
    return cmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="pass --quick to the scripts that have it")
    ap.add_argument("--only", nargs="+", default=None, help="run only these scripts (names without .py)")
    ap.add_argument("--skip", nargs="+", default=(), help="skip these scripts (names without .py)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per script (default: none)")
    ap.add_argument(
        "--json-dir", type=Path, default=None, help="pass --json DIR/<name>.json to the scripts that write one"
    )
    args = ap.parse_args(argv)
    if args.json_dir is not None:
        args.json_dir.mkdir(parents=True, exist_ok=True)

    scripts = [s for s in benchmark_scripts() if s.stem not in set(args.skip)]
    if args.only is not None:
        unknown = set(args.only) - {s.stem for s in scripts}
        if unknown:
            ap.error(f"unknown benchmark(s) {sorted(unknown)}; found {[s.stem for s in benchmark_scripts()]}")
        scripts = [s for s in scripts if s.stem in set(args.only)]
    failed: list[str] = []
    summary: list[tuple[str, str, float]] = []
    for script in scripts:
        cmd = script_command(script, args.quick, args.json_dir)
        print(f"\n{'=' * 100}\n{script.name}: {' '.join(cmd[1:])}\n{'=' * 100}", flush=True)
        start = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=HERE.parent, timeout=args.timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = -1
            print(f"{script.name}: timed out after {args.timeout} s", flush=True)
        seconds = time.perf_counter() - start
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        if rc != 0:
            failed.append(script.name)
        summary.append((script.name, status, seconds))
    print(f"\n{'=' * 100}\n| benchmark | status | seconds |\n| --- | --- | ---: |")
    for name, status, seconds in summary:
        print(f"| {name} | {status} | {seconds:.0f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
