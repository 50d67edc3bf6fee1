"""Small helpers that medicraft's MONAI Bundle configs call, so that no Python logic lives in the JSON.

Configs refer to them as ``$medicraft_monai.bundle_utils.<name>(...)`` or ``{"_target_": "medicraft_monai.bundle_utils.<name>"}``:

- switches: :func:`flag` (``--resume true`` and ``--resume True`` both mean True on the command line);
- data: :func:`check_datalist_classes` (the datalist's classes must be the bundle's ``class_names``);
- training: :func:`latest_checkpoint` (``resume``), :class:`EMAWarmupSync` (EMA warm-up continues after a resume),
  :class:`FixedSeedHandler` (comparable validation losses), :class:`ProgressBarHandler`;
- sampling: :func:`build_generator` (a :class:`~medicraft_monai.synthesis.generator.DiffusionGenerator` from the
  components an ``inference.json`` already defines, CLI overrides included);
- checks: :func:`example_network_inputs` and :func:`verify_bundle_network` (``verify_net_in_out`` with the
  diffusion UNet's extra inputs, and a TorchScript export that is checked against the eager network).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from medicraft_monai.data.datalist import read_datalist_json
from medicraft_monai.data.errors import EmptyDatasetError, UnknownLabelError
from medicraft_monai.data.keys import OCTKeys

__all__ = [
    "EMAWarmupSync",
    "FixedSeedHandler",
    "ProgressBarHandler",
    "build_generator",
    "check_datalist_classes",
    "example_network_inputs",
    "flag",
    "latest_checkpoint",
    "read_datalist_json",
    "verify_bundle_network",
]

logger = logging.getLogger(__name__)

#: interval and final training-state checkpoints written by MONAI's CheckpointSaver (ignite naming)
_CKPT_PATTERN = re.compile(r"^(?P<prefix>.*?)_?(?:final_)?iteration=(?P<iteration>\d+)\.pt$")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", "none", ""}


def flag(value: Any) -> bool:
    """A config switch as a bool, whatever way the command line spelt it.

    ``python -m monai.bundle run --resume true`` passes the *string* ``"true"`` (only ``True`` is a Python literal
    for the command-line parser), and ``--resume false`` would pass ``"false"``, which Python treats as true. Configs
    read their switches through this function.

    Raises:
        ValueError: a value that is not a recognisable switch.
    """
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"not a true/false switch: {value!r}")


# --------------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------------
def check_datalist_classes(
    datalist: str | PathLike | Mapping[str, Any],
    class_names: Sequence[str],
    splits: Sequence[str] = ("training",),
) -> list[str]:
    """Check that a datalist's classes are exactly ``class_names`` (same names, same order) before training.

    A class-conditioned model learns "label i means class_names[i]"; training it on a datalist whose labels mean
    something else would silently produce a model that draws the wrong class.

    Args:
        datalist: the datalist JSON file (or the loaded datalist) with a ``labels`` mapping ``{"0": name, ...}``.
        class_names: the bundle's ``class_names``.
        splits: splits that must be non-empty and whose item labels must be in range.

    Returns:
        the class names.

    Raises:
        OCTDataError: the file cannot be read.
        UnknownLabelError: no ``labels`` mapping, different classes, or an item label outside them.
        EmptyDatasetError: a split in ``splits`` is missing or empty.
    """
    where: str | None = None
    if isinstance(datalist, Mapping):
        data = datalist
    else:
        where = str(datalist)
        data = read_datalist_json(datalist)
    wanted = [str(c) for c in class_names]
    labels = data.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise UnknownLabelError(
            where,
            f"the datalist has no 'labels' mapping (index -> class name); it must name the classes {wanted} "
            "(build it with medicraft_monai.data.build_datalist)",
        )
    try:
        found = [str(labels[k]) for k in sorted(labels, key=int)]
    except ValueError:
        raise UnknownLabelError(where, f"'labels' keys must be class indices, got {sorted(labels)}") from None
    if sorted(int(k) for k in labels) != list(range(len(found))):
        raise UnknownLabelError(where, f"'labels' must be indexed 0..{len(found) - 1}, got {sorted(labels)}")
    if found != wanted:
        hint = "the same classes in another order" if sorted(found) == sorted(wanted) else "different classes"
        raise UnknownLabelError(
            where,
            f"the datalist's classes {found} are not the bundle's class_names {wanted} ({hint}; label i must mean "
            f'class_names[i]). Train with --class_names "{found!r}" or rebuild the datalist with '
            f"classes={wanted}.",
        )
    for split in splits:
        items = data.get(split)
        if not items:
            raise EmptyDatasetError(where, f"the datalist's {split!r} split is missing or empty")
        bad = sorted(
            {
                str(it.get(OCTKeys.LABEL))
                for it in items
                if not isinstance(it.get(OCTKeys.LABEL), int) or not 0 <= it[OCTKeys.LABEL] < len(wanted)
            }
        )
        if bad:
            raise UnknownLabelError(
                where, f"{split!r} items have labels {bad} outside 0..{len(wanted) - 1} (classes {wanted})"
            )
    return wanted


# --------------------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------------------
def _is_complete_checkpoint(path: Path) -> bool:
    """A torch checkpoint (a zip archive) whose write finished: a killed write leaves no central directory."""
    try:
        with zipfile.ZipFile(path) as zf:
            return len(zf.namelist()) > 0
    except (zipfile.BadZipFile, OSError):
        return False


def latest_checkpoint(folder: str | PathLike, required: bool = True, prefix: str = "checkpoint") -> str | None:
    """The training-state checkpoint with the highest iteration in ``folder`` (for ``resume``).

    Recognises the names MONAI's ``CheckpointSaver`` writes, ``<prefix>_iteration=N.pt`` (every N iterations) and
    ``<prefix>_final_iteration=N.pt`` (end of a run). A file whose write was cut off (the run was killed while
    saving) is skipped with a warning, so the previous checkpoint is used.

    Args:
        folder: where the training checkpoints are.
        required: raise when there is none (else return ``None``).
        prefix: the checkpoint name prefix.

    Raises:
        FileNotFoundError: ``required`` and no usable checkpoint.
    """
    root = Path(folder)
    found: list[tuple[int, int, Path]] = []
    for p in root.glob(f"{prefix}*iteration=*.pt") if root.is_dir() else []:
        m = _CKPT_PATTERN.match(p.name)
        if m is None or m["prefix"] != prefix:
            continue
        found.append((int(m["iteration"]), int("final_" in p.name), p))
    for _, _, path in sorted(found, reverse=True):
        if _is_complete_checkpoint(path):
            logger.info("resuming from %s", path)
            return str(path)
        logger.warning("%s: incomplete checkpoint (the run was stopped while saving it); trying an older one", path)
    if required:
        raise FileNotFoundError(
            f"{root}: resume=true but there is no training checkpoint ({prefix}_iteration=N.pt) to resume from; "
            "run without --resume to start a new training"
        )
    return None


class EMAWarmupSync:
    """Let an ignite ``EMAHandler``'s momentum warm-up continue where a resumed run stopped.

    ``EMAHandler(momentum_warmup=..., warmup_iters=...)`` counts warm-up iterations in its own scheduler, which a
    checkpoint does not hold; after a resume it would restart the warm-up (and pull the EMA weights back towards
    the online weights). Attached after the ``CheckpointLoader``, this sets that counter to the restored iteration.

    Args:
        ema_handler: the ``ignite.handlers.EMAHandler``.
    """

    def __init__(self, ema_handler: Any) -> None:
        self.ema_handler = ema_handler

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        scheduler = getattr(self.ema_handler, "momentum_scheduler", None)
        if scheduler is not None and engine.state.iteration > 0:
            scheduler.event_index = int(engine.state.iteration)
            logger.info("EMA momentum warm-up continues at iteration %d", engine.state.iteration)


class FixedSeedHandler:
    """Run an engine with a fixed torch random state and restore the previous state afterwards.

    Attached to a diffusion evaluator, every validation run draws the same timesteps and noise, so validation
    losses of successive epochs are comparable, and the trainer's random stream is left untouched.

    Args:
        seed: the seed each run starts from.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._stack: contextlib.ExitStack | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.COMPLETED, self._stop)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._stop_on_error)

    def _start(self, engine: Engine) -> None:
        self._stop(engine)
        device = getattr(engine.state, "device", None)
        devices = [device] if isinstance(device, torch.device) and device.type == "cuda" else []
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(torch.random.fork_rng(devices=devices))
        torch.manual_seed(self.seed)

    def _stop(self, engine: Engine) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def _stop_on_error(self, engine: Engine, e: BaseException) -> None:
        self._stop(engine)
        raise e


class ProgressBarHandler:
    """An ignite ``ProgressBar`` showing the loss, attachable from a bundle's handler list.

    Args:
        output_key: the engine output key to show.
        persist: keep the finished bars.
    """

    def __init__(self, output_key: str = "loss", persist: bool = False) -> None:
        self.output_key = output_key
        self.persist = persist

    def _output(self, output: Any) -> dict[str, float]:
        if isinstance(output, Sequence) and output and isinstance(output[0], Mapping):
            output = output[0]
        value = output.get(self.output_key) if isinstance(output, Mapping) else None
        return {} if value is None else {self.output_key: float(value)}

    def attach(self, engine: Engine) -> None:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=self.persist).attach(engine, output_transform=self._output)


# --------------------------------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------------------------------
def build_generator(diffusion_settings: Mapping[str, Any] | None = None, **components: Any):
    """A :class:`~medicraft_monai.synthesis.generator.DiffusionGenerator` from a config's own components.

    The config-side twin of ``DiffusionGenerator.from_bundle``: an ``inference.json`` passes its ``network_def``,
    ``inferer``, ``sampling_scheduler``... here, so command-line overrides of any of them apply. See
    :meth:`DiffusionGenerator.from_components` for the arguments and errors. ``diffusion_settings`` (the config's
    ``diffusion_settings``) are checked against the ``diffusion.json`` that training wrote next to the weights.
    """
    from medicraft_monai.synthesis.generator import DiffusionGenerator

    return DiffusionGenerator.from_components(diffusion_settings=diffusion_settings, **components)


# --------------------------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------------------------
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

    from medicraft_monai.bundles import config_files

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
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        network.load_state_dict(state["state_dict"] if "state_dict" in state else state)
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
