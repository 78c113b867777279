import os

from selfsup.pipelines.config import load_config
from selfsup.pipelines.runtime.cpus import cpus_per_process, loader_workers


def test_auto_is_this_processs_share_of_its_cpus(monkeypatch):
    mine = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers("auto") == cpus_per_process() == mine
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * mine))  # more processes than CPUs
    assert loader_workers("auto") == 1
    assert loader_workers(3) == 3


def test_auto_is_the_default_and_numbers_still_work():
    assert load_config(None).data.num_workers == "auto"
    assert load_config(None, ["data.num_workers=4"]).data.num_workers == 4
