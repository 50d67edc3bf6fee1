"""Every bad checkpoint given to ``medicraft multiply --ckpt_path`` ends in one clear line naming the file and what is
wrong with it (exit status 2, no traceback, no torch advice to load with ``weights_only=False``), and the file is
left as it was: random bytes, a truncated file, an empty file, a plain Python pickle, a torch file holding objects
that are not loaded for safety, a file holding no state dict, a folder, a missing file.
"""

from __future__ import annotations

import argparse
import pickle
import random
import sys
from pathlib import Path

import pytest
import torch
from _bad_inputs import one_per_class_datalist
from _subprocess import run_group
from test_multiply import make_tiny_bundle

from medicraft_monai.networks import CheckpointError, load_state_dict, read_checkpoint

MEDICRAFT = [sys.executable, "-c", "from medicraft_monai.cli import main; main()"]

#: kind -> (how to make it from the good checkpoint's bytes, words the message must hold)
BAD_CHECKPOINTS = {
    "random_bytes": (
        lambda p, good: p.write_bytes(random.Random(0).randbytes(4096)),
        "neither a zip archive nor a pickle",
    ),
    # random bytes that happen to open like a pickle (0x80, once in 256 files): still not called a pickle
    "random_bytes_0x80": (
        lambda p, good: p.write_bytes(b"\x80\x04" + random.Random(1).randbytes(4094) + b"\x00"),
        "neither a zip archive nor a pickle",
    ),
    "truncated": (lambda p, good: p.write_bytes(good[: len(good) // 2]), "truncated (its zip archive has no end)"),
    "empty": (lambda p, good: p.write_bytes(b""), "empty (0 bytes)"),
    "plain_pickle": (lambda p, good: p.write_bytes(pickle.dumps({"w": [1.0, 2.0]})), "a plain Python pickle"),
    "foreign_objects": (
        lambda p, good: torch.save({"args": argparse.Namespace(lr=1.0)}, p),
        "objects other than tensors",
    ),
    "no_state_dict": (lambda p, good: torch.save({"epoch": 3}, p), "holds no network state dict"),
    "folder": (lambda p, good: p.mkdir(), "is a folder"),
    "missing": (lambda p, good: None, "checkpoint not found"),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, oct2017_dir: Path, oct2017_manifest) -> tuple[Path, Path]:
    """The tiny random-weight generator bundle of test_multiply and a datalist of one real B-scan per class."""
    root = tmp_path_factory.mktemp("ckpt")
    bundle = make_tiny_bundle(root / "bundle")
    return bundle, one_per_class_datalist(root / "datalist.json", oct2017_dir, oct2017_manifest)


def _make(kind: str, folder: Path, good: bytes) -> Path:
    path = folder / f"{kind}.pt"
    BAD_CHECKPOINTS[kind][0](path, good)
    return path


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("kind", sorted(BAD_CHECKPOINTS))
def test_read_checkpoint_names_the_file_and_the_problem(kind: str, tmp_path: Path, setup) -> None:
    bundle, _ = setup
    path = _make(kind, tmp_path, (bundle / "models" / "model.pt").read_bytes())
    try:
        load_state_dict(path, "generator checkpoint")
    except CheckpointError as err:
        text = str(err)
    else:
        pytest.fail(f"{kind}: no error")
    assert str(path) in text and BAD_CHECKPOINTS[kind][1] in text, text
    assert "weights_only=False" not in text and "\n" not in text and len(text) < 400, text


def test_a_good_checkpoint_still_reads(setup) -> None:
    bundle, _ = setup
    assert isinstance(read_checkpoint(bundle / "models" / "model.pt"), dict)


@pytest.mark.parametrize("kind", sorted(BAD_CHECKPOINTS))
def test_multiply_command_reports_a_bad_checkpoint_in_one_line(kind: str, tmp_path: Path, setup) -> None:
    bundle, datalist = setup
    bad_dir = tmp_path / "given"
    bad_dir.mkdir()
    path = _make(kind, bad_dir, (bundle / "models" / "model.pt").read_bytes())
    before = _snapshot(bad_dir)
    cmd = [*MEDICRAFT, "multiply", str(datalist), str(tmp_path / "out"), "--bundle_root", str(bundle)]
    proc = run_group([*cmd, "--ckpt_path", str(path), "--progress", "false"], timeout=120)
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "weights_only=False" not in proc.stderr, proc.stderr[-2000:]
    assert last.startswith("medicraft: error: ") and str(path) in last and BAD_CHECKPOINTS[kind][1] in last, last
    assert _snapshot(bad_dir) == before


def test_every_torch_load_in_the_package_is_the_one_loader_or_weights_only() -> None:
    """Checkpoints are read by one loader (networks.checkpoint.read_checkpoint, ``weights_only=True``); any other
    ``torch.load`` in the package or the bundles' Python (the latent cache, which is not a checkpoint) passes
    ``weights_only=True`` too, so no file can run code and no load ends in torch's advice to drop it."""
    import ast

    import medicraft_monai

    package = Path(medicraft_monai.__file__).parent
    files = [*package.rglob("*.py"), *(package.parent / "bundles").rglob("*.py")]
    loads: dict[str, list[bool]] = {}
    for path in sorted(files):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            func = getattr(node, "func", None)
            if isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.attr == "load":
                if isinstance(func.value, ast.Name) and func.value.id == "torch":
                    safe = any(
                        k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                        for k in node.keywords
                    )
                    loads.setdefault(path.relative_to(package.parent).as_posix(), []).append(safe)
    assert loads.get("medicraft_monai/networks/checkpoint.py") == [True], loads
    unsafe = {f: s for f, s in loads.items() if not all(s)}
    assert not unsafe, f"torch.load without weights_only=True in {sorted(unsafe)}"
    cache = "medicraft_monai/data/latent_cache.py"  # encoded latents, not a checkpoint
    assert set(loads) <= {"medicraft_monai/networks/checkpoint.py", cache}, f"torch.load in {sorted(loads)}"
