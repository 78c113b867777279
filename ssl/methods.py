"""Method registry: name -> self-supervised model built around a backbone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from selfsup.errors import unknown_name
from selfsup.ssl.backbones import Backbone
from selfsup.ssl.mae import MAE
from selfsup.ssl.simclr import SimCLR
from selfsup.ssl.simmim import SimMIM

METHODS: dict[str, Callable[..., nn.Module]] = {
    "simclr": SimCLR,
    "mae": MAE,
    "simmim": SimMIM,
}


def method_names() -> list[str]:
    return sorted(METHODS)


def build_method(name: str, backbone: Backbone, **options: Any) -> nn.Module:
    """Build a method module; ``options`` are its constructor's keyword arguments."""
    builder = METHODS.get(name)
    if builder is None:
        raise unknown_name("method", name, method_names())
    return builder(backbone, **options)
