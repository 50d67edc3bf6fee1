"""Every bundle passes what the model zoo's ``ci/verify_bundle.py`` checks, through the package's own checks.

The zoo checks (min mode) the necessary files (``configs/metadata.json``, ``LICENSE``), the preferred files (the
inference config and the weights), the large-files list, version and changelog, the metadata against the schema;
full mode adds the network's input and output shapes on a dummy input of the metadata's shape and the TorchScript
export. :func:`medicraft_monai.networks.verify_bundle` runs the same checks (and loads every weight file into its
network); ``medicraft bundle verify NAME`` prints them as a table. Here each check is asserted per bundle, and each
check is shown to fail on a bundle that breaks it.

The zoo skips shapes and TorchScript for its diffusion bundles; here they run for the diffusion UNets too (traced
with the timesteps and class labels as inputs), and for the evaluation bundle's network, its fixed feature
extractor. Only a bundle without a ``network_def`` would have them ``n/a``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_bundle_metadata import SCHEMA

from medicraft_monai.networks import BundleCheck, bundle_parser, verify_bundle
from medicraft_monai.networks.verification import bundle_weight_files
from medicraft_monai.utils import file_digest

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
IDS = [b.name for b in BUNDLES]

#: THE ONE LIST OF BUNDLES THAT SHIP TRAINED WEIGHTS. Add a bundle's name when its weights (every file its inference
#: config loads: models/model.pt, and models/autoencoder.pt for oct_ldm) are committed. For a bundle listed here the
#: weight checks must pass (files present, loading into their networks, TorchScript traced with them); for a bundle
#: not listed they must fail, and its metadata must not claim weights (an empty eval_metrics). So weights that land
#: without this list, or a list entry or metrics without weights, fail here instead of being skipped.
SHIPS_WEIGHTS: list[str] = [
    "oct_classifier",
    "oct_synthesis_eval",
    "oct_ldm",
    "oct_ddpm",
    "oct_context_restoration",
]

pytestmark = pytest.mark.filterwarnings("ignore:No hash value provided")  # the local schema copy has no hash

WEIGHT_CHECKS = ("preferred files", "weights")


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def _claims_weights(bundle: Path) -> bool:
    """A bundle's metadata claims trained weights when it reports figures measured with them."""
    return bool(_meta(bundle).get("eval_metrics"))


@pytest.fixture(scope="module")
def checks() -> dict[str, dict[str, BundleCheck]]:
    """The full-mode checks of every bundle, run once (about 20 s on one core)."""
    assert SCHEMA.is_file(), f"the local schema copy is missing: {SCHEMA}"
    return {b.name: {c.name: c for c in verify_bundle(b, schema=SCHEMA, mode="full")} for b in BUNDLES}


def test_the_weights_list_names_bundles() -> None:
    unknown = sorted(set(SHIPS_WEIGHTS) - set(IDS))
    assert not unknown, f"SHIPS_WEIGHTS names bundles that do not exist: {unknown}"


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_every_check_runs_in_the_zoos_order(bundle: Path, checks) -> None:
    assert list(checks[bundle.name]) == [
        "necessary files",
        "preferred files",
        "large files",
        "version and changelog",
        "metadata schema",
        "network shapes",
        "TorchScript export",
        "weights",
    ]


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_checks_that_need_no_weights_pass(bundle: Path, checks) -> None:
    found = checks[bundle.name]
    for name in ("necessary files", "large files", "version and changelog", "metadata schema"):
        assert found[name].status == "pass", f"{bundle.name}: {name}: {found[name].detail}"
    assert f"version {_meta(bundle)['version']}" in found["version and changelog"].detail


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_network_shapes_and_torchscript_for_every_network(bundle: Path, checks) -> None:
    found = checks[bundle.name]
    for name in ("network shapes", "TorchScript export"):
        assert found[name].status == "pass", f"{bundle.name}: {name}: {found[name].detail}"
    used = "models/model.pt" if bundle.name in SHIPS_WEIGHTS else "random weights"
    assert f"traced with {used}" in found["TorchScript export"].detail, found["TorchScript export"].detail


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_weights_ship_exactly_where_the_list_and_the_metadata_say(bundle: Path, checks) -> None:
    found = checks[bundle.name]
    weights = bundle_weight_files(bundle)
    present = [p for p in weights if (bundle / p).is_file()]
    if bundle.name in SHIPS_WEIGHTS:
        for name in WEIGHT_CHECKS:
            assert found[name].status == "pass", f"{bundle.name} ships weights, but {name}: {found[name].detail}"
        assert all(p in found["weights"].detail for p in weights), found["weights"].detail
    else:
        assert not present, f"{bundle.name}: {present} committed; add {bundle.name!r} to SHIPS_WEIGHTS"
        assert not _claims_weights(bundle), (
            f"{bundle.name}: metadata reports eval_metrics, but no weights ship ({', '.join(weights)} missing)"
        )
        for name in WEIGHT_CHECKS:
            assert found[name].status == "fail" and "models/model.pt" in found[name].detail, (bundle.name, name)
    if bundle.name == "oct_ldm":  # a latent model: the autoencoder's weights are the bundle's too
        assert weights == {"models/model.pt": "network_def", "models/autoencoder.pt": "autoencoder_def"}


# --------------------------------------------------------------------------------------------------------------------
# each check fails on a bundle that breaks it (copies of the classifier bundle: the quickest network)
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The classifier bundle without its shipped weights (each test saves the weights it needs)."""
    bundle = REPO / "bundles" / "oct_classifier"
    return Path(shutil.copytree(bundle, tmp_path / "oct_classifier", ignore=shutil.ignore_patterns("*.pt")))


def _statuses(bundle: Path, **kwargs) -> dict[str, BundleCheck]:
    return {c.name: c for c in verify_bundle(bundle, schema=SCHEMA, **kwargs)}


def _save_network_weights(bundle: Path, **changes) -> Path:
    """Weights of the bundle's own network (random, as trained ones would be) in models/model.pt."""
    network = bundle_parser(bundle).get_parsed_content("network_def")
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in network.state_dict().items()}
    state.update(changes)
    torch.save(state, bundle / "models" / "model.pt")
    return bundle / "models" / "model.pt"


def test_weights_are_loaded_and_traced_when_present(copy: Path) -> None:
    _save_network_weights(copy)
    found = _statuses(copy)
    assert all(c.passed for c in found.values()), found
    assert found["weights"].detail == "models/model.pt -> network_def"
    assert "traced with models/model.pt" in found["TorchScript export"].detail


def test_weights_that_do_not_fit_the_network_fail(copy: Path) -> None:
    _save_network_weights(copy, unexpected=torch.zeros(3))
    found = _statuses(copy)
    assert found["preferred files"].status == "pass"
    assert found["weights"].status == "fail" and "model.pt" in found["weights"].detail, found["weights"]


def test_a_missing_licence_fails_the_necessary_files(copy: Path) -> None:
    (copy / "LICENSE").unlink()
    found = _statuses(copy, mode="min")
    assert found["necessary files"].status == "fail" and "LICENSE" in found["necessary files"].detail
    assert list(found) == [
        "necessary files",
        "preferred files",
        "large files",
        "version and changelog",
        "metadata schema",
    ], "min mode runs the zoo's min checks only"


def test_a_large_files_list_must_name_files_in_the_bundle_with_their_hash(copy: Path) -> None:
    weights = _save_network_weights(copy)
    entry = {"path": "models/model.pt", "url": "https://example.org/model.pt", "hash_type": "md5"}
    listing = copy / "large_files.json"
    for value, ok in (("", False), ("0" * 32, False), (file_digest(weights, "md5"), True)):
        listing.write_text(json.dumps({"large_files": [{**entry, "hash_val": value}]}))
        found = _statuses(copy, mode="min")["large files"]
        assert found.passed is ok, (value, found)
    listing.write_text(json.dumps({"large_files": [{**entry, "path": "models/gone.pt", "hash_val": "0" * 32}]}))
    found = _statuses(copy, mode="min")["large files"]
    assert found.status == "fail" and "models/gone.pt, which is not in the bundle" in found.detail


def test_a_version_without_changelog_or_released_already_fails(copy: Path, tmp_path: Path) -> None:
    meta = _meta(copy)
    model_info = tmp_path / "model_info.json"
    model_info.write_text(json.dumps({f"oct_classifier_v{meta['version']}": {"checksum": "", "source": ""}}))
    found = _statuses(copy, mode="min", model_info=model_info)["version and changelog"]
    assert found.status == "fail" and "released already" in found.detail
    meta["version"] = "9.9.9"
    (copy / "configs" / "metadata.json").write_text(json.dumps(meta))
    found = _statuses(copy, mode="min")["version and changelog"]
    assert found.status == "fail" and "9.9.9 has no changelog entry" in found.detail


def test_metadata_shapes_that_the_network_does_not_have_fail(copy: Path) -> None:
    meta = _meta(copy)
    meta["network_data_format"]["inputs"]["image"]["num_channels"] = 3
    del meta["task"]
    (copy / "configs" / "metadata.json").write_text(json.dumps(meta))
    found = _statuses(copy)
    assert found["network shapes"].status == "fail", found["network shapes"]
    assert found["metadata schema"].status == "fail" and "task" in found["metadata schema"].detail


def test_medicraft_bundle_verify_prints_the_table_and_exits_1_on_a_failure(copy: Path) -> None:
    cmd = [sys.executable, "-m", "medicraft_monai.cli", "bundle", "verify", str(copy), "--schema", str(SCHEMA)]
    failed = subprocess.run([*cmd, "--mode", "min"], capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1, failed.stderr
    assert "| preferred files | FAIL |" in failed.stdout and "oct_classifier: FAILED (preferred files)" in failed.stdout
    _save_network_weights(copy)
    passed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "| TorchScript export | PASS |" in passed.stdout and passed.stdout.strip().endswith("oct_classifier: passed")


def test_the_schema_check_never_downloads(copy: Path, tmp_path: Path) -> None:
    found = {c.name: c for c in verify_bundle(copy, schema=tmp_path / "absent.json", mode="min")}
    assert found["metadata schema"].status == "fail" and "nothing is downloaded" in found["metadata schema"].detail
    assert not (tmp_path / "absent.json").exists()
    found = {c.name: c for c in verify_bundle(copy, schema=None, mode="min")}
    assert found["metadata schema"].status == "n/a"
