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
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    missing = [key for key in REQUIRED_META if not isinstance(meta.get(key), int)]
    if missing:
        raise CheckpointError(
            f"{meta_path} lacks {', '.join(missing)} (or they are not integers): the checkpoint "
            f"is damaged; delete {path} to resume from the one before"
        )
    return meta


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoint folders in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if STEP_DIR.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: p.name)


def find_latest(directory: Path) -> Path | None:
    """The newest complete checkpoint, trusting ``latest`` only if it points at one."""
    pointer = directory / LATEST_FILE
    if pointer.is_file():
        name = pointer.read_text(errors="replace").strip()
        target = directory / name
        # Only a step folder of this directory: never ../other_run/... or an absolute path.
        if STEP_DIR.match(name) and is_complete(target):
            newest = list_checkpoints(directory)
            # A crash between the rename and the pointer update leaves a newer
            # complete checkpoint than the pointer names: take the newer one.
            return newest[-1] if newest and newest[-1].name > target.name else target
        log.warning("%s names %s, which is not a complete checkpoint; scanning", pointer, target)
    found = list_checkpoints(directory)
    return found[-1] if found else None


def step_of(path: Path) -> int:
    match = STEP_DIR.match(path.name)
    assert match, path
    return int(match.group(1))
