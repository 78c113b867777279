"""bench/train_step.py: it runs, and its plain baseline does the same work as selfsup's step."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

from selfsup.pipelines.config import load_config
from selfsup.pipelines.train.build import build_model
from selfsup.pipelines.train.throughput import count_step_flops

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import train_step  # noqa: E402


@pytest.mark.parametrize("workload", train_step.WORKLOADS)
def test_plain_baseline_counts_the_same_flops_as_selfsups_step(workload):
    sizes = train_step.sizes(argparse.Namespace(smoke=True, batch_size=None), workload)
    config = load_config(None, train_step.selfsup_overrides(workload, sizes))
    views = config.augment.num_views
    ours = count_step_flops(
        build_model(config),
        lambda device: (
            [torch.zeros(sizes.batch, 3, sizes.image, sizes.image, device=device)] * views
        ),
    )
    plain = train_step.step_flops(workload, sizes)
    assert ours is not None and plain is not None
    assert abs(ours / plain - 1) < 0.01, (ours, plain)
