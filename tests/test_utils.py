"""The shared helpers: atomic writes keep the old file on failure, JSON-able values, the one checkpoint loader."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medicraft_monai.networks import CheckpointError, load_state_dict, load_weights, read_checkpoint
from medicraft_monai.utils import (
    atomic_write,
    file_sha256,
    save_torch_atomic,
    to_jsonable,
    write_json_atomic,
    write_text_atomic,
)


def test_atomic_write_replaces_only_a_complete_file(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "report.json"
    write_text_atomic(out, "old\n")
    assert out.read_text() == "old\n"

    def failing(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(out, failing)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.json"]  # no temporary file left


def test_json_atomic_converts_numpy_torch_paths_and_nan(tmp_path: Path) -> None:
    obj = {"a": np.float32(0.5), "b": torch.tensor([1, 2]), "c": Path("x/y"), "d": float("nan"), 3: (np.int64(4),)}
    path = write_json_atomic(tmp_path / "o.json", obj)
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [1, 2], "c": "x/y", "d": None, "3": [4]}


def test_to_jsonable_rounds_and_names_the_bad_value() -> None:
    assert to_jsonable({"x": [1 / 3, math.inf]}, ndigits=3) == {"x": [0.333, None]}
    assert to_jsonable(np.arange(4).reshape(2, 2)) == [[0, 1], [2, 3]]
    assert to_jsonable(torch.tensor(2.5)) == 2.5
    with pytest.raises(TypeError, match=r"settings\.net\[1\]"):
        to_jsonable({"net": [1, object()]}, where="settings")


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(3 * (1 << 20) + 17)  # more than one read chunk
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 2))


@pytest.mark.parametrize("wrap", [None, "state_dict", "model", "network"])
def test_load_weights_plain_or_wrapped_and_ddp_prefix(tmp_path: Path, wrap: str | None) -> None:
    src = _net()
    state = {("module." + k if wrap == "network" else k): v for k, v in src.state_dict().items()}
    save_torch_atomic(state if wrap is None else {wrap: state, "epoch": 3}, tmp_path / "model.pt")
    dst = load_weights(_net(), tmp_path / "model.pt")
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"missing\.pt: generator checkpoint not found; train first"):
        read_checkpoint(tmp_path / "missing.pt", "generator checkpoint", hint="train first")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=r"random\.pt: cannot read the checkpoint") as err:
        read_checkpoint(tmp_path / "random.pt")
    assert "weights_only=False" not in str(err.value)
    good = tmp_path / "good.pt"
    torch.save(_net().state_dict(), good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(tmp_path / "truncated.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="holds no network state dict"):
        load_state_dict(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"good\.pt: checkpoint does not fit the bundle's network_def"):
        load_weights(torch.nn.Linear(5, 5), good)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_holding_code_is_refused(tmp_path: Path) -> None:
    torch.save({"x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not loaded for safety"):
        read_checkpoint(tmp_path / "evil.pt")
