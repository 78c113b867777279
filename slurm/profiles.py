"""Cluster profiles: the SLURM resources of a job, from YAML and command-line flags.

A profile (``configs/cluster/NAME.yaml``) names a partition, account, QOS,
GPUs per node and the rest; ``selfsup submit --cluster NAME`` loads it and
flags given on the command line override single fields. The same typed,
checked loading as run configs (OmegaConf against a dataclass).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from selfsup.errors import ConfigError, did_you_mean

PROFILE_DIR = Path("configs") / "cluster"


@dataclass
class ClusterProfile:
    """Resources and behaviour of a SLURM job."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # None: one task per GPU (or 1 without GPUs)
    cpus_per_task: int = 8
    mem_gb: float | None = None  # per node
    time_min: int = 24 * 60
    # Seconds between SLURM's USR2 warning and the kill: time to reach a step
    # boundary and write one checkpoint.
    signal_delay_s: int = 120
    max_requeues: int = 3  # preemptions/timeouts a job may be requeued after
    setup: list[str] = field(
        default_factory=list
    )  # shell lines run before the job (module load ...)
    env: dict[str, str] = field(default_factory=dict)  # environment variables for the job
    sbatch: dict[str, Any] = field(default_factory=dict)  # further sbatch options, verbatim

    @property
    def tasks(self) -> int:
        """Tasks per node: one per GPU unless set."""
        return self.tasks_per_node or max(1, self.gpus_per_node)

    def validate(self) -> None:
        for name in ("nodes", "cpus_per_task", "time_min"):
            if getattr(self, name) < 1:
                raise ConfigError(f"cluster setting '{name}' must be at least 1")
        if self.gpus_per_node < 0 or self.max_requeues < 0:
            raise ConfigError("cluster settings 'gpus_per_node' and 'max_requeues' must be >= 0")
        if self.signal_delay_s < 10:
            raise ConfigError(
                "cluster setting 'signal_delay_s' must leave at least 10 s to checkpoint"
            )


def profile_names(search: list[Path]) -> list[str]:
    return sorted({p.stem for d in search if d.is_dir() for p in d.glob("*.yaml")})


def profile_dirs() -> list[Path]:
    """Where ``--cluster NAME`` looks: ./configs/cluster, then the checkout's."""
    checkout = Path(__file__).resolve().parent.parent
    return [Path.cwd() / PROFILE_DIR, checkout / PROFILE_DIR]


def find_profile(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"cluster profile {path} does not exist")
        return path
    for directory in profile_dirs():
        candidate = directory / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    names = profile_names(profile_dirs())
    raise ConfigError(
        f"cluster profile '{name_or_path}' not found in configs/cluster"
        f"{did_you_mean(name_or_path, names)}; available: {', '.join(names) or 'none'}"
    )


def load_profile(
    name_or_path: str | None, overrides: dict[str, Any] | None = None
) -> ClusterProfile:
    """A profile (defaults without a name) with ``overrides`` applied (None values skipped)."""
    merged = OmegaConf.structured(ClusterProfile)
    try:
        if name_or_path:
            path = find_profile(name_or_path)
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        updates = {k: v for k, v in (overrides or {}).items() if v is not None}
        merged = OmegaConf.merge(merged, OmegaConf.create(updates))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", "")
        valid = [f.name for f in dataclasses.fields(ClusterProfile)]
        raise ConfigError(
            f"cluster profile setting '{key}': {str(exc).splitlines()[0]}"
            f"{did_you_mean(str(key), valid)}"
        ) from exc
    profile = OmegaConf.to_object(merged)
    assert isinstance(profile, ClusterProfile)
    profile.validate()
    return profile
