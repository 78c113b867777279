"""I-JEPA's multi-block masks (Assran et al. 2023), drawn from seeded counters.

The rules are the reference collator's (facebookresearch/ijepa,
``src/masks/multiblock.py``): per step, one target block size (scale 0.15-0.2
of the patch grid, aspect 0.75-1.5) and one context block size (scale
0.85-1.0, square), both from a generator seeded by the step; per sample,
``targets`` target blocks at random places and one context block with the
target patches removed, retried while it keeps too few patches, the
constraints relaxed one target at a time after 20 tries.

Deliberate differences, each for exact replay on any batch layout:

- every draw comes from a generator seeded by (seed, step) or (seed, step,
  sample id), never the global RNG (the reference draws block places from it),
  so a resumed run and any loader, batch size or rank draw the same masks for
  the same sample;
- the number of context patches kept is fixed per step
  (:attr:`StepPlan.context_keep`: the smallest context among ``PROBES`` seeded
  probe draws of the step) instead of the batch's smallest context, which
  depends on the batch: a sample whose context falls short is redrawn (as the
  reference redraws one under ``min_keep``), and a longer one keeps a seeded
  random subset of that size (the reference keeps the first ones in raster
  order, the top of the image);
- a block may sit anywhere on the grid (the reference's ``randint(0, H - h)``
  never reaches the last row or column).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PROBES = 64  # probe draws per step that set its context count (a batch's smallest, as reference)
RETRIES = 20  # draws of a context block before one target's constraint is dropped (reference)
MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)  # splitmix64 constants
MASK64 = (1 << 64) - 1
CPU = torch.device("cpu")  # the generators' device, whatever device a caller made default


def mixed_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (splitmix64 over each in turn)."""
    state = 0
    for part in parts:
        state = (state + MIX[0] + (part & MASK64)) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * MIX[1]) & MASK64
        z = ((z ^ (z >> 27)) * MIX[2]) & MASK64
        state = z ^ (z >> 31)
    return state & ((1 << 63) - 1)


@dataclass(frozen=True)
class MultiBlock:
    """The sampler's settings on a ``height x width`` grid of patches."""

    height: int
    width: int
    targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_keep: int = 10  # a context must keep more patches than this (reference)


@dataclass(frozen=True)
class StepPlan:
    """What every sample of one step shares: block sizes and the patch counts kept."""

    target_size: tuple[int, int]
    context_size: tuple[int, int]
    context_keep: int

    @property
    def target_keep(self) -> int:
        return self.target_size[0] * self.target_size[1]


def block_size(
    grid: MultiBlock, scale: tuple[float, float], aspect: tuple[float, float], draw: float
) -> tuple[int, int]:
    """The reference's block size: one uniform ``draw`` sets both scale and aspect ratio."""
    area = int(grid.height * grid.width * (scale[0] + draw * (scale[1] - scale[0])))
    ratio = aspect[0] + draw * (aspect[1] - aspect[0])
    h = min(round(math.sqrt(area * ratio)), grid.height - 1)
    w = min(round(math.sqrt(area / ratio)), grid.width - 1)
    return max(h, 1), max(w, 1)


def step_plan(grid: MultiBlock, seed: int, step: int) -> StepPlan:
    """Block sizes of ``step`` and the context count every sample keeps."""
    generator = torch.Generator().manual_seed(mixed_seed(seed, step))
    target = block_size(grid, grid.target_scale, grid.target_aspect, _uniform(generator))
    context = block_size(grid, grid.context_scale, (1.0, 1.0), _uniform(generator))
    # The smallest context among probe draws (sample ids -1, -2, ...: no position's), never
    # below min_keep + 1 nor above the block itself (reached once every constraint is dropped).
    probes = [_probe_count(grid, target, context, seed, step, -1 - i) for i in range(PROBES)]
    keep = min(max(min(probes), grid.min_keep + 1), context[0] * context[1])
    return StepPlan(target, context, keep)


def _probe_count(
    grid: MultiBlock,
    target: tuple[int, int],
    context: tuple[int, int],
    seed: int,
    step: int,
    probe: int,
) -> int:
    """How many patches one unconstrained draw's context keeps once its targets are removed."""
    generator = torch.Generator().manual_seed(mixed_seed(seed, step, probe))
    targets = [_place(grid, target, generator) for _ in range(grid.targets)]
    block = _place(grid, context, generator)
    for mask in targets:
        block &= ~mask
    return int(block.sum())


def sample_masks(
    grid: MultiBlock, plan: StepPlan, seed: int, step: int, sample: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample's context patch indices ``(context_keep,)`` and target patch indices
    ``(targets, target_keep)``, sorted, in raster order of the grid."""
    generator = torch.Generator().manual_seed(mixed_seed(seed, step, sample))
    blocks = [_place(grid, plan.target_size, generator) for _ in range(grid.targets)]
    targets = torch.stack([block.flatten().nonzero().squeeze(1) for block in blocks])
    context = _context(grid, plan, blocks, generator)
    return context, targets


def batch_masks(
    grid: MultiBlock, seed: int, step: int, positions: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A micro-batch's masks: context indices ``(B, context_keep)`` and one ``(B, target_keep)``
    tensor per target block (the layout lightly's ``apply_masks`` takes), for the samples at
    ``positions`` of ``step``'s global batch."""
    plan = step_plan(grid, seed, step)
    drawn = [sample_masks(grid, plan, seed, step, int(p)) for p in positions.tolist()]
    context = torch.stack([c for c, _ in drawn])
    targets = torch.stack([t for _, t in drawn], dim=1)  # (targets, B, target_keep)
    return context, list(targets.unbind(0))


def _context(
    grid: MultiBlock, plan: StepPlan, targets: list[torch.Tensor], generator: torch.Generator
) -> torch.Tensor:
    """A context block minus the targets, redrawn while it keeps too few patches."""
    tries = 0
    while True:
        for _ in range(RETRIES):
            block = _place(grid, plan.context_size, generator)
            for target in targets[: max(len(targets) - tries, 0)]:
                block &= ~target
            kept = block.flatten().nonzero().squeeze(1)
            if len(kept) >= plan.context_keep:
                chosen = torch.randperm(len(kept), generator=generator, device=CPU)[
                    : plan.context_keep
                ]
                return kept[chosen.sort().values]
        tries += 1  # the reference's relaxation: one target constraint fewer


def _place(grid: MultiBlock, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A ``size`` block at a random place, as a boolean grid."""
    h, w = size
    top = int(torch.randint(0, grid.height - h + 1, (1,), generator=generator, device=CPU))
    left = int(torch.randint(0, grid.width - w + 1, (1,), generator=generator, device=CPU))
    mask = torch.zeros(grid.height, grid.width, dtype=torch.bool, device=CPU)
    mask[top : top + h, left : left + w] = True
    return mask


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand(1, generator=generator, device=CPU))
