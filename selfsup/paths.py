"""Where the source checkout is: the one definition every room uses."""

from __future__ import annotations

from pathlib import Path


def checkout_root() -> Path:
    """The folder holding ``selfsup/`` (and, in a source checkout, ``pyproject.toml``).

    Defaults that sit beside the checkout (``../shared/data``, ``configs/``)
    are looked up from here; in an installed wheel it is site-packages,
    where those simply do not exist.
    """
    return Path(__file__).resolve().parent.parent
