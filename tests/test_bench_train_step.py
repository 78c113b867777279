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
from selfsup.ssl.method import METHODS, KeyedViews

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import train_step  # noqa: E402


@pytest.mark.parametrize("workload", train_step.WORKLOADS)
def test_plain_baseline_counts_the_same_flops_as_selfsups_step(workload):
    sizes = train_step.sizes(argparse.Namespace(smoke=True, batch_size=None), workload)
    config = load_config(None, train_step.selfsup_overrides(workload, sizes))
    views, keyed = config.augment.num_views, METHODS.get(config.method.name).keyed

    def inputs(device: torch.device) -> object:
        images = [torch.zeros(sizes.batch, 3, sizes.image, sizes.image, device=device)] * views
        return KeyedViews(images, 0, 0, torch.arange(sizes.batch)) if keyed else images

    # I-JEPA's plain model runs the target encoder's forward and the predictor in the open:
    # the same count means selfsup's MFU counts them too.
    ours = count_step_flops(build_model(config), inputs)
    plain = train_step.step_flops(workload, sizes)
    assert ours is not None and plain is not None
    assert abs(ours / plain - 1) < 0.01, (ours, plain)
