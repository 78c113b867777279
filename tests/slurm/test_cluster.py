"""Cluster profile fields: one declaration for YAML profiles and command-line flags."""

import dataclasses

import pytest

from selfsup.errors import ConfigError
from selfsup.slurm.cluster import ClusterProfile, cli_options, overrides_from
from selfsup.slurm.profiles import load_profile


def test_every_flag_is_a_profile_field_and_back():
    options = {o.dest: o for o in cli_options()}
    flagged = [f.name for f in dataclasses.fields(ClusterProfile) if "flag" in f.metadata]
    assert list(options) == flagged and len(options) == 13
    assert options["gpus_per_node"].flag == "--gpus-per-node" and options["nodes"].type is int
    assert options["time_min"].flag == "--time" and options["mem_gb"].type is float
    assert {"setup", "env", "sbatch"}.isdisjoint(options)  # YAML only


def test_flags_override_the_profile(capsys):
    from selfsup.cli import build_parser

    args = build_parser().parse_args(
        ["submit", "configs/demo.yaml", "--cluster", "dev", "--nodes", "2", "--time", "30"]
    )
    profile = load_profile(args.cluster, overrides_from(args))
    assert profile.nodes == 2 and profile.time_min == 30
    assert profile.partition == load_profile("dev").partition  # untouched fields from the YAML
    with pytest.raises(ConfigError, match="'nodes' must be at least 1"):
        load_profile("dev", {"nodes": 0})
