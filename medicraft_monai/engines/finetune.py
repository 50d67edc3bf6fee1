"""Fine-tuning a shipped generator to a clinic's own classes (the generator bundles' ``configs/finetune.json``).

A team with a handful of exams and its own class names starts from weights that already know what a retina looks
like, instead of from noise:

- :class:`ParentGenerator`: the weights a fine-tuning starts from. It reads their ``diffusion.json``, refuses a
  config whose prediction type, noise schedule, timesteps or image size differ from theirs, refuses to write into
  their folder, and loads them into the new network: every layer as it is, the class embedding re-made for the new
  classes (a class of the same name keeps its row, a new class gets a fresh row, the null class of classifier-free
  guidance keeps the parent's). Its :meth:`~ParentGenerator.record` goes into the new ``diffusion.json``, so the
  parent's checksum travels with the weights and with the provenance of every synthetic image.
- :class:`FreezeModulesHandler`: keep the encoder half (``conv_in``, ``down_blocks``) fixed for the first epochs.
- :class:`TimeBudgetHandler`: stop cleanly after ``max_minutes``, with the final checkpoint written, so a later run
  with ``--resume true`` continues.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from medicraft_monai.engines.records import (
    DIFFUSION_SETTINGS_FILE,
    LATENT_INFO_FILE,
    GeneratorError,
    check_diffusion_settings,
    read_latent_info,
)
from medicraft_monai.networks.checkpoint import CheckpointError, check_checkpoint_file, load_state_dict
from medicraft_monai.utils import file_sha256

__all__ = ["ENCODER_MODULES", "FreezeModulesHandler", "ParentGenerator", "TimeBudgetHandler"]

logger = logging.getLogger(__name__)

#: the modules of MONAI's ``DiffusionModelUNet`` that make its encoder half
ENCODER_MODULES: tuple[str, ...] = ("conv_in", "down_blocks")

#: the settings that may differ from the parent's: the class list (what fine-tuning changes) and the parent record
_FREE_SETTINGS = ("class_names", "parent")


class ParentGenerator:
    """The trained generator a fine-tuning run starts from.

    Args:
        ckpt_path: the parent's weights (the shipped ``models/model.pt``); its ``diffusion.json`` must be beside it.
        output_dir: where the fine-tuned weights go (the run's ``@ckpt_dir``); it must not be the parent's folder.
        seed: seed of the fresh class-embedding rows.

    Raises:
        GeneratorError: a missing or unreadable checkpoint, no ``diffusion.json`` beside it (its classes would be
            unknown), or ``output_dir`` is the parent's folder (the shipped weights would be overwritten).
    """

    def __init__(self, ckpt_path: str | PathLike, output_dir: str | PathLike, seed: int = 0) -> None:
        try:
            self.ckpt = check_checkpoint_file(
                ckpt_path, "parent generator checkpoint", hint="give --parent_ckpt_path (the shipped models/model.pt)"
            )
        except CheckpointError as err:
            raise GeneratorError(str(err)) from None
        self.folder = self.ckpt.parent
        settings_file = self.folder / DIFFUSION_SETTINGS_FILE
        if not settings_file.is_file():
            raise GeneratorError(
                f"{self.ckpt}: no {DIFFUSION_SETTINGS_FILE} beside the parent weights, so their classes and noise "
                "schedule are unknown; fine-tune from a trained bundle's models/ folder"
            )
        self.settings = check_diffusion_settings(self.ckpt, {}, use="fine-tunes them with") or {}
        self.class_names = [str(c) for c in self.settings.get("class_names") or []]
        if not self.class_names:
            raise GeneratorError(f"{settings_file}: records no class_names; cannot tell which class embedding is which")
        self.output_dir = Path(output_dir)
        if self.output_dir.resolve() == self.folder.resolve():
            raise GeneratorError(
                f"{self.output_dir}: the fine-tuned weights would overwrite the parent's in the same folder; set "
                "--ckpt_dir to another folder"
            )
        self.seed = int(seed)
        self.sha256 = file_sha256(self.ckpt)

    def record(self) -> dict[str, Any]:
        """What ``diffusion.json`` of the fine-tuned weights says about their parent (``parent``)."""
        return {
            "model_sha256": self.sha256,
            "class_names": list(self.class_names),
            "path": str(self.ckpt.resolve()),
        }

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        """Refuse a config whose diffusion settings (prediction type, noise schedule, timesteps, image size...) differ
        from the parent's; only the class list may.

        Raises:
            GeneratorError: the differing keys with both values and the overrides that fix them.
        """
        fixed = {k: v for k, v in settings.items() if k not in _FREE_SETTINGS}
        check_diffusion_settings(self.ckpt, fixed, use="fine-tunes them with")

    def class_embedding(self, parent: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
        """The class embedding table for ``class_names`` (plus the null class, last) made from the parent's.

        A class whose name the parent knows keeps its row; a new class gets a fresh row drawn like
        ``torch.nn.Embedding``'s initial weights (standard normal, seeded), which is how the parent's rows started;
        the null class keeps the parent's null row, so classifier-free guidance still has its unconditional model.
        """
        names = [str(c) for c in class_names]
        if parent.shape[0] != len(self.class_names) + 1:
            raise GeneratorError(
                f"{self.ckpt}: the class embedding has {parent.shape[0]} rows but {DIFFUSION_SETTINGS_FILE} lists "
                f"{len(self.class_names)} classes (expected one more row, the null class)"
            )
        g = torch.Generator().manual_seed(self.seed)
        fresh = torch.randn(len(names), parent.shape[1], generator=g).to(parent.dtype)
        rows = [parent[self.class_names.index(n)] if n in self.class_names else fresh[i] for i, n in enumerate(names)]
        return torch.stack([*rows, parent[-1]])

    def load_into(
        self, network: torch.nn.Module, class_names: Sequence[str], settings: Mapping[str, Any] | None = None
    ) -> torch.nn.Module:
        """Load the parent's weights into ``network`` (made for ``class_names``) and return it.

        Args:
            network: a ``DiffusionModelUNet`` with ``len(class_names) + 1`` class embeddings.
            class_names: the fine-tuning run's classes.
            settings: the run's ``diffusion_settings``, checked first (:meth:`check_settings`).

        Raises:
            GeneratorError: other diffusion settings than the parent's, or a network that does not fit its weights
                (other channels, levels or attention than the bundle's network_def it was trained with).
        """
        if settings is not None:
            self.check_settings(settings)
        names = [str(c) for c in class_names]
        state = load_state_dict(self.ckpt, "parent generator checkpoint")
        key = "class_embedding.weight"
        if key not in state:
            raise GeneratorError(f"{self.ckpt}: has no {key}; not a class-conditioned generator")
        state[key] = self.class_embedding(state[key], names)
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as err:
            detail = " ".join(line.strip() for line in str(err).strip().splitlines()[:3])
            raise GeneratorError(
                f"{self.ckpt}: the parent weights do not fit the configured network (keep the bundle's channels, "
                f"attention levels and res blocks when fine-tuning): {detail}"
            ) from None
        kept = [n for n in names if n in self.class_names]
        logger.info(
            "fine-tuning from %s (sha256 %s...): classes %s keep their embedding, %s start fresh",
            self.ckpt,
            self.sha256[:12],
            kept,
            [n for n in names if n not in kept],
        )
        return network

    def latent_info(self) -> dict[str, Any]:
        """The parent's ``latent.json`` (latent generators: the scale factor the parent was trained with)."""
        return read_latent_info(self.folder / LATENT_INFO_FILE)

    def copy_companions(self, names: Sequence[str] = ()) -> list[Path]:
        """Copy the files the fine-tuned weights need beside them (the latent generator's ``autoencoder.pt``) into
        ``output_dir``, so that folder alone can be sampled from; a file already there with the same content is
        kept, one with other content is an error (it belongs to another run)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        copied = []
        for name in names:
            src, dst = self.folder / name, self.output_dir / name
            if not src.is_file():
                raise GeneratorError(f"{src}: the parent's {name} is missing")
            if dst.is_file():
                if file_sha256(dst) != file_sha256(src):
                    raise GeneratorError(f"{dst}: exists and differs from the parent's {name} ({src}); not replaced")
                continue
            shutil.copy2(src, dst)
            copied.append(dst)
        return copied


class FreezeModulesHandler:
    """Keep some of a network's modules fixed for the first epochs of a run, then train them too.

    Fine-tuning a pretrained UNet on few images, a team may keep the encoder half (what a retina looks like) fixed
    while the decoder and the new class embedding adapt, then release it. The state follows the trainer's epoch, so
    a resumed run freezes exactly when the interrupted one would have.

    Args:
        network: the network being trained.
        epochs: epochs during which the modules are fixed (0: never).
        modules: names of the network's top-level modules to fix (default: :data:`ENCODER_MODULES`).
    """

    def __init__(self, network: torch.nn.Module, epochs: int = 0, modules: Sequence[str] = ENCODER_MODULES) -> None:
        self.network = network
        self.epochs = int(epochs)
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        missing = [m for m in modules if not hasattr(network, m)]
        if missing:
            raise ValueError(f"the network has no module(s) {missing} to freeze")
        self.modules = [str(m) for m in modules]

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.modules for p in getattr(self.network, m).parameters()]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        frozen = engine.state.epoch <= self.epochs  # epoch is 1-based once it has started
        params = self.parameters()
        if params and params[0].requires_grad == frozen:
            for p in params:
                p.requires_grad_(not frozen)
                if frozen:
                    p.grad = None
            logger.info("epoch %d: %s %s", engine.state.epoch, "froze" if frozen else "released", self.modules)


class TimeBudgetHandler:
    """Stop training after ``max_minutes`` of wall time, cleanly.

    The trainer finishes its iteration and ends as if it had completed: the ``CheckpointSaver`` handlers write the
    final training checkpoint and ``model.pt``, so ``--resume true`` continues where it stopped.

    Args:
        max_minutes: the budget in minutes (0 or ``None``: no budget).
    """

    def __init__(self, max_minutes: float | None = None) -> None:
        self.max_minutes = float(max_minutes or 0.0)
        if self.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0, got {max_minutes}")
        self._start: float | None = None
        self.stopped = False

    def attach(self, engine: Engine) -> None:
        if self.max_minutes > 0:
            engine.add_event_handler(Events.STARTED, self._started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self._start = time.monotonic()

    def __call__(self, engine: Engine) -> None:
        if self._start is None or self.stopped:
            return
        if time.monotonic() - self._start >= self.max_minutes * 60.0:
            self.stopped = True
            logger.info(
                "time budget of %g min reached at epoch %d, iteration %d: stopping with a checkpoint "
                "(--resume true continues)",
                self.max_minutes,
                engine.state.epoch,
                engine.state.iteration,
            )
            engine.terminate()
