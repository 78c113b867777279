"""Method registry: name -> self-supervised model built around a backbone."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

from selfsup.errors import ConfigError
from selfsup.ssl.backbones import Backbone
from selfsup.ssl.simclr import SimCLR

METHODS: dict[str, Callable[..., nn.Module]] = {
    "simclr": SimCLR,
}


def method_names() -> list[str]:
    return sorted(METHODS)


def build_method(name: str, backbone: Backbone, **options: Any) -> nn.Module:
    """Build a method module; ``options`` are its constructor's keyword arguments."""
    builder = METHODS.get(name)
    if builder is None:
        hint = difflib.get_close_matches(name, method_names(), n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConfigError(
            f"unknown method '{name}'{suggestion}; available: {', '.join(method_names())}"
        )
    return builder(backbone, **options)
