"""Name -> entry registries: the one source of every choice a config can make.

Each kind of choice (backbones, methods, optimizers, engines, loaders,
datasets) has one :class:`Registry`, filled beside the code it names. Config
validation, ``selfsup config keys`` and the "did you mean" errors read the
registries, so a new entry needs no edit anywhere else.

Pure Python (no torch), so every room may use it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def closest_name(name: str, choices: list[str] | tuple[str, ...]) -> str | None:
    matches = difflib.get_close_matches(name, list(choices), n=1)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    match = closest_name(name, choices)
    return f" (did you mean '{match}'?)" if match else ""


class UnknownName(ValueError):
    """A name missing from a registry; the message suggests the closest and lists them all."""

    def __init__(self, kind: str, name: str, choices: list[str] | tuple[str, ...]) -> None:
        self.kind, self.name, self.choices = kind, name, tuple(choices)
        super().__init__(
            f"unknown {kind} '{name}'{did_you_mean(name, choices)}; available: {', '.join(choices)}"
        )


class Registry(Generic[T]):
    """Entries by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered already")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@REGISTRY.decorator("name")`` registers the decorated object itself."""
        return lambda entry: self.register(name, entry)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self.kind, name, self.names()) from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def values(self) -> tuple[T, ...]:
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
