"""The error ``ssl`` raises for an argument it cannot use (pure: every room may catch it).

``ssl`` knows nothing of configs: its errors name its own arguments
(``image_size=30 is not divisible by patch_size=4``). The pipelines layer,
which knows where each argument comes from, renames them to config keys
(``data.image_size``, ``model.patch_size``) before a user sees them.
"""

from __future__ import annotations


class ArgumentError(ValueError):
    """An invalid argument; ``arguments`` lists the argument names the message mentions."""

    def __init__(self, message: str, *arguments: str) -> None:
        super().__init__(message)
        self.arguments = arguments
