"""I-JEPA's multi-block masks against the reference collator's rules, over many draws."""

from __future__ import annotations

import math

import torch

from selfsup.ssl.ijepa_masks import MultiBlock, batch_masks, block_size, sample_masks, step_plan

GRID = MultiBlock(height=8, width=8)  # 32 px images, patch 4 (the CIFAR recipe)


def test_block_sizes_stay_inside_their_scale_and_aspect_ranges():
    n = GRID.height * GRID.width
    for i in range(200):
        draw = i / 199
        h, w = block_size(GRID, GRID.target_scale, GRID.target_aspect, draw)
        area = int(n * (0.15 + draw * 0.05))
        # The reference's rounding: h*w within a rounding of the drawn area, aspect near drawn.
        assert abs(h * w - area) <= h + w, (draw, h, w, area)
        assert h < GRID.height and w < GRID.width
        ch, cw = block_size(GRID, GRID.context_scale, (1.0, 1.0), draw)
        assert ch == cw or ch == GRID.height - 1 or cw == GRID.width - 1  # square, clipped
        assert ch * cw >= math.floor(0.85 * n) - (ch + cw)


def test_many_draws_keep_every_rule():
    for step in range(50):
        plan = step_plan(GRID, seed=0, step=step)
        for sample in range(8):
            context, targets = sample_masks(GRID, plan, seed=0, step=step, sample=sample)
            assert targets.shape == (GRID.targets, plan.target_keep)
            assert context.shape == (plan.context_keep,)
            assert plan.context_keep > GRID.min_keep
            assert bool((context.diff() > 0).all())  # sorted, distinct
            assert int(context.max()) < GRID.height * GRID.width
            for block in targets:  # each target a full h x w rectangle
                rows, cols = block // GRID.width, block % GRID.width
                h, w = plan.target_size
                assert int(rows.max() - rows.min()) + 1 == h
                assert int(cols.max() - cols.min()) + 1 == w


def test_the_context_avoids_the_targets_unless_relaxed():
    disjoint = 0
    draws = 0
    for step in range(30):
        plan = step_plan(GRID, seed=1, step=step)
        for sample in range(4):
            context, targets = sample_masks(GRID, plan, seed=1, step=step, sample=sample)
            draws += 1
            disjoint += not bool(torch.isin(context, targets.flatten()).any())
    assert disjoint >= 0.9 * draws  # the reference's relaxation is the rare exception


def test_the_same_seed_step_and_sample_give_the_same_masks_whatever_else_is_drawn():
    plan = step_plan(GRID, seed=3, step=17)
    first = sample_masks(GRID, plan, seed=3, step=17, sample=5)
    torch.rand(100)  # the global RNG moves: nothing changes
    for _ in range(3):
        sample_masks(GRID, plan, seed=3, step=17, sample=4)  # other samples drawn in between
    again = sample_masks(GRID, step_plan(GRID, seed=3, step=17), seed=3, step=17, sample=5)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = sample_masks(GRID, plan, seed=3, step=17, sample=6)
    assert not torch.equal(first[1], other[1])


def test_a_sample_gets_its_masks_whatever_the_batch_or_rank_it_arrives_in():
    # Positions 0..7 of a step's global batch: one batch of 8, or two ranks of 4
    # (rank r holds positions r, r + 2, ...), or micro-batches of 2.
    whole_context, whole_targets = batch_masks(GRID, 5, 11, torch.arange(8))
    for positions in (torch.tensor([0, 2, 4, 6]), torch.tensor([1, 3, 5, 7]), torch.tensor([6, 7])):
        context, targets = batch_masks(GRID, 5, 11, positions)
        assert torch.equal(context, whole_context[positions])
        for mine, whole in zip(targets, whole_targets, strict=True):
            assert torch.equal(mine, whole[positions])
    assert len(whole_targets) == GRID.targets
    other_step, _ = batch_masks(GRID, 5, 12, torch.arange(8))
    other_seed, _ = batch_masks(GRID, 6, 11, torch.arange(8))
    assert not torch.equal(other_step, whole_context) and not torch.equal(other_seed, whole_context)


def test_the_context_count_is_a_small_quantile_not_a_worst_case():
    # 14 x 14 (224 px, patch 16): the reference truncates to its batch's smallest context
    # (about 45-65 patches measured); the no-overlap bound would keep as few as 25.
    grid = MultiBlock(14, 14)
    keeps = [step_plan(grid, seed=0, step=s).context_keep for s in range(20)]
    assert 35 <= sum(keeps) / len(keeps) <= 75, keeps
    assert all(k > grid.min_keep for k in keeps)
