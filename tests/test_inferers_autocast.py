"""Mixed precision in one place (medicraft_monai.inferers.autocast): the autocast context, the dtype names configs
use, and the training inferer that wraps a forward pass in bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from medicraft_monai.inferers import AutocastInferer, autocast_context, autocast_dtype, bf16_is_fast


def _linear_with_dtype_log() -> tuple[torch.nn.Module, list[torch.dtype]]:
    seen: list[torch.dtype] = []
    net = torch.nn.Linear(8, 8)
    net.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return net, seen


def test_autocast_inferer_computes_in_bf16_and_returns_float32() -> None:
    seen: list[torch.dtype] = []
    net = torch.nn.Linear(8, 8)
    net.register_forward_hook(lambda m, i, o: seen.append(o.dtype))

    def inferer(inputs, network):
        return network(inputs)

    x = torch.randn(4, 8)
    assert AutocastInferer(inferer, enabled=True)(x, net).dtype == torch.float32
    assert AutocastInferer(inferer, enabled=False)(x, net).dtype == torch.float32
    assert seen == [torch.bfloat16, torch.float32]


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_autocast_context_runs_bf16_for_a_dtype_and_full_precision_for_none(device) -> None:
    net, seen = _linear_with_dtype_log()
    x = torch.randn(2, 8)
    with autocast_context(device, "bfloat16"):
        net(x)
    with autocast_context(device, torch.bfloat16):
        net(x)
    with autocast_context(device, None):
        net(x)
    assert seen == [torch.bfloat16, torch.bfloat16, torch.float32]


def test_autocast_dtype_reads_names_and_rejects_unknown_ones() -> None:
    assert autocast_dtype("bfloat16") is torch.bfloat16
    assert autocast_dtype(torch.float16) is torch.float16
    assert autocast_dtype(None) is None
    for bad in ("bf17", "int8", "Tensor"):
        with pytest.raises(ValueError, match="autocast dtype"):
            autocast_dtype(bad)


def test_bf16_is_fast_answers_for_cpu_and_refuses_other_devices() -> None:
    assert isinstance(bf16_is_fast("cpu"), bool)
    assert bf16_is_fast("meta") is False
