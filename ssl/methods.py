"""The method catalogue: every built-in method registered, and building one by name.

Importing this module imports each method's own file, which registers it
(``selfsup.ssl.method.register_method``); a method defined elsewhere (a test,
a plug-in) registers itself the same way and is then found here too.
"""

from __future__ import annotations

from torch import nn

# The method modules register themselves on import.
from selfsup.ssl import classifier, distill, ijepa, mae, simclr, simmim  # noqa: F401
from selfsup.ssl.backbones import Backbone
from selfsup.ssl.method import METHODS, BuildContext, MethodConfig, MethodSpec


def method_names() -> list[str]:
    return list(METHODS.names())


def method_spec(name: str) -> MethodSpec:
    """The registry entry of ``name`` (``UnknownName`` with a suggestion otherwise)."""
    return METHODS.get(name)


def default_method_config(name: str) -> MethodConfig:
    return method_spec(name).config()


def build_method(
    backbone: Backbone, config: MethodConfig, context: BuildContext | None = None
) -> nn.Module:
    """Build ``config.name`` around ``backbone``, after the method's own checks."""
    spec = method_spec(config.name)
    context = context or BuildContext(image_size=224)
    config.check(context)
    return spec.build(backbone, config, context)
