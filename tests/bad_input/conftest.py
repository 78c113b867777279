"""The finished run every bad-input row starts from (a copy of it per row)."""

from __future__ import annotations

import json

import pytest
from helpers.bad_input import DEMO, Ctx, copy_run

from selfsup.pipelines.config import load_config
from selfsup.pipelines.train.trainer import train


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("finished")
    overrides = [
        f"data.path={data_root / 'cifar-10-batches-py'}",
        "data.batch_size=16", "data.num_workers=0", "model.channels_last=false",
        "method.proj_hidden_dim=64", "method.proj_output_dim=32", "train.max_steps=6",
        "train.log_every=2", "checkpoint.every_steps=3", "optim.warmup_epochs=0.5",
        "checkpoint.keep_last=1", f"probe.data_path={data_root}", "probe.train_samples=20",
        "probe.test_samples=20", "probe.epochs=2", "probe.num_workers=0",
        "monitor.enabled=false",
    ]  # fmt: skip
    train(load_config(DEMO, [*overrides, f"run_dir={root / 'run'}"]))
    (root / "overrides.json").write_text(json.dumps(overrides))
    return root


@pytest.fixture
def ctx(finished_run, tmp_path, data_root) -> Ctx:
    run = tmp_path / "run"
    copy_run(finished_run / "run", run)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    base = json.loads((finished_run / "overrides.json").read_text())
    return Ctx(run=run, scratch=scratch, base=base, data_root=data_root)
