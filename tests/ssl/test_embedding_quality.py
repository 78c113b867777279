"""RankMe, the normalised std, alignment and uniformity against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.ssl.embedding_quality import (
    RANKME_EPS,
    alignment,
    normalized_std,
    rankme,
    uniformity,
)


def test_rankme_of_known_matrices():
    # Orthogonal columns of equal norm: every singular value equal, the rank is d.
    d = 16
    full = torch.linalg.qr(torch.randn(64, d, generator=torch.Generator().manual_seed(0)))[0]
    expected = math.exp(-d * (1 / d + RANKME_EPS) * math.log(1 / d + RANKME_EPS))
    assert rankme(full * 3.0) == pytest.approx(expected, rel=1e-9)
    assert rankme(full) == pytest.approx(d, rel=1e-4)
    # Rank 1 (every row a multiple of one vector): one direction.
    rank_one = torch.arange(1.0, 65.0)[:, None] * torch.randn(1, d)
    assert rankme(rank_one) == pytest.approx(1.0, abs=1e-4)
    # Singular values 3 and 1: p = (0.75, 0.25), exp(H) by hand.
    two = torch.zeros(8, 4)
    two[0, 0], two[1, 1] = 3.0, 1.0
    p = torch.tensor([0.75, 0.25], dtype=torch.float64) + RANKME_EPS
    eps_terms = 2 * RANKME_EPS * math.log(RANKME_EPS)  # the two zero singular values
    assert rankme(two) == pytest.approx(math.exp(-float((p * p.log()).sum()) - eps_terms))
    assert rankme(torch.zeros(8, 4)) == 0.0  # nothing used at all


def test_normalized_std_is_one_over_sqrt_d_when_spread_and_zero_when_collapsed():
    d = 64
    spread = torch.randn(20000, d, generator=torch.Generator().manual_seed(1))
    assert normalized_std(spread) * math.sqrt(d) == pytest.approx(1.0, abs=0.02)
    constant = torch.ones(100, d) * 5.0
    assert normalized_std(constant) == 0.0
    # Two opposite points on one axis, half the rows each: std of (+1, -1) on that axis.
    halves = torch.zeros(4, 2)
    halves[:2, 0], halves[2:, 0] = 2.0, -7.0
    assert normalized_std(halves) == pytest.approx(float(torch.tensor([1.0, 1, -1, -1]).std()) / 2)


def test_alignment_and_uniformity_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 3.0], [0.0, 1.0]])
    # Normalised: (1,0) vs (0,1): squared distance 2; (0,1) vs (0,1): 0.
    assert alignment(a, b) == pytest.approx(1.0)
    assert alignment(a, a) == 0.0
    # Two orthogonal unit vectors: one pair at squared distance 2.
    assert uniformity(a, t=2.0) == pytest.approx(-4.0)
    # A collapsed set is as far from uniform as it gets: log(1) = 0.
    assert uniformity(torch.ones(5, 3)) == pytest.approx(0.0)
