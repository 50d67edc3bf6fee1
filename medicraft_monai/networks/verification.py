"""Checks of a bundle's network against its ``metadata.json``, and the inputs and weights such checks use.

- :func:`example_network_inputs`: random inputs for every entry of ``network_data_format["inputs"]``;
- :func:`randomise_zero_weights`: small random weights for MONAI's zero-initialised output layers (untrained
  networks in checks, tests and benchmarks);
- :func:`verify_bundle_network`: ``monai.bundle.verify_net_in_out`` with the diffusion UNet's extra inputs, and a
  TorchScript export that is checked against the eager network;
- :func:`verify_bundle`: every check of the model zoo's ``ci/verify_bundle.py`` (necessary and preferred files,
  large files, version and changelog, metadata against the schema, network shapes, TorchScript export) plus the
  bundle's weights loading into its networks, as a list of :class:`BundleCheck` (``medicraft bundle verify NAME``
  prints them with :func:`format_checks`).
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from medicraft_monai.bundles import config_files
from medicraft_monai.networks.checkpoint import load_weights, read_checkpoint

__all__ = [
    "ZOO_NECESSARY_FILES",
    "ZOO_PREFERRED_FILES",
    "BundleCheck",
    "bundle_weight_files",
    "example_network_inputs",
    "format_checks",
    "randomise_zero_weights",
    "verify_bundle",
    "verify_bundle_network",
]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64}


def example_network_inputs(
    network_data_format: Mapping[str, Any],
    batch_size: int = 1,
    spatial_shape: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random inputs for every entry of a metadata's ``network_data_format["inputs"]``, in order.

    An entry's tensor has shape ``(batch_size, num_channels, *spatial_shape)``, or ``(batch_size, *spatial_shape)``
    when ``num_channels`` is 0 (per-sample scalars such as diffusion timesteps and class labels). Values are
    uniform in ``value_range`` (integers inclusive of both ends for integer dtypes).

    Args:
        network_data_format: the metadata's ``network_data_format``.
        batch_size: the batch size.
        spatial_shape: replaces the ``spatial_shape`` of entries that have one (for a cheaper check of a fully
            convolutional network).
        seed: seed of the values.
    """
    gen = torch.Generator().manual_seed(int(seed))
    out: dict[str, torch.Tensor] = {}
    for name, spec in network_data_format["inputs"].items():
        dtype = _DTYPES.get(str(spec["dtype"]), None)
        if dtype is None:
            raise ValueError(f"input {name!r}: unsupported dtype {spec['dtype']!r} (use one of {sorted(_DTYPES)})")
        shape = [int(s) for s in spec["spatial_shape"]]
        if spatial_shape is not None and shape:
            shape = [int(s) for s in spatial_shape]
        channels = int(spec["num_channels"])
        full = (batch_size, *([channels] if channels else []), *shape)
        low, high = (list(spec.get("value_range") or []) + [0, 1])[:2]
        if dtype.is_floating_point:
            out[name] = (torch.rand(full, generator=gen) * (high - low) + low).to(dtype)
        else:
            out[name] = torch.randint(int(low), int(high) + 1, full, generator=gen, dtype=dtype)
    return out


def _forward_kwargs(network: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map metadata input names to the network's forward argument names ("image" is the first argument)."""
    params = list(inspect.signature(network.forward).parameters)
    kwargs = {}
    for name, value in inputs.items():
        key = params[0] if name == "image" else name
        if key not in params:
            raise ValueError(f"metadata input {name!r} is not an argument of {type(network).__name__}.forward{params}")
        kwargs[key] = value
    return kwargs


def randomise_zero_weights(network: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """MONAI zero-initialises some output layers; give them small random weights so outputs depend on inputs.

    For checks, tests and benchmarks of untrained networks; returns the network.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in network.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return network


def _verify_shapes(
    root: Path, config_file: str, meta_file: str, net_id: str, overrides: Mapping[str, Any] | None, device: str
) -> None:
    """``monai.bundle.verify_net_in_out`` on a dummy input of the metadata's shape, with the extra inputs."""
    from monai.bundle import ConfigParser, verify_net_in_out

    meta = root / meta_file
    fmt = ConfigParser.load_config_file(meta)["network_data_format"]
    extra = {k: v.to(device) for k, v in example_network_inputs(fmt).items() if k != "image"}
    verify_net_in_out(
        net_id=net_id,
        meta_file=str(meta),
        config_file=[str(p) for p in config_files(root, config_file)],
        device=device,
        extra_forward_args=extra,
        **{"bundle_root": str(root), **dict(overrides or {})},
    )


def verify_bundle_network(
    bundle_root: str | PathLike,
    ckpt_path: str | PathLike | None = None,
    export_path: str | PathLike | None = None,
    config_file: str = "configs/inference.json",
    meta_file: str = "configs/metadata.json",
    net_id: str = "network_def",
    overrides: Mapping[str, Any] | None = None,
    check_spatial_shape: Sequence[int] | None = None,
    device: str = "cpu",
    rtol: float = 1e-4,
    atol: float = 1e-4,
    check_shapes: bool = True,
) -> dict[str, Any]:
    """Check a bundle's network against its metadata and export it to TorchScript.

    1. ``monai.bundle.verify_net_in_out`` with the metadata's extra inputs (for the diffusion UNet: ``timesteps``
       and ``class_labels``) passed as ``extra_forward_args``, so the metadata's shapes, channels and dtypes are
       what the network really takes and returns.
    2. The network (with ``ckpt_path``'s weights when given, else random weights) is traced (at half the metadata's
       spatial shape, or ``check_spatial_shape``) with
       ``torch.jit.trace(example_kwarg_inputs=...)``: ``torch.jit.script`` cannot compile MONAI's
       ``DiffusionModelUNet`` and ``monai.bundle ckpt_export`` traces with the image as the only input. The trace
       is saved with MONAI's ``save_net_with_metadata`` (metadata and config inside, as ``ckpt_export`` does),
       loaded back, and compared with the eager network on new inputs at the metadata's shape (batch 1) and at the
       small shape (batch 3).

    Args:
        bundle_root: the bundle folder.
        ckpt_path: weights to load (a state dict), or ``None``.
        export_path: where to write the TorchScript file (default: a temporary file that is removed).
        config_file, meta_file: relative to ``bundle_root`` (``config_file`` on top of ``configs/common.json``).
        net_id: the network's config id.
        overrides: config overrides (for example a smaller network for tests).
        check_spatial_shape: spatial shape of the trace and the second comparison (default: half the metadata's).
        device: where to run.
        check_shapes: run step 1 (``False`` when the caller has run ``verify_net_in_out`` already).

    Returns:
        ``{"output_shape": (1, C, H, W) at the metadata's shape, "max_abs_diff": TorchScript vs eager,
        "torchscript": the written file or None}``.
    """
    import tempfile

    from monai.bundle import ConfigParser
    from monai.data import load_net_with_metadata, save_net_with_metadata

    root = Path(bundle_root)
    cfg, meta = [str(p) for p in config_files(root, config_file)], root / meta_file
    metadata = ConfigParser.load_config_file(meta)
    fmt = metadata["network_data_format"]
    if check_shapes:
        _verify_shapes(root, config_file, meta_file, net_id, overrides, device)

    parser = ConfigParser()
    parser.read_config(cfg)
    parser["bundle_root"] = str(root)
    for key, value in (overrides or {}).items():
        parser[key] = value
    network = parser.get_parsed_content(net_id)
    if ckpt_path is not None:
        load_weights(network, ckpt_path, what="bundle weights")
    else:
        randomise_zero_weights(network)
    network = network.to(device).eval()

    image_shape = [int(s) for s in fmt["inputs"]["image"]["spatial_shape"]]
    small = list(check_spatial_shape or [max(8, s // 2) for s in image_shape])

    def inputs(batch: int, shape: Sequence[int], seed: int) -> dict[str, torch.Tensor]:
        found = example_network_inputs(fmt, batch, spatial_shape=shape, seed=seed)
        return _forward_kwargs(network, {k: v.to(device) for k, v in found.items()})

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        # trace at the small shape (cheap); compare at the metadata's shape and at the small one, other batch sizes
        with warnings.catch_warnings():
            # torch's group_norm checks the batch size with a Python `if` on a traced value; the trace is checked
            # on other batch sizes and shapes below
            warnings.filterwarnings("ignore", "Converting a tensor to a Python boolean", torch.jit.TracerWarning)
            traced = torch.jit.trace(network, example_kwarg_inputs=inputs(2, small, 0), check_trace=False)
        target = Path(export_path) if export_path is not None else Path(tmp) / "model.ts"
        target.parent.mkdir(parents=True, exist_ok=True)
        save_net_with_metadata(
            traced,
            str(target.with_suffix("")),
            include_config_vals=False,
            meta_values=metadata,
            more_extra_files={Path(config_file).name: json.dumps(parser.get()).encode()},
        )
        written = target.with_suffix(".ts")
        loaded, loaded_meta, _ = load_net_with_metadata(str(written), map_location=device)
        if loaded_meta.get("version") != metadata.get("version"):
            raise AssertionError(f"{written}: the exported metadata does not round-trip")
        diffs, shapes = [], []
        for batch in (inputs(1, image_shape, 1), inputs(3, small, 2)):
            expected = network(**batch)
            got = loaded(*batch.values())
            torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
            diffs.append(float((got - expected).abs().max()))
            shapes.append(tuple(got.shape))
        result = {
            "output_shape": shapes[0],
            "max_abs_diff": max(diffs),
            "torchscript": str(written) if export_path is not None else None,
        }
    return result


# --------------------------------------------------------------------------------------------------------------------
# the model zoo's checks of a whole bundle (its ci/verify_bundle.py), one result per check
# --------------------------------------------------------------------------------------------------------------------
ZOO_NECESSARY_FILES: tuple[str, ...] = ("configs/metadata.json", "LICENSE")
"""Files the model zoo refuses a bundle without."""

ZOO_PREFERRED_FILES: tuple[str, ...] = ("configs/inference.json", "models/model.pt")
"""Files the model zoo expects in a bundle (its "preferred files"): an inference config and the weights."""

#: config keys of the weights a bundle's inference config loads, and the network each one is loaded into
_WEIGHT_KEYS = {"ckpt_path": "network_def", "autoencoder_ckpt_path": "autoencoder_def"}
#: the settings a diffusion model was trained with, written next to its weights by training
_DIFFUSION_RECORD = "diffusion.json"
#: the names of a bundle's large-files list (the model zoo's ci/utils.py accepts these three)
_LARGE_FILES = ("large_files.json", "large_files.yaml", "large_files.yml")


class _NotApplicable(Exception):
    """A check that does not apply to this bundle (the message says why)."""


@dataclass(frozen=True)
class BundleCheck:
    """The result of one check of a bundle.

    Attributes:
        name: what was checked (as ``ci/verify_bundle.py`` calls it).
        status: ``"pass"``, ``"fail"``, or ``"n/a"`` (the check does not apply to this bundle; ``detail`` says why).
        detail: what was found (for a failure: the file and the problem, on one line).
    """

    name: str
    status: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        """Whether the bundle passed (a check that does not apply is no failure)."""
        return self.status != "fail"


def bundle_weight_files(bundle_root: str | PathLike) -> dict[str, str]:
    """The weight files a bundle's inference config loads, relative to the bundle, and the network of each.

    ``ckpt_path`` (into ``network_def``) and, for a latent model, ``autoencoder_ckpt_path`` (into
    ``autoencoder_def``); a bundle whose inference config names no weights (an evaluation bundle) has the model
    zoo's ``models/model.pt`` (network ``None``). Paths outside the bundle folder are not the bundle's and are left
    out.
    """
    from medicraft_monai.networks.bundle import bundle_parser

    root = Path(bundle_root).resolve()
    parser = bundle_parser(root)
    found: dict[str, str] = {}
    for key, net_id in _WEIGHT_KEYS.items():
        if key in parser:
            path = Path(str(parser.get_parsed_content(key))).resolve()
            if path.is_relative_to(root):
                found[path.relative_to(root).as_posix()] = net_id if net_id in parser else None
    return found or {"models/model.pt": None}


def _missing(root: Path, names: Sequence[str]) -> list[str]:
    return [n for n in names if not (root / n).is_file()]


def _check_necessary_files(root: Path) -> str:
    missing = _missing(root, ZOO_NECESSARY_FILES)
    if missing:
        raise ValueError(f"{root}: missing {', '.join(missing)}")
    return ", ".join(ZOO_NECESSARY_FILES)


def _check_preferred_files(root: Path) -> str:
    wanted = ["configs/inference.json", *bundle_weight_files(root)]
    missing = _missing(root, wanted)
    if missing:
        raise ValueError(f"{root}: missing {', '.join(missing)} (the model zoo expects the weights in the bundle)")
    return ", ".join(wanted)


def _check_large_files(root: Path) -> str:
    """A large-files list is either absent or names files that are in the bundle, each with its hash."""
    from monai.apps.utils import check_hash
    from monai.bundle import ConfigParser

    lists = [root / n for n in _LARGE_FILES if (root / n).is_file()]
    if not lists:
        return "no large_files list (every file is in the bundle; nothing is downloaded)"
    problems, named = [], []
    for listing in lists:
        entries = ConfigParser.load_config_file(listing).get("large_files") or []
        if not entries:
            problems.append(f"{listing.name} lists no file")
        for entry in entries:
            path, hash_val = str(entry.get("path", "")), str(entry.get("hash_val") or "")
            target = (root / path).resolve()
            named.append(path)
            if not path or not target.is_relative_to(root.resolve()):
                problems.append(f"{listing.name}: {path!r} is not a file inside the bundle")
            elif not target.is_file():
                problems.append(f"{listing.name} names {path}, which is not in the bundle (nothing is downloaded)")
            elif not entry.get("url") or not hash_val:
                problems.append(f"{listing.name}: {path} needs a url and a hash_val")
            elif not check_hash(target, hash_val, str(entry.get("hash_type", "md5"))):
                problems.append(f"{listing.name}: {path} does not match its {entry.get('hash_type', 'md5')} hash_val")
    if problems:
        raise ValueError(f"{root}: " + "; ".join(problems))
    return f"{', '.join(named)} present with matching hashes"


def _check_version(root: Path, model_info: str | PathLike | None) -> str:
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    for key in ("version", "changelog"):
        if key not in meta:
            raise ValueError(f"{root / 'configs' / 'metadata.json'}: no {key!r}")
    version = meta["version"]
    if version not in meta["changelog"]:
        raise ValueError(f"{root / 'configs' / 'metadata.json'}: version {version} has no changelog entry")
    if model_info is not None and Path(model_info).is_file():
        released = json.loads(Path(model_info).read_text())
        if f"{root.name}_v{version}" in released:
            raise ValueError(f"{model_info}: {root.name}_v{version} is released already; bump the version")
    return f"version {version} in the changelog"


def _check_schema(root: Path, schema: str | PathLike | None) -> str:
    from monai.bundle import verify_metadata

    if schema is None:
        raise _NotApplicable("no schema file given (nothing is downloaded)")
    if not Path(schema).is_file():  # verify_metadata would download the schema: never at run time
        raise ValueError(f"{schema}: metadata schema file not found (nothing is downloaded)")
    verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(schema))
    return f"valid against {Path(schema).name}"


def _network_weights(root: Path) -> Path | None:
    """The file of ``network_def``'s weights when the bundle has it; raises :class:`_NotApplicable` without a
    ``network_def`` (an evaluation bundle)."""
    from medicraft_monai.networks.bundle import bundle_parser

    if "network_def" not in bundle_parser(root):
        raise _NotApplicable("no network_def (an evaluation bundle)")
    found = next((root / p for p, n in bundle_weight_files(root).items() if n == "network_def"), None)
    return found if found is not None and found.is_file() else None


def _check_shapes(root: Path, device: str) -> str:
    _network_weights(root)
    _verify_shapes(root, "configs/inference.json", "configs/metadata.json", "network_def", None, device)
    return "the network takes and returns the metadata's shapes"


def _check_torchscript(root: Path, device: str) -> str:
    ckpt = _network_weights(root)
    found = verify_bundle_network(root, ckpt_path=ckpt, device=device, check_shapes=False)
    used = ckpt.relative_to(root).as_posix() if ckpt else "random weights"
    return f"traced with {used}; TorchScript matches eager within {found['max_abs_diff']:.1e}"


def _check_weights(root: Path) -> str:
    """Every weight file present loads into its network (strictly: every key, every shape)."""
    from medicraft_monai.networks.bundle import bundle_parser

    parser, loaded = bundle_parser(root), []
    for rel, net_id in bundle_weight_files(root).items():
        if not (root / rel).is_file():
            continue
        if net_id is None:
            read_checkpoint(root / rel, what="bundle weights")
        else:
            load_weights(parser.get_parsed_content(net_id, instantiate=True), root / rel, what=f"{net_id} weights")
        loaded.append(f"{rel} -> {net_id or 'readable'}")
    if not loaded:
        raise ValueError(f"{root}: no weights to load ({', '.join(bundle_weight_files(root))} missing)")
    records = root / "models" / _DIFFUSION_RECORD
    if records.is_file() and "diffusion_settings" in parser:
        # the bundle's own check (the one sampling runs): the settings recorded at training are the config's
        parser["_verify_diffusion_record"] = (
            f"$medicraft_monai.engines.records.check_diffusion_settings(@ckpt_path, @diffusion_settings, "
            f"settings_file={str(records)!r}, use='is configured with')"
        )
        parser.get_parsed_content("_verify_diffusion_record")
        loaded.append(f"{_DIFFUSION_RECORD} matches the config")
    return "; ".join(loaded)


def verify_bundle(
    bundle_root: str | PathLike,
    schema: str | PathLike | None = None,
    mode: str = "full",
    model_info: str | PathLike | None = None,
    device: str = "cpu",
) -> list[BundleCheck]:
    """Run the model zoo's checks of ``ci/verify_bundle.py`` on a bundle folder, and load its weights.

    In ``"min"`` mode (as the zoo's): necessary files, preferred files (the inference config and every weight file
    it loads), the large-files list (absent, or naming files that are in the bundle with matching hashes: nothing
    is downloaded), version and changelog (and, given the zoo's ``model_info.json``, a version not released yet),
    metadata against the schema. ``"full"`` adds the network's input and output shapes (a dummy input of the
    metadata's shape through ``monai.bundle.verify_net_in_out``), the TorchScript export checked against the eager
    network (:func:`verify_bundle_network`, with the bundle's weights when present) and the weights loading into
    their networks. The zoo skips shapes and TorchScript for its diffusion bundles; here they run for every bundle
    with a ``network_def`` (``torch.jit.trace`` with the timesteps and class labels as inputs exports MONAI's
    ``DiffusionModelUNet``); a bundle without one (an evaluation bundle) gets ``n/a``.

    Args:
        bundle_root: the bundle folder.
        schema: the metadata schema file (the file the metadata's ``schema`` URL names); ``None``: that check is
            ``n/a`` (nothing is downloaded).
        mode: ``"min"`` or ``"full"``.
        model_info: the model zoo's ``model_info.json``, to refuse a version that is released already.
        device: where the network checks run.

    Returns:
        one :class:`BundleCheck` per check, in the zoo's order; a check that raised is ``"fail"`` with its message.
    """
    if mode not in ("min", "full"):
        raise ValueError(f"mode must be 'min' or 'full', not {mode!r}")
    root = Path(bundle_root)
    if not (root / "configs").is_dir():
        raise FileNotFoundError(f"{root}: not a bundle folder (no configs/ in it)")
    checks: list[tuple[str, Callable[[], str]]] = [
        ("necessary files", lambda: _check_necessary_files(root)),
        ("preferred files", lambda: _check_preferred_files(root)),
        ("large files", lambda: _check_large_files(root)),
        ("version and changelog", lambda: _check_version(root, model_info)),
        ("metadata schema", lambda: _check_schema(root, schema)),
    ]
    if mode == "full":
        checks += [
            ("network shapes", lambda: _check_shapes(root, device)),
            ("TorchScript export", lambda: _check_torchscript(root, device)),
            ("weights", lambda: _check_weights(root)),
        ]
    results: list[BundleCheck] = []
    for name, check in checks:
        try:
            results.append(BundleCheck(name, "pass", check()))
        except _NotApplicable as why:
            results.append(BundleCheck(name, "n/a", str(why)))
        except Exception as err:  # noqa: BLE001 - every failed check is reported, the others still run
            said = err.__cause__ if err.__cause__ is not None and "Failed to evaluate" in str(err) else err
            results.append(BundleCheck(name, "fail", " ".join(str(said).split()) or type(said).__name__))
    return results


def format_checks(name: str, checks: Sequence[BundleCheck]) -> str:
    """The checks as a pass/fail table (Markdown), with a last line saying whether the bundle passed."""
    rows = [f"| {c.name} | {c.status.upper()} | {c.detail.replace('|', '/')} |" for c in checks]
    failed = [c.name for c in checks if not c.passed]
    verdict = f"{name}: FAILED ({', '.join(failed)})" if failed else f"{name}: passed"
    return "\n".join(["| check | result | detail |", "| --- | --- | --- |", *rows, "", verdict])
