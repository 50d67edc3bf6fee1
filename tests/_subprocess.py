"""Run a command in its own process group, so a timeout kills it and every process it started (torchrun workers);
and build ``python -m monai.bundle run`` command lines the way a user types them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_group(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Like ``subprocess.run(cmd, capture_output=True, text=True)``, but a timeout kills the whole process group
    (no orphaned workers holding the pipes open) and fails the test with the output so far."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, cmd[:6]))} ... timed out after {timeout} s\n{out[-2000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def cli_overrides(overrides: Mapping[str, object]) -> list[str]:
    """``--key value`` pairs for ``monai.bundle run``: strings as they are, anything else as its Python literal."""
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return args


def monai_bundle_cmd(
    config_files: Sequence[str | os.PathLike], bundle_root: str | os.PathLike, layered: bool = True, **overrides
) -> list[str]:
    """The ``python -m monai.bundle run`` command for one config file or several (merged in order).

    A bundle's ``configs/common.json`` (the components its other configs are layered on) comes first when the
    bundle has one, as a user types it: ``--config_file "['configs/common.json','configs/train.json']"``; not with
    ``layered=False``, for a standalone config (``multiply.json``, ``label_efficiency.json``)."""
    files = [str(f) for f in config_files]
    common = Path(files[0]).parent / "common.json"
    if layered and common.is_file() and str(common) not in files:
        files.insert(0, str(common))
    config = files[0] if len(files) == 1 else repr(files)
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        config,
        "--bundle_root",
        str(bundle_root),
        *cli_overrides(overrides),
    ]


def run_checked(cmd: list[str], expect_ok: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """:func:`run_group` from the repository root; with ``expect_ok`` a non-zero exit fails the test with the
    command's output."""
    proc = run_group(cmd, timeout, cwd=REPO_ROOT)
    if expect_ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)}\nfailed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-5000:]}", False)
    return proc
