"""medicraft_monai.engines.training_handlers: the fixed-seed validation handler and the EMA warm-up sync."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from medicraft_monai.engines import EMAWarmupSync, FixedSeedHandler


def test_fixed_seed_handler_repeats_draws_and_leaves_the_global_stream_alone() -> None:
    engine = Engine(lambda e, batch: torch.rand(3))
    outputs: list[torch.Tensor] = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output.clone()))
    FixedSeedHandler(seed=11).attach(engine)
    torch.manual_seed(5)
    engine.run([0, 1], max_epochs=1)
    after_first = torch.rand(1)
    engine.run([0, 1], max_epochs=1)
    assert torch.equal(outputs[0], outputs[2]) and torch.equal(outputs[1], outputs[3])
    torch.manual_seed(5)
    assert torch.equal(torch.rand(1), after_first), "the handler must restore the global random state"


def test_ema_warmup_continues_at_the_restored_iteration() -> None:
    from ignite.handlers import EMAHandler

    def momentum_after_resume(sync: bool) -> float:
        engine = Engine(lambda e, batch: None)
        ema = EMAHandler(torch.nn.Linear(2, 2), momentum=0.001, momentum_warmup=0.5, warmup_iters=101)
        ema.attach(engine)
        engine.state.iteration = 50  # what CheckpointLoader restores at STARTED
        if sync:
            EMAWarmupSync(ema)(engine)
        ema.momentum_scheduler(engine)  # the next ITERATION_COMPLETED
        return engine.state.ema_momentum

    # linear warm-up from 0.5 to 0.001 over 101 iterations: iteration 51 is half way
    assert momentum_after_resume(sync=True) == pytest.approx(0.5 + (0.001 - 0.5) * 50 / 100)
    assert momentum_after_resume(sync=False) == pytest.approx(0.5), "without the sync the warm-up restarts"
