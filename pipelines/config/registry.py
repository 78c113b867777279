"""What components tell the config: their sections, the values a key may take, their checks.

The config package imports no component (torchtitan's rule: a config that
imports no component). Instead each component registers here, beside its
own code: the method registry the ``method:`` section's schema (one
dataclass per method), sparsity its section, loaders/engines/optimizers the
names their keys accept, and the checks that need a component's knowledge
(a method's options, a classifier head). ``selfsup.pipelines`` imports the
components once, so a loaded config is always checked against all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from selfsup.registry import Registry

if TYPE_CHECKING:  # the schema, of this package; no component
    from selfsup.pipelines.config.schema import RunConfig

Choices = Callable[[], tuple[Any, ...]]
Check = Callable[["RunConfig"], None]

# "method": name -> that method's default section; "sparsity": () -> the default section.
SECTIONS: Registry[Callable[..., Any]] = Registry("config section")
# "data.loader" -> the names it accepts now (read at validation: late registrations count).
CHOICES: Registry[Choices] = Registry("config choice")
# Checks of a whole config, run after the schema's own, in registration order.
CHECKS: Registry[Check] = Registry("config check")


def register_choices(key: str, values: Choices) -> None:
    CHOICES.register(key, values)


def register_check(name: str, check: Check) -> None:
    CHECKS.register(name, check)


def register_section(name: str, default: Callable[..., Any]) -> None:
    SECTIONS.register(name, default)


def section_default(name: str, *args: Any) -> Any:
    """A registered section's default value (``section_default("method", "mae")``)."""
    return SECTIONS.get(name)(*args)
