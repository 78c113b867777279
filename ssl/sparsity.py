"""Weight sparsity: magnitude masks (unstructured, N:M such as 2:4, blocks) and their schedule.

PyTorch's own pruning tools do the bookkeeping:

- ``torch.ao.pruning.BaseSparsifier`` resolves layer names, attaches each
  mask as a parametrization (``weight = mask * original``, so every engine,
  DDP, DeepSpeed and ``torch.compile`` see masked weights in the forward pass
  and pruned weights get no gradient) and folds masks into plain weights
  (``squash_mask``);
- ``torch.ao.pruning.CubicSL.sparsity_compute_fn`` is the cubic ramp of
  Zhu & Gupta (2017).

Mask selection is our own (:func:`magnitude_mask`): ``WeightNormSparsifier``
reads only the last two dimensions of a weight (so not a convolution's), picks
ties through ``topk`` (not reproducible across runs) and can un-prune a weight;
here a convolution is pruned in its ``(out, in * kh * kw)`` matmul view, ties
go to the lower index (stable sort) and a pruned weight stays pruned.

The mask is a persistent buffer (:class:`KeptMask`), so it is in the model's
``state_dict`` and therefore in every checkpoint (and resharded by DCP).
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.ao.pruning import BaseSparsifier
from torch.ao.pruning.scheduler.cubic_scheduler import CubicSL
from torch.ao.pruning.sparsifier.utils import FakeSparsity
from torch.nn.utils import parametrize

from selfsup.arguments import ArgumentError
from selfsup.registry import did_you_mean
from selfsup.ssl.backbones import Backbone

log = logging.getLogger(__name__)

PATTERNS = ("unstructured", "2:4", "block")
SCHEDULES = ("gradual", "one_shot")
PRUNABLE = (nn.Conv2d, nn.Linear)
# Kept dense unless a `layers` entry names them: the stem convolution (3 input
# channels, tiny and sensitive), a ViT's patch embedding and a classifier.
DEFAULT_EXCLUDED = ("conv1", "stem.*", "patch_embed.*", "fc", "head", "head.*")
MASK_SUFFIX = ".parametrizations.weight.0.mask"
ORIGINAL_SUFFIX = ".parametrizations.weight.original"


@dataclass
class SparsityConfig:
    """The ``sparsity:`` section: which layers, what pattern, how far and when."""

    target: float = 0.0  # final share of zero weights in the covered layers; 0: dense
    pattern: str = "unstructured"  # unstructured | 2:4 | block
    block_shape: list[int] = field(default_factory=lambda: [4, 4])  # block: (outputs, inputs)
    layers: list[str] = field(default_factory=list)  # names/globs in the backbone; []: all but
    exclude: list[str] = field(default_factory=list)  # ... conv1, patch_embed, fc/head; more here
    schedule: str = "gradual"  # gradual (cubic ramp, Zhu & Gupta 2017) | one_shot
    start: float = 0.0  # first pruning step; <= 1: a fraction of the run
    end: float = 0.75  # the step the target is reached; <= 1: a fraction of the run
    every: int = 100  # steps between mask updates on the ramp

    @property
    def enabled(self) -> bool:
        return self.target > 0

    @property
    def final_level(self) -> float:
        """The pruning level at the end: ``target``, or every group under 2:4 (50% zeros)."""
        return 1.0 if self.pattern == "2:4" else self.target

    def check(self) -> None:
        """Ranges and names, each refused with the key to change."""
        if not 0 <= self.target < 1:  # NaN fails too
            raise ArgumentError(
                f"sparsity.target={self.target} is outside [0, 1): it is the final share of "
                "zero weights, e.g. 0.5"
            )
        if self.pattern == "124":
            raise ArgumentError(
                'sparsity.pattern reads 124: YAML takes 2:4 for a number; write "2:4"'
            )
        _check_choice("sparsity.pattern", self.pattern, PATTERNS)
        _check_choice("sparsity.schedule", self.schedule, SCHEDULES)
        if self.pattern == "2:4" and self.target not in (0.0, 0.5):
            raise ArgumentError(
                f"sparsity.pattern=2:4 zeroes 2 of every 4 weights: set sparsity.target=0.5, "
                f"not {self.target}"
            )
        if len(self.block_shape) != 2 or min(self.block_shape) < 1:
            raise ArgumentError(
                f"sparsity.block_shape must be two positive sizes [outputs, inputs], got "
                f"{list(self.block_shape)}"
            )
        if self.every < 1 or self.start < 0 or self.end < 0:
            raise ArgumentError("sparsity.every must be >= 1 and sparsity.start/end >= 0")


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ArgumentError(
            f"config key '{key}' is '{value}'{did_you_mean(value, allowed)}; valid values: "
            f"{', '.join(allowed)}"
        )


def cubic_level(step: int, target: float, start: int, end: int, every: int) -> float:
    """The share of weights pruned after ``step`` steps: 0 before ``start``, then the cubic
    ramp (updated every ``every`` steps) to ``target`` at ``end``, and ``target`` after."""
    if step < start:
        return 0.0
    if step >= end:
        return target
    at = start + (step - start) // every * every  # the ramp moves only at update steps
    updates = max(1, math.ceil((end - start) / every))
    return float(CubicSL.sparsity_compute_fn(0.0, target, at, start, every, updates))


def matmul_view(weight: torch.Tensor) -> torch.Tensor:
    """A weight as ``(outputs, inputs)``: a convolution's inputs are ``in * kh * kw``."""
    return weight.reshape(weight.shape[0], -1)


def magnitude_mask(
    weight: torch.Tensor, kept: torch.Tensor, level: float, pattern: str, block: tuple[int, int]
) -> torch.Tensor:
    """The new keep-mask (bool, ``weight``'s shape) at ``level``; ``kept`` is the current one.

    Unstructured and block: the ``round(level * units)`` smallest units (weights,
    or blocks by L2 norm) are pruned. ``2:4``: ``level`` is the share of groups of
    four consecutive inputs that hold two zeros (the two smallest), so the layer
    is exactly 50% zeros at level 1. Pruned units score below every kept one:
    masks only grow while the level rises.
    """
    w = matmul_view(weight.detach().float().abs())
    k = matmul_view(kept.bool())
    if pattern == "unstructured":
        new = _prune_smallest(w, k, level, (1, 1))
    elif pattern == "block":
        new = _prune_smallest(w, k, level, block)
    else:
        new = _prune_n_of_m(w, k, level, zeros=2, group=4)
    return new.reshape(weight.shape)


def _prune_smallest(
    w: torch.Tensor, kept: torch.Tensor, level: float, block: tuple[int, int]
) -> torch.Tensor:
    """Keep-mask with the ``round(level * blocks)`` lowest-norm ``block``s pruned."""
    rows, cols = w.shape
    br, bc = block
    pad_r, pad_c = -rows % br, -cols % bc
    padded = nn.functional.pad(w.pow(2), (0, pad_c, 0, pad_r))
    was_kept = nn.functional.pad(kept.float(), (0, pad_c, 0, pad_r), value=1.0)
    blocks = _blocks(padded, br, bc).sum(-1)
    blocks_kept = _blocks(was_kept, br, bc).amin(-1) > 0
    score = torch.where(blocks_kept, blocks, torch.full_like(blocks, -1.0)).flatten()
    prune = torch.argsort(score, stable=True)[: round(level * score.numel())]
    keep = torch.ones_like(score, dtype=torch.bool)
    keep[prune] = False
    grid = keep.reshape(padded.shape[0] // br, padded.shape[1] // bc)
    full = grid.repeat_interleave(br, 0).repeat_interleave(bc, 1)
    return full[:rows, :cols]


def _blocks(x: torch.Tensor, br: int, bc: int) -> torch.Tensor:
    """``(R, C)`` -> ``(R/br, C/bc, br*bc)``: each block's values on the last axis."""
    r, c = x.shape
    return x.reshape(r // br, br, c // bc, bc).permute(0, 2, 1, 3).reshape(r // br, c // bc, -1)


def _prune_n_of_m(
    w: torch.Tensor, kept: torch.Tensor, level: float, zeros: int, group: int
) -> torch.Tensor:
    """Keep-mask where the ``round(level * groups)`` lowest-norm groups lose their ``zeros``
    smallest weights (groups already pruned go first)."""
    rows, cols = w.shape
    groups = w.reshape(rows, cols // group, group)
    pruned_groups = ~kept.reshape(rows, cols // group, group).all(-1)
    norms = groups.pow(2).sum(-1)
    score = torch.where(pruned_groups, torch.full_like(norms, -1.0), norms).flatten()
    chosen = torch.argsort(score, stable=True)[: round(level * score.numel())]
    within = torch.argsort(groups.reshape(-1, group), dim=-1, stable=True)[chosen, :zeros]
    keep = torch.ones(score.numel(), group, dtype=torch.bool, device=w.device)
    keep[chosen.unsqueeze(1), within] = False
    return keep.reshape(rows, cols)


class KeptMask(FakeSparsity):
    """torch.ao's mask parametrization, with the mask kept in ``state_dict``.

    ``FakeSparsity`` leaves its mask out of the state dict; a run that resumes
    bit for bit needs it in the checkpoint. A bool mask costs a byte per
    weight and stays bool when the model is cast to bf16/fp16.
    """

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return nn.Module.state_dict(self, *args, **kwargs)


class MagnitudePruner(BaseSparsifier):
    """torch.ao's sparsifier bookkeeping with :func:`magnitude_mask` as the mask rule."""

    def __init__(self, pattern: str, block: tuple[int, int] = (4, 4)) -> None:
        super().__init__(defaults={"sparsity_level": 0.0, "pattern": pattern, "block": block})

    def attach(self, network: nn.Module, layers: Iterable[str]) -> None:
        """Give each named layer's weight an all-ones :class:`KeptMask` (nothing pruned yet)."""
        config = [
            {
                "tensor_fqn": f"{name}.weight",
                "parametrization": KeptMask,
                "mask": torch.ones_like(layer_weight(network, name), dtype=torch.bool),
            }
            for name in layers
        ]
        self.prepare(network, config)

    def set_level(self, level: float) -> None:
        """Prune every covered layer to ``level`` (masks only grow)."""
        for group in self.groups:
            group["sparsity_level"] = level
        self.step()

    def update_mask(  # type: ignore[override]
        self,
        module: nn.Module,
        tensor_name: str,
        sparsity_level: float,
        pattern: str,
        block: tuple[int, int],
        **kwargs: Any,
    ) -> None:
        mask = getattr(module.parametrizations, tensor_name)[0].mask
        original = getattr(module.parametrizations, tensor_name).original
        new = magnitude_mask(original, mask, sparsity_level, pattern, tuple(block))  # type: ignore[arg-type]
        mask.copy_(new)  # in place: a compiled graph reads this very buffer


def prunable_layers(network: nn.Module) -> dict[str, nn.Module]:
    """Every convolution and linear layer, by name (without a mask attached yet)."""
    return {n: m for n, m in network.named_modules() if isinstance(m, PRUNABLE) and n}


def covered_layers(network: nn.Module, config: SparsityConfig) -> list[str]:
    """The layers ``config`` prunes; a ``layers``/``exclude`` entry that matches none is refused;
    under 2:4 a layer whose input width is not a multiple of 4 is skipped with a log line."""
    candidates = prunable_layers(network)
    named = (
        list(candidates) if not config.layers else _matching(candidates, config.layers, "layers")
    )
    excluded = set(_matching(candidates, config.exclude, "exclude"))
    if not config.layers:
        excluded |= {
            n for n in candidates if any(fnmatch.fnmatchcase(n, g) for g in DEFAULT_EXCLUDED)
        }
    covered = [n for n in named if n not in excluded]
    if config.pattern == "2:4":
        narrow = [n for n in covered if matmul_view(layer_weight(network, n)).shape[1] % 4]
        for name in narrow:
            log.info(
                "sparsity: %s skipped (2:4 needs an input width that is a multiple of 4)", name
            )
        covered = [n for n in covered if n not in narrow]
    if not covered:
        raise ArgumentError("sparsity covers no layer: widen sparsity.layers or sparsity.exclude")
    return covered


def masked_pruner(network: nn.Module, config: SparsityConfig) -> tuple[MagnitudePruner, list[str]]:
    """All-ones masks on the layers ``config`` covers, and the pruner that updates them."""
    layers = covered_layers(network, config)
    pruner = MagnitudePruner(config.pattern, (config.block_shape[0], config.block_shape[1]))
    pruner.attach(network, layers)
    return pruner, layers


def attach_masks(backbone: Backbone, config: SparsityConfig) -> Backbone:
    """``backbone`` with all-ones masks on the layers ``config`` covers (a sparse run's layout)."""
    masked_pruner(backbone.trunk, config)
    return backbone


def _matching(candidates: dict[str, nn.Module], patterns: list[str], key: str) -> list[str]:
    found: list[str] = []
    for pattern in patterns:
        hits = [n for n in candidates if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            example = ", ".join(list(candidates)[:3])
            raise ArgumentError(
                f"sparsity.{key} entry '{pattern}' matches no Conv2d or Linear layer"
                f"{did_you_mean(pattern, tuple(candidates)) or f' (names look like {example})'}"
            )
        found += [n for n in hits if n not in found]
    return found


def layer_weight(network: nn.Module, name: str) -> torch.Tensor:
    weight = network.get_submodule(name).weight
    assert isinstance(weight, torch.Tensor)
    return weight


def masks(network: nn.Module) -> dict[str, torch.Tensor]:
    """Every masked layer's keep-mask, by layer name."""
    found: dict[str, torch.Tensor] = {}
    for name, module in network.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            found[name] = module.parametrizations["weight"][0].mask
    return found


def layer_sparsity(network: nn.Module) -> dict[str, float]:
    """The share of pruned weights of every masked layer, from its mask."""
    return {name: 1.0 - mask.float().mean().item() for name, mask in masks(network).items()}


def overall_sparsity(network: nn.Module) -> float:
    """Pruned weights over all masked weights."""
    kept = list(masks(network).values())
    total = sum(m.numel() for m in kept)
    pruned = total - sum(int(m.sum().item()) for m in kept)
    return pruned / total if total else 0.0


def fold_masks(network: nn.Module) -> nn.Module:
    """Remove every mask parametrization, leaving plain weights with real zeros."""
    for module in network.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return network


def fold_mask_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of a masked network as plain keys: ``x.weight = original * mask``."""
    folded: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(MASK_SUFFIX):
            continue
        if key.endswith(ORIGINAL_SUFFIX):
            prefix = key[: -len(ORIGINAL_SUFFIX)]
            mask = state[prefix + MASK_SUFFIX]
            folded[prefix + ".weight"] = value * mask.to(value.dtype)
        else:
            folded[key] = value
    return folded
