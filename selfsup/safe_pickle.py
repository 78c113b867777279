"""Unpickling that can only rebuild what the caller allows: no file can run code here.

A pickle names the callables that rebuild its objects (``GLOBAL module
name``); a hostile one names ``os.system``. :func:`load` looks each name up
in the caller's allowlist before anything is called (the restricted
``find_class`` of Python's pickle documentation) and refuses the rest with
:class:`CodeInPickle`, naming what it asked for.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable, Iterator
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


# torch.load reads these variables at every call: the first makes every load
# weights-only whatever its caller passed; the second (the opposite) must not
# be set with it.
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def every_torch_load_weights_only() -> Iterator[None]:
    """Every ``torch.load`` in the block is weights-only, even one passing ``weights_only=False``.

    Libraries that read their own files with full pickle (DeepSpeed's engine
    and ``zero_to_fp32``) then read them with the same weights-only unpickler
    as selfsup: one parser, nothing scanned first and loaded by another.
    """
    previous = {key: os.environ.get(key) for key in (_FORCE_WEIGHTS_ONLY, _FORCE_NO_WEIGHTS_ONLY)}
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    os.environ.pop(_FORCE_NO_WEIGHTS_ONLY, None)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
