"""What every self-supervised method has: a config dataclass, a registry entry, a builder.

A method is a module built around a backbone whose ``forward(views)``
returns a :class:`~selfsup.ssl.outputs.StepOutput`. It declares its options
as a dataclass derived from :class:`MethodConfig`, beside its class, and
registers both with :func:`register_method` (solo-learn's pattern: each
method owns its config and its checks). The run config's ``method:``
section *is* the chosen method's dataclass, so a new option is one field in
the method's own file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, TypeVar

import torch
from torch import nn

from selfsup.arguments import ArgumentError
from selfsup.registry import Registry
from selfsup.ssl.backbones import Backbone


@dataclass
class MethodConfig:
    """Options shared by every method; subclasses add their own fields."""

    name: str = "simclr"

    def check(self, context: BuildContext) -> None:
        """Refuse options that cannot work (``ArgumentError`` naming the field)."""

    def options(self) -> dict[str, Any]:
        """Every field but ``name``: the method's keyword arguments, named as its options."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}


@dataclass(frozen=True)
class BuildContext:
    """What a method may need to know beyond its own options."""

    image_size: int
    num_views: int = 2
    distributed: bool = False  # several processes: losses gather across ranks
    # A frozen teacher (distillation), loaded by the caller: ``ssl`` reads no files.
    teacher: nn.Module | None = None


@dataclass(frozen=True)
class MethodSpec:
    """A registered method and what the training loop must know of it (declared, not sniffed)."""

    name: str
    config: type[MethodConfig]
    build: Callable[[Backbone, MethodConfig, BuildContext], nn.Module]
    # Its forward takes Labelled(views, labels) instead of the views alone.
    uses_labels: bool = False
    # It has ``reconstruct(images) -> {"original", "masked", "output"}`` (TensorBoard panels).
    reconstructs: bool = False
    # Its StepOutput carries the backbone's features (an online classifier learns from them).
    features: bool = False
    # It owns momentum target encoders (selfsup.ssl.momentum), moved after each step.
    momentum: bool = False
    # Its forward takes KeyedViews (per-sample draws that replay on any batch layout).
    keyed: bool = False
    # The state-dict prefix of the backbone that evaluation reads (I-JEPA: its target).
    evaluates: str = "backbone."
    # It calls only whole modules' forwards, as DeepSpeed ZeRO-3 needs to gather their
    # parameters (False: lightly's masked ViT wrappers read a ViT's tokens directly).
    zero3: bool = True


class KeyedViews(NamedTuple):
    """A micro-batch with what names each sample whatever the batch layout: the run's
    seed, the optimizer step and each sample's position in that step's global batch.

    Every loader hands rank ``r`` of ``W`` the samples ``r, r + W, r + 2W, ...``
    of a step's global batch, micro-batch after micro-batch, so position
    ``r + W * (k * b + j)`` (micro-batch ``k`` of size ``b``, row ``j``) is the
    same sample on any number of ranks, batch split or resume.
    """

    views: list[torch.Tensor]
    seed: int
    step: int
    positions: torch.Tensor  # int64 (B,), on the CPU


METHODS: Registry[MethodSpec] = Registry("method")

ModuleT = TypeVar("ModuleT", bound=type[nn.Module])


def register_method(
    name: str,
    config: type[MethodConfig],
    *,
    uses_labels: bool = False,
    reconstructs: bool = False,
    features: bool = False,
    momentum: bool = False,
    keyed: bool = False,
    evaluates: str = "backbone.",
    zero3: bool = True,
) -> Callable[[ModuleT], ModuleT]:
    """Class decorator: register a method class (with a ``from_config`` classmethod)."""
    if config.name != name:
        raise ValueError(f"{config.__name__}.name defaults to {config.name!r}, not {name!r}")

    def decorate(cls: ModuleT) -> ModuleT:
        build = cls.from_config  # type: ignore[attr-defined]
        spec = MethodSpec(
            name, config, build, uses_labels, reconstructs, features, momentum, keyed,
            evaluates, zero3,
        )  # fmt: skip
        METHODS.register(name, spec)
        return cls

    return decorate


def check_ratio(value: float, argument: str) -> None:
    """A share strictly between 0 and 1 (mask ratios)."""
    if not 0.0 < value < 1.0:
        raise ArgumentError(
            f"{argument} must be strictly between 0 and 1 (the share of patches hidden), "
            f"got {value}",
            argument,
        )


def check_positive(value: float, argument: str) -> None:
    if not value > 0:  # also refuses NaN
        raise ArgumentError(f"{argument} must be positive, got {value}", argument)
