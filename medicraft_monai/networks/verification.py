"""Checks of a bundle's network against its ``metadata.json``, and the inputs and weights such checks use.

- :func:`example_network_inputs`: random inputs for every entry of ``network_data_format["inputs"]``;
- :func:`randomise_zero_weights`: small random weights for MONAI's zero-initialised output layers (untrained
  networks in checks, tests and benchmarks);
- :func:`verify_bundle_network`: ``monai.bundle.verify_net_in_out`` with the diffusion UNet's extra inputs, and a
  TorchScript export that is checked against the eager network.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from medicraft_monai.bundles import config_files
from medicraft_monai.networks.checkpoint import load_weights

__all__ = ["example_network_inputs", "randomise_zero_weights", "verify_bundle_network"]

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

    Returns:
        ``{"output_shape": (1, C, H, W) at the metadata's shape, "max_abs_diff": TorchScript vs eager,
        "torchscript": the written file or None}``.
    """
    import tempfile

    from monai.bundle import ConfigParser, verify_net_in_out
    from monai.data import load_net_with_metadata, save_net_with_metadata

    root = Path(bundle_root)
    cfg, meta = [str(p) for p in config_files(root, config_file)], root / meta_file
    metadata = ConfigParser.load_config_file(meta)
    fmt = metadata["network_data_format"]
    extra = {k: v.to(device) for k, v in example_network_inputs(fmt).items() if k != "image"}
    verify_net_in_out(
        net_id=net_id,
        meta_file=str(meta),
        config_file=cfg,
        device=device,
        extra_forward_args=extra,
        **dict(overrides or {}),
    )

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
