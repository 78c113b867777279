"""Two real processes (torchrun, gloo): each loader gives disjoint shards covering the data."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HELPER = Path(__file__).resolve().parents[2] / "helpers" / "shard_worker.py"
SIZE = 48


@pytest.mark.slow
def test_two_gloo_processes_get_disjoint_reshuffled_shards(tmp_path):
    beton = "-"
    if importlib.util.find_spec("ffcv") is not None:
        from selfsup.pipelines.data.beton import WriteOptions, write_beton
        from selfsup.pipelines.data.datasets import ArrayDataset

        beton = str(tmp_path / "ids.beton")
        images = np.zeros((SIZE, 8, 8, 3), np.uint8)
        write_beton(
            ArrayDataset(images, np.arange(SIZE), ["x"]), Path(beton), WriteOptions(workers=1)
        )
    elif os.environ.get("SELFSUP_REQUIRE_FFCV") == "1":
        pytest.fail("ffcv is required here")
    out = tmp_path / "shards.json"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        str(HELPER), beton, str(SIZE), str(out),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = json.loads(out.read_text())
    loaders = {key.split("/")[0] for key in shards}
    assert loaders == ({"torchvision", "ffcv"} if beton != "-" else {"torchvision"})
    for name in loaders:
        for epoch in ("0", "1"):
            rank0, rank1 = shards[f"{name}/{epoch}"]
            assert len(rank0) == len(rank1) == SIZE // 2
            assert not set(rank0) & set(rank1), (name, epoch)
            assert sorted(rank0 + rank1) == list(range(SIZE))
        assert shards[f"{name}/0"][0] != shards[f"{name}/1"][0]  # reshuffled per epoch
    assert shards["torchvision/0"] == shards.get("ffcv/0", shards["torchvision/0"])
