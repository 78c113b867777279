"""Atomic, durable file writes: a reader sees the old file or the new one, never half of one.

Each write goes to a hidden temporary file beside the target, is flushed and
fsynced, then renamed over the target (atomic on POSIX), and the folder is
fsynced so the rename itself survives a power cut. On any failure the
temporary file is removed. Pure Python, so every room may use it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def fsync_tree(path: Path) -> None:
    """Every file below ``path``, then ``path`` itself."""
    for file in path.rglob("*"):
        if file.is_file():
            fsync_file(file)
    fsync_dir(path)


def temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write; renamed over ``path`` when the block succeeds.

    For writers that want a file name (FFCV, ``torch.save``); the file must be
    closed when the block ends.
    """
    tmp = temporary_sibling(path)
    try:
        yield tmp
        fsync_file(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, content: str | bytes | Callable[[IO[bytes]], None]) -> None:
    """Replace ``path`` with ``content``: text, bytes, or a function writing to a binary file."""
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        if callable(content):
            content(fh)
        else:
            fh.write(content.encode() if isinstance(content, str) else content)
