"""Reproducible seeds derived from the run seed.

Every random draw in training is a function of the run seed and of where it
happens (rank, epoch, step, sample), never of how many draws came before, so
an interrupted and resumed run replays the same numbers.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (numpy's SeedSequence hash)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) for model initialisation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
