"""Label-free measures of an embedding matrix: how many dimensions it uses, whether it collapsed.

- :func:`rankme`: the effective rank of the embeddings (Garrido et al. 2023, "RankMe"),
  ``exp`` of the entropy of the normalised singular values; between 1 (every
  embedding on one line) and ``min(n, d)`` (all directions used equally).
- :func:`normalized_std`: the mean over dimensions of the standard deviation of
  l2-normalised embeddings; about ``1/sqrt(d)`` when they spread over the sphere,
  0 when every image maps to one point (the collapse the SimSiam paper plots).
- :func:`alignment` and :func:`uniformity` (Wang & Isola 2020): mean squared
  distance between the normalised embeddings of positive pairs (lower: closer),
  and the log of the mean Gaussian potential between all pairs (lower: more uniform).

Each takes ``(n, d)`` float embeddings and returns a Python float, computed in
float64 so that the numbers do not depend on the training precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RANKME_EPS = 1e-7  # RankMe's epsilon: keeps p log p finite for zero singular values


def rankme(embeddings: torch.Tensor) -> float:
    """Effective rank ``exp(-sum p_k log p_k)``, ``p_k = s_k / sum(s) + eps`` (RankMe)."""
    singular = torch.linalg.svdvals(embeddings.double())
    total = singular.sum()
    if total <= 0:  # all-zero embeddings: no direction is used
        return 0.0
    p = singular / total + RANKME_EPS
    return float(torch.exp(-(p * p.log()).sum()))


def normalized_std(embeddings: torch.Tensor) -> float:
    """Mean per-dimension std of the l2-normalised embeddings (``1/sqrt(d)``: healthy)."""
    unit = F.normalize(embeddings.double(), dim=1)
    return float(unit.std(dim=0).mean())


def alignment(first: torch.Tensor, second: torch.Tensor, alpha: float = 2.0) -> float:
    """``E ||f(x) - f(x+)||^alpha`` over positive pairs (rows of ``first`` and ``second``)."""
    a, b = F.normalize(first.double(), dim=1), F.normalize(second.double(), dim=1)
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(embeddings: torch.Tensor, t: float = 2.0) -> float:
    """``log E exp(-t ||f(x) - f(y)||^2)`` over all pairs of distinct rows."""
    unit = F.normalize(embeddings.double(), dim=1)
    return float(torch.pdist(unit).pow(2).mul(-t).exp().mean().log())
