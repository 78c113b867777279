import pytest
import torch
from torch import nn

from selfsup.errors import ConfigError
from selfsup.pipelines.engine import Engine, build_engine, resolve_device


def test_bf16_autocast_runs_matmuls_in_bf16_on_cpu():
    engine = Engine(torch.device("cpu"), "bf16", clip_grad_norm=None)
    layer = nn.Linear(4, 4)
    with engine.autocast():
        out = layer(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    with Engine(torch.device("cpu"), "fp32", None).autocast():
        assert layer(torch.randn(2, 4)).dtype == torch.float32


def test_clipping_bounds_the_update():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    engine = Engine(torch.device("cpu"), "fp32", clip_grad_norm=1e-3)
    engine.setup(model, optimizer)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    grad_norm = engine.backward_and_step(model(torch.randn(16, 8) * 100).pow(2).mean())
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert grad_norm > 1.0  # the norm before clipping is reported
    assert (after - before).norm() <= 1e-3 * (1 + 1e-4)
    assert all(p.grad is None for p in model.parameters())  # gradients are cleared


def test_engine_state_round_trips():
    engine = build_engine("single", torch.device("cpu"), "bf16", None)
    assert engine.world_size == 1 and engine.rank == 0 and engine.is_main
    state = engine.state_dict()
    engine.load_state_dict(state)
    assert "grad_scaler" in state


def test_device_and_engine_choices():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU is visible"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="unknown engine"):
        build_engine("horovod", torch.device("cpu"), "fp32", None)
