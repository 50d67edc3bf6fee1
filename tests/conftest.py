"""Shared pytest fixtures: where the real OCT sample lives, and small helpers."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# pytest-xdist runs one worker per core: one thread per worker (and per subprocess it starts) avoids the
# oversubscription that made small models hundreds of times slower on these 2-core machines.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def _oct2017_dir() -> Path:
    env = os.environ.get("MEDICRAFT_OCT2017")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "oct2017"


@pytest.fixture(scope="session")
def oct2017_dir() -> Path:
    """The real OCT2017 sample (../shared/data/oct2017, or $MEDICRAFT_OCT2017). Missing data is an error, not a skip."""
    path = _oct2017_dir()
    if not (path / "manifest.csv").is_file():
        pytest.fail(
            f"real OCT sample not found at {path}: clone next to ../shared or set MEDICRAFT_OCT2017",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def oct2017_manifest(oct2017_dir: Path) -> list[dict[str, str]]:
    """Rows of the sample's manifest.csv (file, label, patient_id, ...)."""
    with open(oct2017_dir / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def real_bscan_paths(oct2017_dir: Path, oct2017_manifest: list[dict[str, str]]) -> list[Path]:
    """A fixed, class-balanced selection of 24 real B-scans (6 per class) spread over the widths present."""
    picked: list[Path] = []
    for label in ("CNV", "DME", "DRUSEN", "NORMAL"):
        rows = sorted((r for r in oct2017_manifest if r["label"] == label), key=lambda r: (int(r["width"]), r["file"]))
        # evenly spaced over the width-sorted list, always including the widest image of the class
        idx = sorted({round(i * (len(rows) - 1) / 5) for i in range(6)})
        picked += [oct2017_dir / rows[i]["file"] for i in idx]
    return picked


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """One intra-op thread per test process (see the environment settings above)."""
    torch.set_num_threads(1)
