"""medicraft_monai.networks.latest_checkpoint: the training-state checkpoint a resumed run restores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medicraft_monai.networks import latest_checkpoint


def test_latest_checkpoint_takes_the_newest_complete_file(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path, required=False) is None
    with pytest.raises(FileNotFoundError, match="resume=true but there is no training checkpoint"):
        latest_checkpoint(tmp_path)
    for name in ("checkpoint_iteration=2.pt", "checkpoint_final_iteration=8.pt", "checkpoint_iteration=10.pt"):
        torch.save({"w": torch.zeros(1000)}, tmp_path / name)
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_iteration=10.pt")
    # a write cut off by a kill: the previous checkpoint is used
    cut = tmp_path / "checkpoint_iteration=10.pt"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_final_iteration=8.pt")
    (tmp_path / "other_iteration=99.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_final_iteration=8.pt")


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_its_first_stage(tmp_path: Path) -> None:
    """distill.json's case: stopped while making teacher trajectories, ``--resume true`` trains from the start."""
    ckpts, trajectories = tmp_path / "checkpoints", tmp_path / "trajectories"
    (trajectories / "training").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):  # started, but nothing made yet
        latest_checkpoint(ckpts, started=trajectories)
    torch.save({"x": torch.zeros(2)}, trajectories / "training" / "chunk_00000.pt")
    assert latest_checkpoint(ckpts, started=trajectories) is None
    ckpts.mkdir()
    torch.save({"w": torch.zeros(2)}, ckpts / "checkpoint_iteration=4.pt")
    assert latest_checkpoint(ckpts, started=trajectories) == str(ckpts / "checkpoint_iteration=4.pt")
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):  # another work_dir: fails as before
        latest_checkpoint(tmp_path / "elsewhere", started=tmp_path / "nothing")
