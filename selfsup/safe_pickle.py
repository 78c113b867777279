"""Unpickling that can only rebuild what the caller allows: no file can run code here.

A pickle names the callables that rebuild its objects (``GLOBAL module
name``); a hostile one names ``os.system``. :func:`load` looks each name up
in the caller's allowlist before anything is called (the restricted
``find_class`` of Python's pickle documentation) and refuses the rest with
:class:`CodeInPickle`, naming what it asked for.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import IO, Any

Allowed = Callable[[str, str], bool]  # (module, name) -> may it be rebuilt?


class CodeInPickle(pickle.UnpicklingError):
    """A pickle asked for a callable outside the allowlist."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name
        super().__init__(f"it asks to call {module}.{name}, which a data file never needs")


class _Restricted(pickle.Unpickler):
    def __init__(self, file: IO[bytes], allowed: Allowed, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if not self.allowed(module, name):
            raise CodeInPickle(module, name)
        return super().find_class(module, name)


def load(file: IO[bytes], allowed: Allowed, encoding: str = "ASCII") -> Any:
    """``pickle.load`` that rebuilds only the globals ``allowed`` accepts."""
    return _Restricted(file, allowed, encoding).load()


def allow(names: dict[str, set[str]]) -> Allowed:
    """An allowlist from ``{module: {name, ...}}``."""
    return lambda module, name: name in names.get(module, set())


class _Stub:
    """Stands in for every allowed global during :func:`scan`: accepts anything, does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        return _Stub()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:  # an OrderedDict's items
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class _Scanner(_Restricted):
    """Walks a pickle calling only stubs: every global is checked, none is used."""

    def find_class(self, module: str, name: str) -> Any:
        if not self.allowed(module, name):
            raise CodeInPickle(module, name)
        return _Stub

    def persistent_load(self, pid: Any) -> Any:  # torch.save's tensor storages
        return None


def scan(file: IO[bytes], allowed: Allowed) -> None:
    """Check every global a pickle names against ``allowed`` without rebuilding anything.

    For files another library will load with plain ``pickle`` (DeepSpeed's
    checkpoints): scanned first, they can then be handed over safely.
    """
    _Scanner(file, allowed, "ASCII").load()
