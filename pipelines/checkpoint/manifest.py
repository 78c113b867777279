"""Each checkpoint's list of files with their sizes and SHA-256: what "complete" means.

``manifest.json`` is written after every rank's files and before
``meta.json`` (the commit marker), so a complete checkpoint always has one.
Loading checks sizes (cheap, always: a truncated copy is caught before
torch reads it); ``selfsup checkpoint inspect`` and ``verify`` also check
the hashes, which catch altered bytes of the same length.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from selfsup.errors import CheckpointError

MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 22


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, exclude: tuple[str, ...] = ()) -> dict[str, dict[str, object]]:
    """Record every file below ``folder`` (but ``exclude``) in its ``manifest.json``."""
    entries = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name in (MANIFEST_FILE, *exclude):
            continue
        entries[name] = {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": entries}, indent=1))
    return entries


@dataclass
class ManifestCheck:
    """What differs between a checkpoint folder and its manifest."""

    folder: Path
    recorded: bool = True  # False: written before manifests existed; nothing to check
    files: int = 0  # how many the manifest lists
    missing: list[str] = field(default_factory=list)
    wrong_size: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)  # same size, other bytes

    @property
    def ok(self) -> bool:
        return not (self.missing or self.wrong_size or self.altered)

    def problem(self) -> str:
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("missing", self.missing),
                ("truncated or grown", self.wrong_size),
                ("altered (SHA-256 differs)", self.altered),
            )
            if names
        ]
        return "; ".join(parts)

    def raise_if_damaged(self) -> None:
        """A one-line :class:`CheckpointError` naming the damaged files, if any."""
        if not self.ok:
            raise CheckpointError(
                f"checkpoint {self.folder} is damaged ({self.problem()}); delete it to resume "
                "from the one before, or copy the whole folder again"
            )


def check_manifest(folder: Path, hashes: bool = False) -> ManifestCheck:
    """Compare the files with the manifest: sizes always, SHA-256 too with ``hashes``."""
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        return ManifestCheck(folder, recorded=False)
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{manifest} is unreadable ({exc}); the checkpoint is damaged"
        ) from exc
    check = ManifestCheck(folder, files=len(entries))
    for name, entry in entries.items():
        path = folder / name
        if not path.is_file():
            check.missing.append(name)
        elif path.stat().st_size != entry["bytes"]:
            check.wrong_size.append(name)
        elif hashes and sha256_of(path) != entry["sha256"]:
            check.altered.append(name)
    return check


def require_intact(folder: Path, hashes: bool = False) -> None:
    """Raise a one-line :class:`CheckpointError` naming the damaged files, if any."""
    check_manifest(folder, hashes=hashes).raise_if_damaged()
