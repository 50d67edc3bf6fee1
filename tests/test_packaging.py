"""The package as users install it: the built wheel (and an editable install) outside the checkout.

The source tree is copied to a temporary folder (so stale ``build/`` files of the checkout cannot leak into the
wheel), built with ``pip wheel --no-build-isolation`` (no network) and installed with ``--no-deps --no-index`` into a
fresh virtual environment that sees the project's ``.venv`` packages through a ``.pth`` file, so nothing is
downloaded. From a working directory outside the checkout, the shipped bundles must resolve inside that
environment's site-packages, ``medicraft_monai.__version__`` must be pyproject's version, and a real bundle must run
through ``python -m monai.bundle run``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import sysconfig
from pathlib import Path

import pytest
from _subprocess import REPO_ROOT, cli_overrides, run_group

from medicraft_monai.bundles import bundle_path, config_files, list_bundles

#: what the wheel is built from (the rest of the checkout is not part of the distribution)
SOURCES = ("pyproject.toml", "setup.py", "setup.cfg", "README.md", "medicraft_monai", "bundles")
#: outputs that may lie in a developer's checkout (all git-ignored) and are no part of a clean build
IGNORED = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.egg-info", "*.pt", "*.ts", "training", "logs", "eval", "synthetic", "bin", "model"
)
PROBE = """
import importlib.util, json, sys
import medicraft_monai
from medicraft_monai.bundles import bundle_path, bundles_root, list_bundles
print(json.dumps({
    "package": medicraft_monai.__file__,
    "version": medicraft_monai.__version__,
    "zoo_package": importlib.util.find_spec("medicraft_monai.zoo") is not None,
    "root": str(bundles_root()),
    "oct_ddpm": str(bundle_path("oct_ddpm")),
    "bundles": list_bundles(),
}))
"""


def _run(cmd: list[str], cwd: Path, timeout: float = 240) -> str:
    proc = run_group([str(c) for c in cmd], timeout, cwd=cwd)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))}\nfailed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-5000:]}")
    return proc.stdout


def _venv(path: Path) -> tuple[Path, Path]:
    """A fresh virtual environment without pip (the project's pip installs into it); its python, site-packages."""
    _run([sys.executable, "-m", "venv", "--without-pip", path], cwd=path.parent)
    python = path / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=path).strip())
    return python, site


def _see_project_packages(site: Path) -> None:
    """Let the environment import the project's dependencies (torch, monai, ...) from .venv, without downloads.

    A path listed in a ``.pth`` file is appended to ``sys.path`` but its own ``.pth`` files are not run, so the
    checkout's editable install in .venv stays invisible; the environment's own site-packages come first.
    """
    (site / "_project_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


def _pip(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *map(str, args)]


def _probe(python: Path, cwd: Path) -> dict:
    return json.loads(_run([python, "-c", PROBE], cwd=cwd).strip().splitlines()[-1])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        item = REPO_ROOT / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=IGNORED)
        else:
            shutil.copy2(item, src / name)
    return src


def _version() -> str:
    """pyproject.toml's version (tomllib is not in Python 3.10)."""
    return re.search(r'(?m)^version = "([^"]+)"$', (REPO_ROOT / "pyproject.toml").read_text()).group(1)


def _checkout_bundles() -> list[str]:
    return sorted(p.name for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs").is_dir())


@pytest.mark.slow
def test_the_wheel_ships_the_bundles_and_runs_one_outside_the_checkout(source: Path, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _run(_pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, source), cwd=tmp_path)
    (wheel,) = wheels.glob("medicraft_monai-*.whl")
    assert wheel.name.startswith(f"medicraft_monai-{_version()}-")

    python, site = _venv(tmp_path / "venv")
    # installed before .venv is visible, so pip sees no other medicraft-monai to replace
    _run(_pip("--python", python, "install", "-q", "--no-deps", "--no-index", wheel), cwd=tmp_path)
    _see_project_packages(site)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    info = _probe(python, elsewhere)
    assert Path(info["package"]).is_relative_to(site)
    assert info["version"] == _version()
    assert info["zoo_package"]
    root, ddpm = Path(info["root"]), Path(info["oct_ddpm"])
    assert root.is_relative_to(site) and not root.is_relative_to(REPO_ROOT)
    assert ddpm == root / "oct_ddpm"
    assert info["bundles"] == _checkout_bundles()
    for name in info["bundles"]:  # every bundle ships its configs, docs and licence
        assert (root / name / "configs" / "metadata.json").is_file()
        assert (root / name / "configs" / "logging.conf").is_file()
        assert (root / name / "docs" / "README.md").is_file()
        assert (root / name / "LICENSE").is_file()

    # the console script and a real bundle, with the shipped bundle as bundle_root
    _run(
        [tmp_path / "venv" / "bin" / "medicraft", "phantom", "data", "--exams", "9", "--planes", "2"]
        + ["--height", "64", "--width", "128"],
        cwd=elsewhere,
    )
    tiny = {
        "datalist": str(elsewhere / "data" / "datalist.json"),
        "ckpt_dir": str(elsewhere / "model"),
        "log_dir": str(elsewhere / "logs"),
        "class_names": ["healthy", "benign", "melanoma"],  # the phantom's (the bundle's default: OCT2017's)
        "image_size": [16, 32],
        "channels": [8, 16],
        "attention_levels": [False, False],
        "num_res_blocks": 1,
        "num_head_channels": 8,
        "norm_num_groups": 8,
        "use_flash_attention": False,
        "max_epochs": 1,
        "batch_size": 8,
        "num_workers": 0,
        "val_interval": 1,
        "grid_interval": 1,
        "grid_steps": 2,
        "grid_per_class": 1,
    }
    configs = [str(p) for p in config_files(ddpm, "train.json")]
    run = [python, "-m", "monai.bundle", "run", "--config_file", configs[0] if len(configs) == 1 else repr(configs)]
    _run(run + ["--bundle_root", ddpm, *cli_overrides(tiny)], cwd=elsewhere)
    assert (elsewhere / "model" / "model.pt").is_file()
    assert not (ddpm / "models" / "model.pt").exists()


@pytest.mark.slow
def test_an_editable_install_finds_the_bundles_of_its_checkout(source: Path, tmp_path: Path) -> None:
    python, site = _venv(tmp_path / "venv")
    # the project's pip and setuptools build it (the fresh environment has neither); -I: .venv is left alone
    _run(
        _pip(
            "install", "-q", "-I", "--no-deps", "--no-build-isolation", "--prefix", python.parent.parent, "-e", source
        ),
        cwd=tmp_path,
    )
    _see_project_packages(site)
    info = _probe(python, tmp_path)
    assert info["zoo_package"]  # found through the package the editable install maps, not a path guess
    assert Path(info["root"]).resolve() == (source / "bundles").resolve()
    assert info["bundles"] == _checkout_bundles()
    assert info["version"] == _version()


def test_a_source_tree_that_was_never_installed_finds_the_bundles_beside_the_package(
    source: Path, tmp_path: Path
) -> None:
    python, site = _venv(tmp_path / "venv")
    _see_project_packages(site)
    proc = run_group(
        [str(python), "-c", PROBE],
        120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(source), "PYTHONSAFEPATH": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not info["zoo_package"] and Path(info["root"]) == source / "bundles"
    assert info["bundles"] == _checkout_bundles()


def test_an_unknown_bundle_name_lists_the_known_ones() -> None:
    with pytest.raises(
        FileNotFoundError, match=r"'oct_nope' is not a bundle shipped with medicraft_monai \(known bundles: oct_"
    ):
        bundle_path("oct_nope")
    assert set(_checkout_bundles()) == set(list_bundles())
