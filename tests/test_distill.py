"""Distillation into a few-step student (``sampler: distilled``): the grids, the targets, the teacher trajectories, the
``oct_ddpm`` bundle's ``configs/distill.json`` run through ``monai.bundle`` (with ``--resume``), and the shipped student.

The teacher of the unit tests is a tiny UNet with random weights: what is checked (the student's grid is on the
teacher's, a target makes one step land on the teacher's next state, trajectories are the teacher's samples) holds
for any weights. The bundle test distils the shipped ``oct_ddpm`` weights with tiny settings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _subprocess import monai_bundle_cmd, run_checked
from test_diffusion_core import NUM_CLASSES, tiny_unet

from medicraft_monai.engines import DistillationPrepareBatch, TrajectoryDataset, make_teacher_trajectories
from medicraft_monai.engines.records import GeneratorError
from medicraft_monai.inferers import ClassConditionedDiffusionInferer
from medicraft_monai.networks import latest_checkpoint
from medicraft_monai.networks.checkpoint import CheckpointError
from medicraft_monai.schedulers import DistilledScheduler, make_scheduler
from medicraft_monai.synthesis import DiffusionGenerator
from medicraft_monai.utils import file_sha256

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "oct_ddpm"
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]
#: the bundle's student step count (common.json) and teacher steps per student step (distill.json)
STEPS = json.loads((BUNDLE / "configs" / "common.json").read_text())["distilled_steps"]
SUBSTEPS = json.loads((BUNDLE / "configs" / "distill.json").read_text())["substeps"]
TINY_CLASSES = CLASSES[:NUM_CLASSES]


def _lambda(s: DistilledScheduler, t: np.ndarray) -> np.ndarray:
    return np.log(s._train_alpha[t] / s._train_sigma[t])


@pytest.mark.parametrize("schedule", ["linear_beta", "scaled_linear_beta"])
def test_the_student_grid_is_every_kth_point_of_the_teacher_run(schedule: str) -> None:
    s = make_scheduler("distilled", 1000, schedule, prediction_type="v_prediction")
    assert isinstance(s, DistilledScheduler)
    for n in (1, 2, 3, 4, 6):
        student = s.sampling_timesteps(n)
        assert len(student) == n and student[0] == 999 and np.all(np.diff(student) < 0)
        # the n steps are the first n of n + 1 points evenly spaced in lambda, ending at timestep 0
        lam = _lambda(s, np.append(student, 0))
        step = (lam[-1] - lam[0]) / n
        # rounding to integer timesteps moves a point by at most half a timestep's change of lambda
        slack = np.abs(np.diff(_lambda(s, np.arange(1000)))).max() / 2
        np.testing.assert_allclose(np.diff(lam), step, atol=2 * slack)
        for k in (2, 3, 4):
            teacher = s.teacher_timesteps(n, k)
            assert len(teacher) == n * k + 1 and teacher[-1] == 0
            np.testing.assert_array_equal(teacher[::k][:n], student)
    s.set_timesteps(4)
    assert s.timesteps.tolist() == s.sampling_timesteps(4).tolist()
    assert s._sigma[-1] == 0.0 and s._alpha[-1] == 1.0  # the last step lands on the clean image
    with pytest.raises(ValueError, match="substeps must be at least 1"):
        s.teacher_timesteps(4, 0)
    with pytest.raises(ValueError, match="does not pass through"):
        s.teacher_timesteps(4, 120)  # 481 points: rounding to training timesteps pushes the shared ones


def test_a_schedule_whose_grids_do_not_share_their_points_is_refused() -> None:
    # MONAI's cosine schedule drops lambda steeply in its last timesteps, so lambda-uniform points crowd at T - 1 and
    # rounding to training timesteps moves them differently in the teacher's and the student's grids
    s = make_scheduler("distilled", 1000, "cosine", prediction_type="v_prediction")
    with pytest.raises(ValueError, match="does not pass through the 4-step student grid"):
        s.teacher_timesteps(4, 2)


def _tiny_teacher(tmp_path: Path, guidance_scale: float = 1.0) -> DiffusionGenerator:
    """A tiny UNet with random weights (its zero-initialised layers re-drawn, so its output depends on the input and
    the class) as a DPM-Solver++ generator of the classes ``TINY_CLASSES``."""
    net = tiny_unet(random_output=True)
    ckpt = tmp_path / "teacher.pt"
    if not ckpt.is_file():
        torch.save(net.state_dict(), ckpt)
    sched = make_scheduler("dpmpp_2m", 1000, "linear_beta", prediction_type="v_prediction")
    inferer = ClassConditionedDiffusionInferer(sched, null_class=NUM_CLASSES, guidance_scale=guidance_scale)
    return DiffusionGenerator.from_components(
        net,
        inferer,
        sched,
        TINY_CLASSES,
        (16, 32),
        ckpt,
        sampler="dpmpp_2m",
        guidance_scale=guidance_scale,
        device="cpu",
    )


def _student() -> DistilledScheduler:
    return make_scheduler("distilled", 1000, "linear_beta", prediction_type="v_prediction")


def test_trajectories_are_the_teacher_samples_and_targets_land_on_the_next_state(tmp_path: Path) -> None:
    teacher = _tiny_teacher(tmp_path)
    files = make_teacher_trajectories(teacher, _student(), tmp_path / "traj", 3, 4, 2, batch_size=3, progress=False)
    assert [f.name for f in files] == ["chunk_00000.pt", "chunk_00001.pt", "chunk_00002.pt"]  # 9 trajectories
    chunk = torch.load(files[0], weights_only=True)
    assert chunk["states"].shape == (3, 4, 1, 16, 32) and chunk["labels"].tolist() == [0, 1, 2]
    # the final states are the teacher's own 9-step DPM-Solver++ samples from the same seeds
    seeds = chunk["seeds"].tolist()
    own = teacher.generate([TINY_CLASSES[c] for c in chunk["labels"]], seeds, num_inference_steps=9)
    np.testing.assert_allclose(((chunk["final"].clamp(-1, 1) + 1) / 2).numpy(), own, atol=1e-5)
    # the first state is the seeded noise
    from medicraft_monai.inferers import seeded_noise

    torch.testing.assert_close(chunk["states"][:, 0], seeded_noise(seeds, (1, 16, 32))[0])

    # one first-order step of the student with the target output lands on the teacher's next state
    student = _student()
    data = TrajectoryDataset(files, student)
    assert len(data) == 9 * 4
    states = torch.cat([torch.load(f, weights_only=True)["states"] for f in files])
    finals = torch.cat([torch.load(f, weights_only=True)["final"] for f in files])
    assert (finals - states[:, -1]).abs().mean() > 0.01  # the teacher's last step still moves the image
    student.set_timesteps(4)
    for j in range(9):
        x = states[j, 0].unsqueeze(0)
        for i, t in enumerate(student.timesteps):
            item = data[j * 4 + i]
            assert int(item["timestep"]) == int(t) and int(item["label"]) == j % NUM_CLASSES
            torch.testing.assert_close(item["image"], states[j, i])
            x = student.step(item["target"].unsqueeze(0), int(t), states[j, i].unsqueeze(0))[0]
            want = states[j, i + 1] if i + 1 < 4 else finals[j]
            # targets are stored in float32: the step reproduces the state to float32 rounding of its terms
            torch.testing.assert_close(x[0], want, atol=1e-4, rtol=1e-4)
    # the prepare-batch hands the state to the UNet with its timestep and class
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=5)))
    inputs, target, args, kwargs = DistillationPrepareBatch()(batch, "cpu")
    assert inputs.shape == target.shape == (5, 1, 16, 32) and args == ()
    assert kwargs["timesteps"].dtype == torch.long and kwargs["class_labels"].tolist() == [0, 0, 0, 0, 1]


def test_trajectories_resume_and_refuse_chunks_of_other_settings(tmp_path: Path) -> None:
    teacher = _tiny_teacher(tmp_path)
    folder = tmp_path / "traj"
    files = make_teacher_trajectories(teacher, _student(), folder, 1, 2, 2, batch_size=2, progress=False)
    kept_mtime = files[0].stat().st_mtime_ns
    lost = torch.load(files[1], weights_only=True)
    files[1].unlink()  # an interrupted run: the second chunk never written
    again = make_teacher_trajectories(teacher, _student(), folder, 1, 2, 2, batch_size=2, progress=False)
    assert again == files
    assert files[0].stat().st_mtime_ns == kept_mtime  # kept, not redone
    remade = torch.load(files[1], weights_only=True)
    assert remade["seeds"].tolist() == [2] and remade["labels"].tolist() == [2]  # 3 trajectories, chunks of 2
    torch.testing.assert_close(remade["states"], lost["states"], rtol=0, atol=0)  # the same seeds give the same run
    torch.testing.assert_close(remade["final"], lost["final"], rtol=0, atol=0)
    # a damaged chunk is named when read, and made again by a rerun
    first = torch.load(files[0], weights_only=True)
    files[0].write_bytes(files[0].read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"chunk_00000\.pt.*trajectory chunk"):
        TrajectoryDataset(files, _student())
    make_teacher_trajectories(teacher, _student(), folder, 1, 2, 2, batch_size=2, progress=False)
    torch.testing.assert_close(torch.load(files[0], weights_only=True)["final"], first["final"], rtol=0, atol=0)
    guided = _tiny_teacher(tmp_path, guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"chunk_00000\.pt: made with other distillation settings \(guidance_scale\)"):
        make_teacher_trajectories(guided, _student(), folder, 1, 2, 2, batch_size=2, progress=False)
    ddim = DiffusionGenerator.from_components(
        guided.network, guided.inferer, make_scheduler("ddim", 1000), TINY_CLASSES, (16, 32), tmp_path / "teacher.pt"
    )
    with pytest.raises(ValueError, match="DPM-Solver"):
        make_teacher_trajectories(ddim, _student(), tmp_path / "other", 1, 2, 2, progress=False)


TINY_DISTILL = {
    "trajectories_per_class": 2,
    "val_trajectories_per_class": 1,
    "teacher_batch_size": 4,
    "batch_size": 8,
    "log_interval": 1,
    "ckpt_interval": 2,
    "grid_per_class": 1,
    "progress": False,
}


def test_distill_bundle_trains_resumes_and_samples_with_sampler_distilled(tmp_path: Path) -> None:
    """configs/distill.json on the shipped oct_ddpm weights, tiny settings, through ``python -m monai.bundle run``:
    one epoch, then ``--resume true`` to a second; the student loads with ``--sampler distilled``."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("model.pt", "diffusion.json"):
        (models / name).write_bytes((BUNDLE / "models" / name).read_bytes())
    configs = [BUNDLE / "configs" / "distill.json"]
    common = {"ckpt_dir": str(models), "work_dir": str(tmp_path / "work"), **TINY_DISTILL}
    run_checked(monai_bundle_cmd(configs, BUNDLE, max_epochs=1, **common), timeout=600)
    ckpts = tmp_path / "work" / "checkpoints"
    first = latest_checkpoint(ckpts)
    per_epoch = 8 * STEPS // 8  # 8 trajectories x STEPS steps / batch 8
    assert first.endswith(f"checkpoint_final_iteration={per_epoch}.pt")
    student = models / "distilled" / "model.pt"
    state = torch.load(student, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    record = json.loads((models / "distilled" / "diffusion.json").read_text())
    assert record["sampler"] == "distilled" and record["num_inference_steps"] == STEPS
    assert record["teacher"]["model_sha256"] == file_sha256(BUNDLE / "models" / "model.pt")
    assert record["teacher"]["num_inference_steps"] == STEPS * SUBSTEPS + 1
    # by default the student starts from the teacher's weights, and its trajectories from the bundle's seed
    assert record["teacher"]["init_sha256"] == record["teacher"]["model_sha256"]
    assert record["teacher"]["trajectory_seed"] == 0
    assert (tmp_path / "work" / "logs" / "samples" / "samples_epoch_0001.png").is_file()
    first_weights = file_sha256(student)

    run_checked(monai_bundle_cmd(configs, BUNDLE, max_epochs=2, resume=True, **common), timeout=600)
    assert latest_checkpoint(ckpts).endswith(f"checkpoint_final_iteration={2 * per_epoch}.pt")  # continued
    assert file_sha256(student) != first_weights
    assert len(list((tmp_path / "work" / "trajectories" / "training").glob("chunk_*.pt"))) == 2  # made once

    # stopped while making the teacher runs, before the first checkpoint: --resume true keeps them and trains
    stopped = tmp_path / "stopped"
    shutil.copytree(tmp_path / "work" / "trajectories", stopped / "trajectories")
    run_checked(monai_bundle_cmd(configs, BUNDLE, max_epochs=1, resume=True, **{**common, "work_dir": str(stopped)}))
    assert latest_checkpoint(stopped / "checkpoints").endswith(f"checkpoint_final_iteration={per_epoch}.pt")
    # nothing to resume in that work_dir: it stops at once, before making any teacher run
    empty = tmp_path / "empty"
    failed = run_checked(
        monai_bundle_cmd(configs, BUNDLE, resume=True, **{**common, "work_dir": str(empty)}), expect_ok=False
    )
    assert failed.returncode != 0 and "no training checkpoint" in failed.stderr + failed.stdout
    assert not (empty / "trajectories").exists()

    gen = DiffusionGenerator.from_bundle(
        BUNDLE, device="cpu", overrides={"ckpt_dir": str(models), "sampler": "distilled"}
    )
    assert isinstance(gen.scheduler, DistilledScheduler) and gen.num_inference_steps == STEPS
    assert gen.checksum == file_sha256(student)
    images = gen.generate(["DME", "NORMAL"], [3, 4])
    assert images.shape == (2, 1, 32, 64) and np.isfinite(images).all()
    with pytest.raises(GeneratorError, match=f"num_inference_steps={STEPS}.*override --num_inference_steps {STEPS}"):
        DiffusionGenerator.from_bundle(
            BUNDLE,
            device="cpu",
            overrides={"ckpt_dir": str(models), "sampler": "distilled", "num_inference_steps": 8},
        )
    with pytest.raises(GeneratorError, match="sampler='distilled'"):  # the student's weights with another sampler
        DiffusionGenerator.from_bundle(BUNDLE, ckpt_path=student, device="cpu", overrides={"ckpt_dir": str(models)})

    # training continued from that student on new trajectories (another seed): the record names where it started
    previous = tmp_path / "previous_student.pt"
    previous.write_bytes(student.read_bytes())
    more = {**common, "work_dir": str(tmp_path / "more"), "init_ckpt_path": str(previous), "seed": 1}
    run_checked(monai_bundle_cmd(configs, BUNDLE, max_epochs=1, **more), timeout=600)
    record = json.loads((models / "distilled" / "diffusion.json").read_text())
    assert record["teacher"]["init_sha256"] == file_sha256(previous) != record["teacher"]["model_sha256"]
    assert record["teacher"]["trajectory_seed"] == 1
    chunk = torch.load(next((tmp_path / "more" / "trajectories" / "training").glob("chunk_*.pt")), weights_only=True)
    assert chunk["seeds"].min() >= 1_000_000  # seed set 1, not the first run's noise
    assert file_sha256(student) != file_sha256(previous)


# --------------------------------------------------------------------------------------------------------------------
# the shipped student (bundles/oct_ddpm/models/distilled)
# --------------------------------------------------------------------------------------------------------------------
STUDENT = BUNDLE / "models" / "distilled" / "model.pt"


def test_the_shipped_student_is_float16_within_the_zoo_limit_and_records_its_teacher() -> None:
    assert STUDENT.stat().st_size <= 25 * 1024**2
    state = torch.load(STUDENT, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    record = json.loads((STUDENT.parent / "diffusion.json").read_text())
    teacher = json.loads((BUNDLE / "models" / "diffusion.json").read_text())
    assert {k: record[k] for k in teacher} == teacher  # the teacher's settings
    assert (record["sampler"], record["num_inference_steps"]) == ("distilled", STEPS)  # the bundle's distilled_steps
    assert record["teacher"]["model_sha256"] == file_sha256(BUNDLE / "models" / "model.pt")
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert file_sha256(STUDENT) in meta["changelog"][meta["version"]]


def test_the_shipped_student_follows_its_teacher_in_2_steps_where_the_teacher_cannot() -> None:
    """The student's 2-step images against the teacher run it was distilled to reproduce (DPM-Solver++, 11 steps,
    from the same seeds), beside the teacher sampled in 2 steps by DPM-Solver++ and by DDIM: distillation must bring
    the error well below what the teacher's solvers reach with the same number of passes."""
    classes = [c for c in CLASSES for _ in range(4)]
    # not the distillation seeds (seed set s draws s * 1,000,000 + j; the shipped students used sets 0-7)
    seeds = [90_000 + i for i in range(len(classes))]
    teacher = DiffusionGenerator.from_bundle(BUNDLE, device="cpu")
    record = json.loads((STUDENT.parent / "diffusion.json").read_text())["teacher"]
    assert (record["sampler"], record["num_inference_steps"]) == ("dpmpp_2m", 11) == ("dpmpp_2m", 2 * SUBSTEPS + 1)
    target = teacher.generate(classes, seeds, num_inference_steps=record["num_inference_steps"])
    student = DiffusionGenerator.from_bundle(BUNDLE, device="cpu", overrides={"sampler": "distilled"})
    assert student.num_inference_steps == STEPS == 2
    assert student.provenance("CNV", 0)["teacher_sha256"] == teacher.checksum

    def rmse(images: np.ndarray) -> float:
        return float(np.sqrt(((images - target) ** 2).mean()))

    err_student = rmse(student.generate(classes, seeds))
    err_dpm = rmse(teacher.generate(classes, seeds, num_inference_steps=STEPS))
    ddim = DiffusionGenerator.from_bundle(BUNDLE, device="cpu", overrides={"sampler": "ddim"})
    err_ddim = rmse(ddim.generate(classes, seeds, num_inference_steps=STEPS))
    assert err_student < 0.5 * min(err_dpm, err_ddim), (err_student, err_dpm, err_ddim)
