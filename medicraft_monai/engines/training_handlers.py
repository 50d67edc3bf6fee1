"""Ignite handlers that the bundles' training and validation workflows attach beside MONAI's own.

- :class:`EMAWarmupSync`: an ``EMAHandler``'s momentum warm-up continues where a resumed run stopped;
- :class:`FixedSeedHandler`: every validation run draws the same random numbers (comparable losses) and leaves
  the trainer's random stream alone;
- :class:`ProgressBarHandler`: ignite's ``ProgressBar`` with the loss, attachable from a config's handler list.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["EMAWarmupSync", "FixedSeedHandler", "ProgressBarHandler"]

logger = logging.getLogger(__name__)


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
