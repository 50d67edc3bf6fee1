"""The diffusion settings travel with the weights: training writes ``diffusion.json`` next to ``model.pt``, and a
generator refuses a config that samples with another prediction type, noise schedule, timestep count, class list
or image size (those give pure noise without any other error).

The end-to-end part trains the real oct_ddpm bundle through ``python -m monai.bundle run`` with the tiny settings
of tests/test_oct_ddpm.py (imported from there, with its real OCT2017 datalist fixture).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.networks.nets import DiffusionModelUNet

# the oct_ddpm tests' tiny settings, command-line helpers and real-data datalist fixture
from test_oct_ddpm import TINY_NET, TINY_TRAIN, bundle_cmd, datalist, run  # noqa: F401

from medicraft_monai.engines import DiffusionSettingsWriter
from medicraft_monai.engines.records import GeneratorError, check_diffusion_settings
from medicraft_monai.synthesis.generator import DiffusionGenerator

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "bundles"
CLASSES = TINY_NET["class_names"]
SETTINGS = {
    "prediction_type": "v_prediction",
    "noise_schedule": "scaled_linear_beta",
    "num_train_timesteps": 1000,
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "class_names": ["CNV", "DME", "DRUSEN", "NORMAL"],
    "image_size": [32, 64],
}


def write_settings(folder: Path, settings: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "diffusion.json").write_text(json.dumps(settings))
    ckpt = folder / "model.pt"
    ckpt.write_bytes(b"weights")
    return ckpt


# --------------------------------------------------------------------------------------------------------------------
# the writer
# --------------------------------------------------------------------------------------------------------------------
def test_the_writer_writes_exactly_the_settings_when_the_engine_starts(tmp_path: Path) -> None:
    path = tmp_path / "models" / "diffusion.json"
    settings = {**SETTINGS, "image_size": (32, 64), "num_train_timesteps": np.int64(1000), "beta_end": np.float32(0.5)}
    seen_at_first_iteration: list[dict] = []
    engine = Engine(lambda e, batch: None)
    engine.add_event_handler(
        Events.ITERATION_STARTED(once=1), lambda e: seen_at_first_iteration.append(json.loads(path.read_text()))
    )
    DiffusionSettingsWriter(path, settings).attach(engine)
    assert not path.exists(), "nothing is written before training starts"
    engine.run([0, 1], max_epochs=1)

    expected = {**SETTINGS, "beta_end": 0.5}
    assert seen_at_first_iteration == [expected], "the file must exist from the first iteration on"
    assert json.loads(path.read_text()) == expected
    assert isinstance(json.loads(path.read_text())["num_train_timesteps"], int)
    assert sorted(p.name for p in path.parent.iterdir()) == ["diffusion.json"], "no temporary file left behind"


def test_a_resumed_run_refuses_settings_other_than_those_of_its_weights(tmp_path: Path) -> None:
    path = tmp_path / "models" / "diffusion.json"
    write_settings(path.parent, SETTINGS)
    iterations: list[int] = []
    engine = Engine(lambda e, batch: iterations.append(e.state.iteration))
    DiffusionSettingsWriter(path, {**SETTINGS, "prediction_type": "epsilon"}, resume=True).attach(engine)
    with pytest.raises(GeneratorError, match="trained with prediction_type='v_prediction'.*resumes training with") as e:
        engine.run([0, 1], max_epochs=1)
    assert "--prediction_type v_prediction" in str(e.value) and str(path) in str(e.value)
    assert iterations == [], "no training step with mixed settings"
    assert json.loads(path.read_text()) == SETTINGS, "the record of the trained weights is kept"
    # the same settings resume; a fresh (not resumed) run may change them and rewrites the record
    DiffusionSettingsWriter(path, SETTINGS, resume=True)(None)
    assert json.loads(path.read_text()) == SETTINGS
    DiffusionSettingsWriter(path, {**SETTINGS, "prediction_type": "epsilon"}, resume=False)(None)
    assert json.loads(path.read_text())["prediction_type"] == "epsilon"


def test_the_writer_refuses_settings_that_are_not_json(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="settings.scheduler"):
        DiffusionSettingsWriter(tmp_path / "diffusion.json", {"scheduler": object()})


# --------------------------------------------------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------------------------------------------------
def test_check_without_a_settings_file_returns_none_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    with caplog.at_level(logging.WARNING, logger="medicraft_monai.synthesis.generator"):
        assert check_diffusion_settings(ckpt, SETTINGS) is None
        assert check_diffusion_settings(ckpt, SETTINGS) is None
    warnings = [r.getMessage() for r in caplog.records if "cannot be checked" in r.getMessage()]
    assert len(warnings) == 1 and str(ckpt) in warnings[0]


def test_check_accepts_equal_settings_in_any_spelling(tmp_path: Path) -> None:
    ckpt = write_settings(tmp_path, SETTINGS)
    same = {
        **SETTINGS,
        "class_names": tuple(SETTINGS["class_names"]),
        "image_size": (np.int64(32), 64.0),
        "num_train_timesteps": 1000.0,
        "beta_start": np.float64(0.0015),
        "not_recorded": "ignored",  # keys missing from one side are not compared
    }
    assert check_diffusion_settings(ckpt, same) == SETTINGS
    assert check_diffusion_settings(ckpt, {}) == SETTINGS


@pytest.mark.parametrize(
    "key, other",
    [
        ("prediction_type", "epsilon"),
        ("noise_schedule", "linear_beta"),
        ("num_train_timesteps", 500),
        ("beta_start", 0.0001),
        ("beta_end", 0.02),
        ("class_names", ["CNV", "DME", "NORMAL", "DRUSEN"]),
        ("image_size", [64, 128]),
    ],
)
def test_check_refuses_each_differing_key_naming_both_values(tmp_path: Path, key: str, other) -> None:
    ckpt = write_settings(tmp_path, SETTINGS)
    with pytest.raises(GeneratorError) as err:
        check_diffusion_settings(ckpt, {**SETTINGS, key: other})
    msg = str(err.value)
    assert msg.startswith(f"{ckpt}: these weights were trained with {key}={SETTINGS[key]!r}")
    assert str(tmp_path / "diffusion.json") in msg
    assert f"the config samples with {other!r}" in msg
    assert f"override --{key} " in msg
    others = [k for k in SETTINGS if k != key]
    assert not [k for k in others if f"{k}=" in msg], "only the differing key is named"


def test_check_lists_every_differing_key_and_the_overrides_that_fix_them(tmp_path: Path) -> None:
    ckpt = write_settings(tmp_path, {**SETTINGS, "prediction_type": "epsilon"})
    with pytest.raises(GeneratorError) as err:
        check_diffusion_settings(ckpt, {**SETTINGS, "num_train_timesteps": 200, "image_size": [16, 32]})
    msg = str(err.value)
    assert "trained with prediction_type='epsilon', num_train_timesteps=1000, image_size=[32, 64]" in msg
    assert "samples with prediction_type='v_prediction', num_train_timesteps=200, image_size=[16, 32]" in msg
    assert msg.endswith('override --prediction_type epsilon --num_train_timesteps 1000 --image_size "[32, 64]"')


@pytest.mark.parametrize(
    "text, reason",
    [("{not json", "malformed diffusion.json"), ("[1, 2]", "expected a JSON object"), ('{"image_size": "big"}', "")],
)
def test_check_refuses_a_malformed_file_naming_it(tmp_path: Path, text: str, reason: str) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    (tmp_path / "diffusion.json").write_text(text)
    with pytest.raises(GeneratorError, match="malformed diffusion.json") as err:
        check_diffusion_settings(ckpt, SETTINGS)
    assert str(err.value).startswith(str(tmp_path / "diffusion.json")) and reason in str(err.value)


def test_from_components_checks_the_settings_before_loading_the_weights(tmp_path: Path) -> None:
    net = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=[8, 16],
        attention_levels=[False, False],
        num_res_blocks=1,
        norm_num_groups=8,
        num_class_embeds=len(CLASSES) + 1,
    )
    common = dict(network=net, inferer=None, scheduler=None, class_names=CLASSES, image_size=[32, 64], device="cpu")
    garbage = write_settings(tmp_path / "garbage", {**SETTINGS, "prediction_type": "epsilon"})  # not a checkpoint
    with pytest.raises(GeneratorError, match="trained with prediction_type='epsilon'"):
        DiffusionGenerator.from_components(**common, ckpt_path=garbage, diffusion_settings=SETTINGS)

    ckpt = write_settings(tmp_path / "real", SETTINGS)
    torch.save(net.state_dict(), ckpt)
    gen = DiffusionGenerator.from_components(**common, ckpt_path=ckpt, diffusion_settings=SETTINGS)
    assert gen.image_shape == (1, 32, 64) and gen.class_names == CLASSES
    with pytest.raises(GeneratorError, match=r"trained with class_names=\['CNV', 'DME', 'DRUSEN', 'NORMAL'\]"):
        DiffusionGenerator.from_components(
            **{**common, "class_names": ["CNV", "DME", "DRUSEN"]},
            ckpt_path=ckpt,
            diffusion_settings={**SETTINGS, "class_names": ["CNV", "DME", "DRUSEN"]},
        )


# --------------------------------------------------------------------------------------------------------------------
# the bundle configs
# --------------------------------------------------------------------------------------------------------------------
def _writer_in(parser: ConfigParser) -> object:
    """The train#handlers entry that is the DiffusionSettingsWriter, built."""
    targets = [h.get("_target_", "") if isinstance(h, dict) else h for h in parser["train"]["handlers"]]
    index = targets.index("medicraft_monai.engines.DiffusionSettingsWriter")
    return parser.get_parsed_content(f"train#handlers#{index}")


@pytest.mark.parametrize("bundle, train", [("oct_ddpm", "train.json"), ("oct_ldm", "train.json")])
def test_training_writes_the_settings_inference_checks_and_only_on_the_main_process(bundle: str, train: str) -> None:
    configs = BUNDLES / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "common.json"), str(configs / train)])
    parser["bundle_root"] = "/somewhere"
    writer = _writer_in(parser)
    assert isinstance(writer, DiffusionSettingsWriter)
    assert writer.path == Path("/somewhere/models/diffusion.json")
    assert writer.path.parent == Path(parser.get_parsed_content("ckpt_dir")), "next to model.pt"
    keys = {"prediction_type", "noise_schedule", "num_train_timesteps", "class_names", "image_size"}
    keys |= {"beta_start", "beta_end"} if bundle == "oct_ldm" else set()
    assert set(writer.settings) == keys
    assert writer.settings["prediction_type"] == parser["prediction_type"] == "v_prediction"
    assert writer.resume is False
    parser["resume"] = True
    assert _writer_in(parser).resume is True
    # inference.json holds the same settings (with its own defaults, which must agree with training's)
    inference = ConfigParser()
    inference.read_config([str(configs / "common.json"), str(configs / "inference.json")])
    sampling = inference.get_parsed_content("diffusion_settings")
    # oct_ddpm's inference also names its sampler and steps: the distilled student's record must match them
    extra = {"sampler", "num_inference_steps"} if bundle == "oct_ddpm" else set()
    assert set(sampling) == set(writer.settings) | extra
    assert {k: sampling[k] for k in writer.settings} == writer.settings
    assert inference["generator"]["diffusion_settings"] == "@diffusion_settings"
    # other ranks of a multi-GPU run do not write
    parser = ConfigParser()
    parser.read_config([str(configs / "common.json"), str(configs / train)])
    parser["is_main_process"] = False
    assert _writer_in(parser) is None


# --------------------------------------------------------------------------------------------------------------------
# end to end: the real bundle trains, writes diffusion.json, and sampling checks it
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_root(datalist: Path, tmp_path_factory) -> Path:  # noqa: F811 (the imported fixture)
    root = tmp_path_factory.mktemp("oct_ddpm_settings")
    run(bundle_cmd(["train.json"], root, datalist=str(datalist), **TINY_NET, **TINY_TRAIN, max_epochs=1))
    return root


def test_training_writes_the_settings_next_to_the_weights(trained_root: Path) -> None:
    models = trained_root / "models"
    assert (models / "model.pt").is_file()
    assert json.loads((models / "diffusion.json").read_text()) == {
        "prediction_type": "v_prediction",
        "noise_schedule": "linear_beta",
        "num_train_timesteps": 1000,
        "class_names": CLASSES,
        "image_size": TINY_NET["image_size"],
    }


def test_a_generator_refuses_weights_trained_with_another_prediction_type(trained_root: Path) -> None:
    overrides = {**TINY_NET, "ckpt_dir": str(trained_root / "models"), "num_inference_steps": 2}
    with pytest.raises(GeneratorError, match="prediction_type") as err:
        DiffusionGenerator.from_bundle(
            BUNDLES / "oct_ddpm", device="cpu", overrides={**overrides, "prediction_type": "epsilon"}
        )
    msg = str(err.value)
    assert "trained with prediction_type='v_prediction'" in msg and "samples with 'epsilon'" in msg
    assert "override --prediction_type v_prediction" in msg

    gen = DiffusionGenerator.from_bundle(BUNDLES / "oct_ddpm", device="cpu", overrides=overrides)
    images = gen.generate(CLASSES, [0] * len(CLASSES))
    assert images.shape == (len(CLASSES), 1, *TINY_NET["image_size"])
    assert np.isfinite(images).all() and 0.0 <= images.min() and images.max() <= 1.0
    assert gen.checksum and torch.is_tensor(next(gen.network.parameters()))


def test_inference_json_refuses_the_mismatch_on_the_command_line(trained_root: Path) -> None:
    out = trained_root / "synthetic"
    overrides = {**TINY_NET, "num_inference_steps": 2, "num_images_per_class": 1, "output_dir": str(out)}
    proc = run(bundle_cmd(["inference.json"], trained_root, **overrides, num_train_timesteps=500), expect_ok=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        "GeneratorError" in text
        and "num_train_timesteps=1000" in text
        and "override --num_train_timesteps 1000" in text
    )
    assert not out.exists() or not any(out.rglob("*.png")), "no image may be written from mismatched settings"
