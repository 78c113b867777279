"""User-facing errors.

Every problem a user can fix (a config key, a dataset folder, a checkpoint
path) is raised as a :class:`SelfsupError` whose message names the problem and
the fix in one line. The CLI prints that line without a traceback; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


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


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    import difflib

    matches = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def unknown_name(kind: str, name: str, choices: list[str] | tuple[str, ...]) -> ConfigError:
    """The error for a name missing from a registry: suggestion plus the full list."""
    return ConfigError(
        f"unknown {kind} '{name}'{did_you_mean(name, choices)}; available: {', '.join(choices)}"
    )
