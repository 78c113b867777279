"""Extensions from outside the package: modules imported before a command runs.

A plugin is any importable module that registers entries in selfsup's
registries at import (a method, a loader, a training hook, a fine-tune
recipe, a dataset); nothing inside selfsup changes. Two ways to name them:

- ``SELFSUP_PLUGINS=pkg.module,other.module`` in the environment (inherited
  by torchrun's workers and by SLURM jobs, which load them again);
- an entry point in the ``selfsup.plugins`` group of an installed
  distribution (``[project.entry-points."selfsup.plugins"] name = "pkg.module"``).

Pure Python (no torch, no other room), so every entry point of a process may call it.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from selfsup.errors import ConfigError, one_line

ENV = "SELFSUP_PLUGINS"
ENTRY_POINT_GROUP = "selfsup.plugins"


def plugin_modules() -> list[str]:
    """Module names from the environment, then from installed entry points."""
    named = [name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip()]
    installed = [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return list(dict.fromkeys([*named, *installed]))


def load_plugins() -> list[str]:
    """Import every plugin module once (importing twice registers nothing twice); their names."""
    modules = plugin_modules()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # anything the module raises is reported the same way
            raise ConfigError(
                f"plugin module '{name}' (from {ENV} or the {ENTRY_POINT_GROUP} entry points) "
                f"cannot be imported: {type(exc).__name__}: {one_line(exc)}; install it, put it "
                f"on PYTHONPATH, or remove it from {ENV}"
            ) from None
    return modules
