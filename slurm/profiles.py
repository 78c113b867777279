"""Cluster profiles: the SLURM resources of a job, from YAML and command-line flags.

A profile (``configs/cluster/NAME.yaml``) names a partition, account, QOS,
GPUs per node and the rest; ``selfsup submit --cluster NAME`` loads it and
flags given on the command line override single fields. The same typed,
checked loading as run configs (OmegaConf against a dataclass).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from selfsup.errors import ConfigError, did_you_mean, one_line
from selfsup.paths import checkout_root
from selfsup.slurm.cluster import ClusterProfile

__all__ = ["ClusterProfile", "find_profile", "load_profile", "profile_names"]

PROFILE_DIR = Path("configs") / "cluster"


def profile_names(search: list[Path]) -> list[str]:
    return sorted({p.stem for d in search if d.is_dir() for p in d.glob("*.yaml")})


def profile_dirs() -> list[Path]:
    """Where ``--cluster NAME`` looks: ./configs/cluster, then the checkout's."""
    checkout = checkout_root()
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


def _read_profile(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml's errors, reported as one line
        raise ConfigError(f"cluster profile {path} is not valid YAML: {one_line(exc)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(
            f"cluster profile {path} must hold a mapping of settings (partition: ..., nodes: ...), "
            "not a list or a single value"
        )
    return loaded


def load_profile(
    name_or_path: str | None, overrides: dict[str, Any] | None = None
) -> ClusterProfile:
    """A profile (defaults without a name) with ``overrides`` applied (None values skipped)."""
    merged = OmegaConf.structured(ClusterProfile)
    try:
        if name_or_path:
            merged = OmegaConf.merge(merged, _read_profile(find_profile(name_or_path)))
        updates = {k: v for k, v in (overrides or {}).items() if v is not None}
        merged = OmegaConf.merge(merged, OmegaConf.create(updates))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", "")
        valid = [f.name for f in dataclasses.fields(ClusterProfile)]
        raise ConfigError(
            f"cluster profile setting '{key}': {one_line(exc)}{did_you_mean(str(key), valid)}"
        ) from exc
    profile = OmegaConf.to_object(merged)
    assert isinstance(profile, ClusterProfile)
    profile.validate()
    return profile
