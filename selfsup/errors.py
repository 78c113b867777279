"""User-facing errors.

Every problem a user can fix (a config key, a dataset folder, a checkpoint
path) is raised as a :class:`SelfsupError` whose message names the problem and
the fix in one line. The CLI prints that line without a traceback; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

from selfsup.registry import did_you_mean

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DependencyError",
    "SelfsupError",
    "TrainingError",
    "did_you_mean",
    "existing_path",
    "one_line",
]


class SelfsupError(Exception):
    """A problem with the user's input, reported as one line."""


class ConfigError(SelfsupError):
    """Unknown key, wrong type or invalid value in a config."""


class DataError(SelfsupError):
    """Missing dataset, wrong folder format or unreadable image."""


class CheckpointError(SelfsupError):
    """Missing, incomplete, corrupt or mismatched checkpoint."""


class DependencyError(SelfsupError):
    """An optional dependency (ffcv, deepspeed, ...) is not installed."""


class TrainingError(SelfsupError):
    """Training cannot go on (for example the loss became NaN)."""


class LostPeerError(TrainingError):
    """Another rank of a multi-process job died or stopped answering."""


def one_line(exc: BaseException) -> str:
    """An exception's message in one line: its first non-empty line, or its type's name.

    Libraries put the cause first (YAML's "while parsing ...", OS errors'
    "[Errno 28] No space left on device"); tracebacks and context come after.
    A DataLoader worker re-raises an error as "Caught X in DataLoader worker
    ... Original Traceback ...": then the original message is the last line.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if any("Original Traceback" in line for line in lines):  # a worker's: ours is last
        return lines[-1].split(": ", 1)[1] if ": " in lines[-1] else lines[-1]
    return lines[0]


def existing_path(value: str, key: str, expected: str) -> Path:
    """``value`` of config key ``key`` as an existing path; one line naming ``expected`` if not."""
    path = Path(value)
    if not path.exists():
        raise ConfigError(f"config key '{key}' names {path}, which does not exist; pass {expected}")
    return path
