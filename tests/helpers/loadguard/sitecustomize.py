"""The suite's guard against unsafe loads, in every Python process the tests start.

The tests put this folder on ``PYTHONPATH`` (``tests/conftest.py``), so
Python imports this module at the start of the test process and of every
process it launches (``selfsup train`` runs, torchrun workers, SLURM jobs).
From then on a full unpickling of file contents is recorded in
``$SELFSUP_UNSAFE_LOAD_LOG`` and refused:

- ``torch.load`` that unpickles with ``weights_only=False`` (torch builds its
  full unpickler on ``pickle.Unpickler`` at each call; its weights-only
  unpickler never touches it), caught when it rebuilds a global;
- ``pickle.load`` on a file.

The session fails when the log holds a line (``pytest_sessionfinish``).
Exempt: selfsup's allowlisting reader (``selfsup.safe_pickle``), pickles
sent between processes (``pickle.loads`` on bytes, pipes), and submitit's
own job files (the function a job runs and its result: submitit's transport
between the submitting process and the job, not a file a command is given).
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from typing import Any

LOG_VARIABLE = "SELFSUP_UNSAFE_LOAD_LOG"
_ORIGINAL_UNPICKLER = pickle.Unpickler
_ORIGINAL_LOAD = pickle.load
_EXEMPT_PACKAGES = (os.sep + "submitit" + os.sep,)


def _called_from(fragment: str) -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if fragment in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _exempt() -> bool:
    return any(_called_from(package) for package in _EXEMPT_PACKAGES)


def _refuse(what: str) -> None:
    log = os.environ.get(LOG_VARIABLE)
    if not log or os.environ.get("SELFSUP_ALLOW_UNSAFE_LOAD") == "1" or _exempt():
        return
    stack = "".join(traceback.format_stack(limit=14)[:-2])
    with open(log, "a") as fh:
        fh.write(f"pid {os.getpid()}: {what}\n{stack}\n")
    raise pickle.UnpicklingError(f"the test suite forbids {what}")


class GuardedUnpickler(_ORIGINAL_UNPICKLER):  # type: ignore[misc,valid-type]
    def find_class(self, module: str, name: str) -> Any:
        # selfsup's reader checks its allowlist before it calls this.
        restricted = any(c.__module__ == "selfsup.safe_pickle" for c in type(self).__mro__)
        if not restricted and _called_from(os.path.join("torch", "serialization.py")):
            _refuse(f"torch.load(weights_only=False) rebuilding {module}.{name}")
        return super().find_class(module, name)


def guarded_load(file: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(getattr(file, "name", None), str):  # a file on disk, not a pipe
        _refuse(f"pickle.load({file.name!r})")
    return _ORIGINAL_LOAD(file, *args, **kwargs)


def install() -> None:
    pickle.Unpickler = GuardedUnpickler  # type: ignore[misc]
    pickle.load = guarded_load


if os.environ.get(LOG_VARIABLE):
    install()
