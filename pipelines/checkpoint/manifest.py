"""Each checkpoint's list of files with their sizes and SHA-256: what "complete" means.

``manifest.json`` is written last, after every rank's files and
``meta.json``, inside the temporary folder whose rename commits the
checkpoint, so a complete checkpoint always has one and it covers
``meta.json`` too. Loading checks sizes (cheap, always: a truncated copy is
caught before torch reads it); ``selfsup checkpoint inspect`` and ``verify``
also check the hashes, which catch altered bytes of the same length. With a
checkpoint key set, the manifest is signed and every reader checks the
signature and the hashes (:mod:`selfsup.pipelines.checkpoint.signing`).
Entries must name files inside the folder: a manifest is input like any
other file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfsup.errors import CheckpointError
from selfsup.pipelines.checkpoint.signing import (
    describe_signature,
    signature_for,
    signature_problem,
    signing_key,
)

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
    manifest: dict[str, object] = {"files": entries}
    key = signing_key()
    if key is not None:
        manifest["signature"] = signature_for(entries, key)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
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
    signature: str = "unsigned"  # for inspect: unsigned / signed by which key
    signature_problem: str | None = None  # set only when a key is set and it fails

    @property
    def ok(self) -> bool:
        return not (self.missing or self.wrong_size or self.altered or self.signature_problem)

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
        if self.signature_problem:
            raise CheckpointError(
                f"refusing checkpoint {self.folder}: {self.signature_problem}; use a checkpoint "
                "signed with this key, or the key it was signed with"
            )
        if not self.ok:
            raise CheckpointError(
                f"checkpoint {self.folder} is damaged ({self.problem()}); delete it to resume "
                "from the one before, or copy the whole folder again"
            )


def check_manifest(folder: Path, hashes: bool = False) -> ManifestCheck:
    """Compare the files with the manifest: sizes always, SHA-256 too with ``hashes``.

    With a checkpoint key set, the signature is checked and so are the hashes.
    """
    manifest = folder / MANIFEST_FILE
    key = signing_key()
    if not manifest.is_file():
        check = ManifestCheck(folder, recorded=False)
        check.signature_problem = signature_problem({}, None, key)
        return check
    entries, signature = read_manifest(manifest)
    check = ManifestCheck(folder, files=len(entries))
    check.signature = describe_signature(signature, key)
    check.signature_problem = signature_problem(entries, signature, key)
    if check.signature_problem:
        return check
    for name, entry in entries.items():
        path = folder / name
        if not path.is_file():
            check.missing.append(name)
        elif path.stat().st_size != entry["bytes"]:
            check.wrong_size.append(name)
        elif (hashes or key is not None) and sha256_of(path) != entry["sha256"]:
            check.altered.append(name)
    return check


def read_manifest(manifest: Path) -> tuple[dict[str, dict[str, Any]], Any]:
    """The file entries and signature of a manifest, each entry checked; one line if not."""
    try:
        values = json.loads(manifest.read_text())
        entries, signature = values["files"], values.get("signature")
        if not isinstance(entries, dict):
            raise TypeError("'files' is not a mapping")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{manifest} is unreadable ({type(exc).__name__}: {exc}); the checkpoint is damaged"
        ) from None
    for name, entry in entries.items():
        problem = _entry_problem(name, entry)
        if problem:
            raise CheckpointError(
                f"{manifest} is not a valid manifest ({problem}); the checkpoint is damaged or "
                "was tampered with: delete it to resume from the one before"
            )
    return entries, signature


def _entry_problem(name: str, entry: Any) -> str | None:
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts:
        return f"entry {name!r} names a file outside the checkpoint"
    if not isinstance(entry, dict):
        return f"entry {name!r} is not a mapping"
    size, digest = entry.get("bytes"), entry.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"entry {name!r} has no valid 'bytes'"
    if not isinstance(digest, str) or len(digest) != 64:
        return f"entry {name!r} has no valid 'sha256'"
    return None


def require_intact(folder: Path, hashes: bool = False) -> None:
    """Raise a one-line :class:`CheckpointError` naming the damaged files, if any."""
    check_manifest(folder, hashes=hashes).raise_if_damaged()
