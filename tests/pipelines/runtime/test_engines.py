import pytest
import torch
from torch import nn

from selfsup.errors import ConfigError
from selfsup.pipelines.config import load_config
from selfsup.pipelines.runtime.distributed import DistEnv
from selfsup.pipelines.runtime.engines import Engine, build_engine, compile_mode, resolve_device


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
    engine.backward(model(torch.randn(16, 8) * 100).pow(2).mean())
    grad_norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    engine.step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert grad_norm > 1.0  # far above the clipping bound, so clipping matters
    assert (after - before).norm() <= 1e-3 * (1 + 1e-4)
    assert all(p.grad is None for p in model.parameters())  # gradients are cleared


def test_device_and_engine_choices():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU is visible"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="'train.engine' is 'horovod'"):
        load_config(None, ["train.engine=horovod"])


def test_single_engine_refuses_several_processes():
    env = DistEnv(rank=0, world_size=2, launcher="torchrun")
    with pytest.raises(
        ConfigError, match="engine=single runs one process, but the torchrun launcher"
    ):
        build_engine(load_config(None, []), env)


def test_gradient_accumulation_averages_micro_batches():
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    full, half = nn.Linear(4, 1), nn.Linear(4, 1)
    half.load_state_dict(full.state_dict())
    one = Engine(torch.device("cpu"), "fp32", None)
    one.setup(full, torch.optim.SGD(full.parameters(), lr=0.1))
    one.backward(full(x).pow(2).mean())
    one.step()
    two = Engine(torch.device("cpu"), "fp32", None, grad_accum_steps=2)
    two.setup(half, torch.optim.SGD(half.parameters(), lr=0.1))
    for chunk in x.split(4):
        two.backward(half(chunk).pow(2).mean())
    two.step()
    for a, b in zip(full.parameters(), half.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_compile_is_on_by_default_for_cuda_single_and_ddp_only():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compile_mode("auto", "default", "single", cuda) == "default"
    assert compile_mode("auto", "max-autotune-no-cudagraphs", "ddp", cuda) == (
        "max-autotune-no-cudagraphs"
    )
    assert compile_mode("auto", "default", "deepspeed", cuda) is None  # DeepSpeed: opt-in
    assert compile_mode("auto", "default", "single", cpu) is None
    assert compile_mode(True, "reduce-overhead", "single", cpu) == "reduce-overhead"
    assert compile_mode(False, "default", "single", cuda) is None
    with pytest.raises(ConfigError, match="train.compile_mode"):
        load_config(None, ["train.compile_mode=fastest"])
