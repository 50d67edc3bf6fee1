"""Checks every MONAI Bundle under bundles/ is held to: model-zoo layout, configs, metadata, sizes, network.

The model zoo's own checks (large files, network shapes, TorchScript export, weights) are in test_zoo_checks.py.

Each test is parametrised over the bundles found, so a new bundle is checked as soon as its folder exists.
Nothing here downloads: the metadata schema is the local copy in ../shared/zoo.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
SCHEMA = REPO_ROOT.parent / "shared" / "zoo" / "meta_schema_20240725.json"
BUNDLES = sorted(p for p in BUNDLES_DIR.iterdir() if p.is_dir() and (p / "configs").is_dir())
IDS = [p.name for p in BUNDLES]


def _role(bundle: Path) -> str:
    """ "model" for bundles with a network of their own; "evaluation" for bundles that only run evaluations."""
    with open(bundle / "configs" / "metadata.json") as f:
        return json.load(f).get("medicraft_bundle_role", "model")


#: bundles with a trainable network of their own (the evaluation bundle trains the oct_classifier bundle's)
MODEL_BUNDLES = [p for p in BUNDLES if _role(p) == "model"]
MODEL_IDS = [p.name for p in MODEL_BUNDLES]

MAX_FILE_BYTES = 25 * 1024 * 1024
REQUIRED_FILES = [
    "configs/metadata.json",
    "configs/inference.json",
    "configs/logging.conf",
    "docs/README.md",
    "LICENSE",
]
#: model-card sections (a heading containing any of the words)
README_SECTIONS = {
    "intended use": ("intended use",),
    "data": ("data",),
    "training": ("training",),
    "how to run": ("how to run", "usage"),
    "limitations": ("limitation", "limits"),
    "changelog": ("changelog",),
}
#: keys each config must define (DESIGN.md); ids use MONAI's "#" separator
TRAIN_KEYS = [
    "bundle_root",
    "ckpt_dir",
    "dataset_dir",
    "device",
    "network_def",
    "inferer",
    "train#trainer",
    "validate#evaluator",
    "run",
]
INFERENCE_KEYS = ["bundle_root", "device", "network_def", "inferer", "run"]
#: an evaluation bundle: its evaluate.json is the main config, its inference.json the per-image part
EVALUATION_KEYS = {
    "inference.json": ["bundle_root", "device", "run"],
    "evaluate.json": ["bundle_root", "device", "run"],
}
#: keys of medicraft_monai.synthesis.generator's inference.json contract (for diffusion bundles)
GENERATOR_KEYS = [
    "network_def",
    "inferer",
    "sampling_scheduler",
    "class_names",
    "image_size",
    "in_channels",
    "ckpt_path",
    "sampler",
    "num_inference_steps",
    "guidance_scale",
]
#: the file every other config of a bundle is layered on (``--config_file "['configs/common.json', ...]"``)
COMMON = "common.json"
#: overlays: each of these files is run on top of the named config (model-zoo multi_gpu_train and evaluate, finetune)
OVERLAYS = {"multi_gpu_train.json": "train.json", "evaluate.json": "train.json", "finetune.json": "train.json"}


def _metadata(bundle: Path) -> dict:
    with open(bundle / "configs" / "metadata.json") as f:
        return json.load(f)


def _is_diffusion(bundle: Path) -> bool:
    return "timesteps" in _metadata(bundle)["network_data_format"]["inputs"]


def _parser(bundle: Path, name: str) -> ConfigParser:
    files = [bundle / "configs" / name]
    if name in OVERLAYS and (bundle / "configs" / OVERLAYS[name]).is_file():
        files.insert(0, bundle / "configs" / OVERLAYS[name])
    if name != COMMON and (bundle / "configs" / COMMON).is_file():
        files.insert(0, bundle / "configs" / COMMON)
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    return parser


def _committable_files(bundle: Path) -> list[Path]:
    """Files git would commit (tracked, or untracked and not ignored); every file when git is unavailable."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", str(bundle)],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
        ).stdout
        return [REPO_ROOT / p for p in out.decode().split("\0") if p and (REPO_ROOT / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in bundle.rglob("*") if p.is_file()]


def test_the_bundles_are_found() -> None:
    assert "oct_ddpm" in IDS, f"no bundles found under {BUNDLES_DIR}"
    roles = {p.name: _role(p) for p in BUNDLES}
    assert set(roles.values()) <= {"model", "evaluation"}, roles
    for bundle in BUNDLES:
        if _role(bundle) == "evaluation":
            assert (bundle / "configs" / "evaluate.json").is_file(), (
                f"{bundle.name}: an evaluation bundle needs evaluate.json"
            )


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_model_zoo_layout(bundle: Path) -> None:
    missing = [f for f in REQUIRED_FILES if not (bundle / f).is_file()]
    assert not missing, f"{bundle.name}: missing {missing}"
    assert (bundle / "models").is_dir(), f"{bundle.name}: no models/ folder"
    licence = (bundle / "LICENSE").read_text()
    assert "License" in licence and len(licence) > 500, f"{bundle.name}: LICENSE is not a licence text"
    logging_conf = (bundle / "configs" / "logging.conf").read_text()
    assert "[loggers]" in logging_conf and "[handlers]" in logging_conf


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_no_file_over_25_mb(bundle: Path) -> None:
    files = _committable_files(bundle)
    assert files, f"{bundle.name}: no files"
    big = [(str(p.relative_to(REPO_ROOT)), p.stat().st_size) for p in files if p.stat().st_size > MAX_FILE_BYTES]
    assert not big, f"files over 25 MB (store weights in half precision): {big}"


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_every_config_parses_and_its_references_exist(bundle: Path) -> None:
    names = sorted(p.name for p in (bundle / "configs").glob("*.json") if p.name != "metadata.json")
    assert "inference.json" in names and COMMON in names, f"{bundle.name}: inference.json layered on {COMMON}"
    links = [p.name for p in (bundle / "configs").iterdir() if p.is_symlink()]
    assert not links, f"{bundle.name}: symbolic links break in zip archives of a bundle: {links}"
    for name in names:
        parser = _parser(bundle, name)
        parser.parse(reset=True)  # resolves macros and relative ids; fails on malformed ones
        refs = ReferenceResolver.find_refs_in_config(parser.get(), id="")
        unknown = sorted(r for r in refs if r not in parser)
        assert not unknown, f"{bundle.name}/configs/{name}: references to undefined ids {unknown}"
        if _role(bundle) == "evaluation":
            wanted = EVALUATION_KEYS.get(name, ["run"])
        else:
            wanted = {"train.json": TRAIN_KEYS, "inference.json": INFERENCE_KEYS}.get(name, ["run"])
        if name == COMMON:  # the shared components: no workflow of its own
            wanted = ["bundle_root"]
        missing = [k for k in wanted if k not in parser]
        assert not missing, f"{bundle.name}/configs/{name}: missing keys {missing}"
    if _is_diffusion(bundle):
        parser = _parser(bundle, "inference.json")
        missing = [k for k in GENERATOR_KEYS if k not in parser]
        assert not missing, f"{bundle.name}: inference.json breaks the DiffusionGenerator contract, missing {missing}"


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_metadata_is_valid_against_the_model_zoo_schema_offline(bundle: Path, monkeypatch) -> None:
    from monai.bundle import scripts, verify_metadata

    assert SCHEMA.is_file(), f"the local schema copy is missing: {SCHEMA}"

    def no_download(url: str, filepath, **kwargs) -> None:
        assert Path(filepath) == SCHEMA and SCHEMA.is_file(), f"verify_metadata tried to download {url}"

    monkeypatch.setattr(scripts, "download_url", no_download)
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))

    meta = _metadata(bundle)
    assert meta["schema"].endswith("meta_schema_20240725.json")
    assert meta["version"] in meta.get("changelog", {}), "the current version needs a changelog entry"
    # MONAI 1.6 renames optional_packages_version to required_packages_version on load, replacing the latter
    assert "optional_packages_version" not in meta, "use required_packages_version (MONAI >= 1.5)"
    for key in ("intended_use", "data_source", "task", "description"):
        assert meta.get(key), f"metadata needs a {key!r}"
    fmt = meta["network_data_format"]
    assert "image" in fmt["inputs"] and "pred" in fmt["outputs"]


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_readme_is_a_model_card(bundle: Path) -> None:
    text = (bundle / "docs" / "README.md").read_text()
    headings = [line.lstrip("#").strip().lower() for line in text.splitlines() if re.match(r"^#{1,4} ", line)]
    missing = [s for s, words in README_SECTIONS.items() if not any(w in h for h in headings for w in words)]
    assert not missing, f"{bundle.name}/docs/README.md lacks the model-card section(s) {missing}"
    assert "python -m monai.bundle run" in text, "the model card must show how to run the bundle"


@pytest.mark.parametrize("bundle", MODEL_BUNDLES, ids=MODEL_IDS)
def test_training_and_inference_define_the_same_network(bundle: Path) -> None:
    if not (bundle / "configs" / "train.json").is_file():
        pytest.fail(f"{bundle.name}: every bundle here is trainable; configs/train.json is missing")
    shapes = []
    for name in ("train.json", "inference.json"):
        parser = _parser(bundle, name)
        net = parser.get_parsed_content("network_def")
        shapes.append({k: tuple(v.shape) for k, v in net.state_dict().items()})
    assert shapes[0] == shapes[1], f"{bundle.name}: train.json and inference.json build different networks"
