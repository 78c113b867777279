"""Finding checkpoints in a run's ``checkpoints/`` folder: names, the commit marker, ``latest``.

A checkpoint folder is complete once its ``meta.json`` exists (written
last, then the folder is renamed into place); ``latest`` names the newest.
See :mod:`selfsup.pipelines.checkpoint.manager` for how they are written.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from selfsup.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "selfsup.checkpoint/1"
META_FILE = "meta.json"
LATEST_FILE = "latest"
REQUIRED_META = ("step", "epoch", "world_size")
STEP_DIR = re.compile(r"^step_(\d{9})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def is_complete(path: Path) -> bool:
    """A renamed checkpoint folder is complete by construction; ``meta.json`` is written last."""
    return (path / META_FILE).is_file()


def read_meta(path: Path) -> dict[str, Any]:
    """The ``meta.json`` of checkpoint folder ``path``; :class:`CheckpointError` if unreadable."""
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} is not a selfsup checkpoint (no {META_FILE}); pass a run directory "
            "or one of its checkpoints/step_* folders"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is corrupt ({exc}); delete {path}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} is not a mapping: the checkpoint is damaged")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r:.40}, expected {FORMAT!r}")
    problems = [
        f"{key} {meta.get(key)!r:.30}"
        for key, (low, high) in META_RANGES.items()
        if not _int_within(meta.get(key), low, high)
    ]
    if problems:
        raise CheckpointError(
            f"{meta_path} lacks {', '.join(REQUIRED_META)} as integers in range (it has "
            f"{'; '.join(problems)}): the checkpoint is damaged; delete {path} to resume from "
            "the one before"
        )
    from selfsup.pipelines.runtime.engines import ENGINES  # here: engines read checkpoints

    if meta.get("engine", "single") not in ENGINES.names():
        raise CheckpointError(
            f"{meta_path} names engine {meta.get('engine')!r:.30}, none of "
            f"{', '.join(ENGINES.names())}: the checkpoint is damaged"
        )
    return meta


# What meta.json's counters may be: a checkpoint of 10**30 steps is damage, not a run.
META_RANGES = {"step": (0, 10**12), "epoch": (0, 10**9), "world_size": (1, 1 << 20)}


def _int_within(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoint folders in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if STEP_DIR.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: p.name)


def find_latest(directory: Path) -> Path | None:
    """The newest complete checkpoint, trusting ``latest`` only if it names one.

    ``latest`` is read only as a plain file of a few bytes naming a step folder
    of this directory (never a link, never ../other_run); anything else is
    ignored with a warning that does not echo its contents, and the folder
    is scanned.
    """
    pointer = directory / LATEST_FILE
    name = _pointer_name(pointer)
    if name is not None and is_complete(directory / name):
        newest = list_checkpoints(directory)
        # A crash between the rename and the pointer update leaves a newer
        # complete checkpoint than the pointer names: take the newer one.
        return newest[-1] if newest and newest[-1].name > name else directory / name
    if name is not None:
        log.warning("%s names %s, which is not a complete checkpoint; scanning", pointer, name)
    found = list_checkpoints(directory)
    return found[-1] if found else None


def _pointer_name(pointer: Path) -> str | None:
    """The step folder ``latest`` names; None (with a warning if it exists) when it names none."""
    if not pointer.exists() and not pointer.is_symlink():
        return None
    if pointer.is_symlink() or not pointer.is_file():
        log.warning("%s is not a plain file; ignored (scanning for the newest checkpoint)", pointer)
        return None
    with pointer.open("rb") as fh:
        name = fh.read(64).decode("ascii", errors="replace").strip()
    if not STEP_DIR.match(name):
        log.warning("%s does not name a step folder; ignored (scanning)", pointer)
        return None
    return name


def step_of(path: Path) -> int:
    match = STEP_DIR.match(path.name)
    assert match, path
    return int(match.group(1))
