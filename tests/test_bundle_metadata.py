"""Every bundle's ``metadata.json`` tells what its configs do, and is valid against the model zoo's schema.

The configs are parsed with ``monai.bundle.ConfigParser`` (``common.json`` under the task file, as ``monai.bundle run``
merges them), so changing a config without its metadata fails here: prediction type, sampler and steps, image size
and the shapes of the network's inputs and outputs, number and names of the classes, and the medicraft-monai version
the bundle requires.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO.parent / "shared" / "zoo" / "meta_schema_20240725.json"
BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
IDS = [b.name for b in BUNDLES]
#: how a model card names each sampler of medicraft_monai.schedulers.SAMPLERS
SAMPLER_NAMES = {"dpmpp_2m": "DPM-Solver++ 2M", "ddim": "DDIM", "ddpm": "DDPM"}
#: how a model card names what the diffusion UNet predicts, per prediction_type
PREDICTION_WORDS = {"v_prediction": "v-prediction", "epsilon": "noise (epsilon)", "sample": "denoised sample"}


def _meta(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def _config(bundle: Path, name: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / n) for n in ("common.json", name)])
    parser["bundle_root"] = str(bundle)
    return parser


def _value(parser: ConfigParser, key: str) -> Any:
    return parser.get_parsed_content(key)


def _kind(bundle: Path) -> str:
    meta = _meta(bundle)
    if meta.get("medicraft_bundle_role") == "evaluation":
        return "evaluation"
    inputs = meta["network_data_format"]["inputs"]
    if "timesteps" in inputs:
        return "diffusion"
    return "classifier" if meta["network_data_format"]["outputs"]["pred"]["spatial_shape"] == [] else "image"


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_metadata_is_valid_against_the_model_zoo_schema(bundle: Path) -> None:
    assert SCHEMA.is_file(), f"the local schema copy is missing: {SCHEMA}"
    jsonschema.validate(_meta(bundle), json.loads(SCHEMA.read_text()))


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_required_medicraft_version_is_the_package_version(bundle: Path) -> None:
    found = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert found, "pyproject.toml states no version"
    version = found[1]
    meta = _meta(bundle)
    assert meta["required_packages_version"]["medicraft-monai"] == version, (
        f"{bundle.name}: metadata requires medicraft-monai {meta['required_packages_version']['medicraft-monai']} "
        f"but the package is {version}"
    )
    assert meta["version"] in meta["changelog"], f"{bundle.name}: the current version needs a changelog entry"


@pytest.mark.parametrize("bundle", [b for b in BUNDLES if _kind(b) == "diffusion"], ids=lambda b: b.name)
def test_diffusion_metadata_states_the_configs_prediction_sampler_steps_shapes_and_classes(bundle: Path) -> None:
    meta, fmt = _meta(bundle), _meta(bundle)["network_data_format"]
    inference, train = _config(bundle, "inference.json"), _config(bundle, "train.json")
    stated = meta["medicraft_diffusion"]
    for key in (
        "prediction_type",
        "noise_schedule",
        "num_train_timesteps",
        "sampler",
        "num_inference_steps",
        "guidance_scale",
    ):
        assert stated[key] == _value(inference, key), f"{bundle.name}: metadata {key}={stated[key]!r}, config differs"
    for key in ("prediction_type", "noise_schedule", "num_train_timesteps"):
        assert stated[key] == _value(train, key), f"{bundle.name}: metadata {key}={stated[key]!r}, train.json differs"

    # the words: what the network predicts, and how it samples by default
    said = PREDICTION_WORDS[stated["prediction_type"]]
    pred = fmt["outputs"]["pred"]
    assert said in meta["pred_classes"] and all(said in d for d in pred["channel_def"].values()), bundle.name
    for other, words in PREDICTION_WORDS.items():
        if other != stated["prediction_type"]:
            text = meta["pred_classes"] + " ".join(pred["channel_def"].values())
            assert words not in text, f"{bundle.name}: metadata still says {words!r}"
    sampling = f"{SAMPLER_NAMES[stated['sampler']]} ({stated['num_inference_steps']} steps by default)"
    assert sampling in meta["description"], f"{bundle.name}: the description must say it samples with {sampling}"

    # shapes: pixel space (image_size), or latent space (image_size over the autoencoder's down-sampling)
    size = list(_value(inference, "image_size"))
    if "latent_channels" in inference:
        factor = 2 ** (len(_value(inference, "autoencoder_channels")) - 1)
        shape, channels = [s // factor for s in size], _value(inference, "latent_channels")
    else:
        shape, channels = size, _value(inference, "in_channels")
    for where in (fmt["inputs"]["image"], pred):
        assert where["spatial_shape"] == shape and where["num_channels"] == channels, (bundle.name, where)
    assert fmt["inputs"]["timesteps"]["value_range"] == [0, stated["num_train_timesteps"] - 1]

    # classes: one label per class name, then the null class of classifier-free guidance
    names = list(_value(inference, "class_names"))
    labels = fmt["inputs"]["class_labels"]
    assert [labels["channel_def"][str(i)] for i in range(len(names))] == names, bundle.name
    assert "null" in labels["channel_def"][str(len(names))] and len(labels["channel_def"]) == len(names) + 1
    assert labels["value_range"] == [0, len(names)] == [0, _value(inference, "null_class")]


@pytest.mark.parametrize("bundle", [b for b in BUNDLES if _kind(b) in ("classifier", "image")], ids=lambda b: b.name)
def test_network_metadata_states_the_configs_image_size_and_classes(bundle: Path) -> None:
    fmt = _meta(bundle)["network_data_format"]
    config = _config(bundle, "inference.json")
    image = fmt["inputs"]["image"]
    assert image["spatial_shape"] == list(_value(config, "image_size")), bundle.name
    assert image["num_channels"] == _value(config, "in_channels"), bundle.name
    pred = fmt["outputs"]["pred"]
    if _kind(bundle) == "classifier":
        names = list(_value(config, "class_names"))
        assert pred["num_channels"] == len(names) == _value(config, "num_classes"), bundle.name
        assert [pred["channel_def"][str(i)] for i in range(len(names))] == names, bundle.name
    else:
        assert pred["spatial_shape"] == image["spatial_shape"], bundle.name
