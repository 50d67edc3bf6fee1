"""The pretrained context-restoration network that ships in ``bundles/oct_context_restoration/models`` (no training).

The bundle's own inference config, run with no overrides but the data, corrupts real held-out OCT2017 B-scans
(swapped patches, the pretext task) and restores them with the shipped weights: the restored images must be closer
to the originals than the corrupted ones (SSIM and MS-SSIM), which random or mis-loaded weights are not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_oct_context_restoration as restoration
import torch
from _subprocess import monai_bundle_cmd, run_checked

from medicraft_monai.networks.checkpoint import load_state_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "oct_context_restoration"
datalist = restoration.datalist  # the fixture: 3 training, 1 validation, 2 test real B-scans per class
pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file")


def _meta() -> dict:
    return json.loads((BUNDLE / "configs" / "metadata.json").read_text())


def test_the_weights_fit_the_zoo_limit_and_the_default_network() -> None:
    from monai.bundle import ConfigParser

    from medicraft_monai.bundles import config_files

    weights = BUNDLE / "models" / "model.pt"
    assert weights.stat().st_size <= 25 * 1024**2
    parser = ConfigParser()
    parser.read_config([str(p) for p in config_files(BUNDLE, "inference.json")])
    network = parser.get_parsed_content("network_def")
    state = load_state_dict(weights)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    metrics = _meta()["eval_metrics"]
    assert metrics["ssim_restored"] > metrics["ssim_corrupted"], "the card's held-out figures are filled in"


def test_the_shipped_network_restores_held_out_real_b_scans(datalist: Path, tmp_path: Path) -> None:
    out = tmp_path / "restoration"
    cmd = monai_bundle_cmd(
        [BUNDLE / "configs" / "common.json", BUNDLE / "configs" / "inference.json"],
        BUNDLE,
        datalist=str(datalist),
        output_dir=str(out),
        num_workers=0,
    )
    run_checked(cmd, True, 600)
    report = json.loads((out / "restoration_metrics.json").read_text())
    assert report["n_images"] == 8  # the 2 test B-scans per class
    assert report["ssim_restored"] > report["ssim_corrupted"] + 0.02, report
    assert report["ms_ssim_restored"] > report["ms_ssim_corrupted"], report
    better = sum(p["ssim_restored"] > p["ssim_corrupted"] for p in report["per_image"])
    assert better >= 7, f"restoration improved SSIM on {better} of 8 held-out B-scans"
    assert (out / "before_after.png").is_file()
