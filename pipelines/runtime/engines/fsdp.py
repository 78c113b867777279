"""FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters, gradients and optimizer
state sharded per block across the processes, as DTensors.

Each residual block of a ResNet and each transformer block of a ViT (the
MAE decoder's included) is one FSDP unit, and the root module is the last
one (torchtitan's layout). Which modules are blocks is declared once per
backbone family in :data:`SHARD_BLOCKS`, by class, so every model of the
family is covered and a plugin registers another family in one line.

Mixed precision is FSDP's own :class:`MixedPrecisionPolicy`: parameters are
all-gathered and computed in bf16/fp16 and gradients reduced in fp32, with
the engine's autocast around the loss. BatchNorm parameters stay in fp32
(``param_dtype_override_fn``): BatchNorm keeps fp32 running statistics,
which a plain bf16 parameter policy would pair with bf16 weights, a
combination ``batch_norm`` refuses; fp32 weights with a bf16 input are the
mixed-type BatchNorm both CPU and CUDA kernels run.

Checkpoints are the base engine's: DCP through ``get_state_dict`` and
``set_state_dict``, which read and write the DTensor shards, so a DDP or
one-process checkpoint resumes here and an FSDP one there, at any process
count. Sparsity masks are refused (see :mod:`selfsup.pipelines.train.sparsity`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import (
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from torch.distributed.tensor import DTensor

from selfsup.pipelines.checkpoint.background import BackgroundWriter
from selfsup.pipelines.runtime.engines.base import Engine
from selfsup.pipelines.runtime.engines.collectives import (
    ProcessGroupCollectives,
    broadcast_buffers,
)
from selfsup.registry import Registry

# Backbone family -> the block classes that become FSDP units (imported when used).
SHARD_BLOCKS: Registry[Callable[[], tuple[type[nn.Module], ...]]] = Registry("FSDP block family")

# Methods beside forward that run the sharded model (MAE's and SimMIM's
# reconstruction images): FSDP gathers the root's parameters around them too.
FORWARD_METHODS = ("reconstruct",)


@SHARD_BLOCKS.decorator("resnet")
def _resnet_blocks() -> tuple[type[nn.Module], ...]:
    from timm.models import resnet as timm_resnet
    from torchvision.models import resnet

    return (resnet.BasicBlock, resnet.Bottleneck, timm_resnet.BasicBlock, timm_resnet.Bottleneck)


@SHARD_BLOCKS.decorator("vit")
def _vit_blocks() -> tuple[type[nn.Module], ...]:
    from timm.models.vision_transformer import Block

    return (Block,)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The model's blocks of every registered family, outermost first (none nested)."""
    kinds = tuple(cls for declare in SHARD_BLOCKS.values() for cls in declare())
    units: list[nn.Module] = []
    for module in model.modules():
        inside = any(module is not u and _contains(u, module) for u in units)
        if isinstance(module, kinds) and not inside:
            units.append(module)
    return units


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def keep_norms_in_fp32(param: nn.Parameter, norm_params: set[int]) -> torch.dtype | None:
    """BatchNorm parameters keep their dtype under a low-precision policy (see above)."""
    return param.dtype if id(param) in norm_params else None


class FSDPEngine(ProcessGroupCollectives, Engine):
    """``fully_shard`` per block and on the root, over NCCL (GPUs) or gloo (CPUs)."""

    name = "fsdp"

    def __init__(
        self,
        *args,
        reshard_after_forward: bool = True,
        sync_batchnorm: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.reshard_after_forward = reshard_after_forward
        self.sync_batchnorm = sync_batchnorm
        self.join_process_group()

    def setup(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, channels_last: bool = False
    ) -> nn.Module:
        if self.sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.place(model, optimizer, channels_last)
        names = {id(p): name for name, p in model.named_parameters()}
        policy = self._policy(model)
        for unit in shard_units(model):
            if self.compile is not None and self.device.type == "cuda":
                unit.compile(mode=self.compile)  # per block, in place: names unchanged
            fully_shard(unit, reshard_after_forward=self.reshard_after_forward, mp_policy=policy)
        fully_shard(model, reshard_after_forward=self.reshard_after_forward, mp_policy=policy)
        for method in FORWARD_METHODS:
            if callable(getattr(model, method, None)):
                register_fsdp_forward_method(model, method)
        _point_optimizer_at_shards(optimizer, names, dict(model.named_parameters()))
        return model

    def _policy(self, model: nn.Module) -> MixedPrecisionPolicy:
        if self.dtype is None:
            return MixedPrecisionPolicy()
        norm_params = {
            id(p)
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._NormBase)
            for p in m.parameters(recurse=False)
        }
        return MixedPrecisionPolicy(
            param_dtype=self.dtype,
            reduce_dtype=torch.float32,
            param_dtype_override_fn=lambda p: keep_norms_in_fp32(p, norm_params),
        )

    def sync_context(self, last: bool) -> contextlib.AbstractContextManager:
        model = self.unwrap()
        assert isinstance(model, FSDPModule)
        model.set_requires_gradient_sync(last)  # reduce-scatter on the last micro-batch only
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def gathered(self) -> Iterator[nn.Module]:
        """The model with the root's parameters gathered, for calls other than forward."""
        model = self.unwrap()
        assert isinstance(model, FSDPModule)
        model.unshard()
        try:
            yield model
        finally:
            model.reshard()

    def save_model_and_optimizer(
        self, path: Path, writer: BackgroundWriter | None = None
    ) -> Future | None:
        # FSDP leaves buffers (BatchNorm statistics) per rank; DCP writes one copy.
        # Rank 0's go to every rank first, so that each continues from what is saved.
        broadcast_buffers(self.unwrap())
        return super().save_model_and_optimizer(path, writer)

    def held(self, parameter: torch.Tensor) -> torch.Tensor:
        return _local(parameter.detach())  # this rank's shard of the DTensor

    def full_model_state(self) -> dict[str, torch.Tensor]:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.unwrap(), options=options)  # rank 0 holds it whole
        return {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _point_optimizer_at_shards(
    optimizer: torch.optim.Optimizer, names: dict[int, str], sharded: dict[str, nn.Parameter]
) -> None:
    """``fully_shard`` replaces each parameter by a DTensor parameter of the same name;
    the optimizer, built before (its groups by name: weight decay, layer decay), is
    given the new ones. It holds no state yet."""
    assert not optimizer.state, "the optimizer must not have stepped before sharding"
    for group in optimizer.param_groups:
        group["params"] = [sharded[names[id(p)]] for p in group["params"]]
