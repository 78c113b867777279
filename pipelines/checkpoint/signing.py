"""Signed checkpoints: an HMAC-SHA256 of the manifest, with a key only its owners hold.

The manifest lists every file of a checkpoint with its SHA-256, so a MAC over
the manifest covers every byte. Without the key, nobody who can write into
the run directory (a shared filesystem, a copied folder) can alter a file and
rewrite the manifest to match. The key comes from ``SELFSUP_CHECKPOINT_KEY``
(the secret itself) or ``SELFSUP_CHECKPOINT_KEY_FILE`` (a file holding it).
With a key set, every checkpoint written is signed, and resume, export,
``verify`` (and every other reader) refuse one whose signature is missing or
does not match, and check every file's SHA-256 (not just its size) before
reading it. Without a key, checkpoints are written and read as before, and
``checkpoint inspect`` says "unsigned".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from selfsup.errors import CheckpointError

KEY_VARIABLE = "SELFSUP_CHECKPOINT_KEY"
KEY_FILE_VARIABLE = "SELFSUP_CHECKPOINT_KEY_FILE"
ALGORITHM = "HMAC-SHA256"
MIN_KEY_BYTES = 16  # shorter secrets are guessable


def signing_key() -> bytes | None:
    """The key from the environment, or None when checkpoints are unsigned."""
    key: bytes | None = None
    if os.environ.get(KEY_VARIABLE):
        key = os.environ[KEY_VARIABLE].encode()
    elif os.environ.get(KEY_FILE_VARIABLE):
        path = Path(os.environ[KEY_FILE_VARIABLE])
        try:
            key = path.read_bytes().strip()
        except OSError as exc:
            raise CheckpointError(
                f"{KEY_FILE_VARIABLE}={path} cannot be read ({exc.strerror}); point it at the "
                "file holding the checkpoint key, or unset it"
            ) from None
    if key is not None and len(key) < MIN_KEY_BYTES:
        raise CheckpointError(
            f"the checkpoint key is {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes "
            "(e.g. `openssl rand -hex 32`)"
        )
    return key


def key_id(key: bytes) -> str:
    """A short public name of a key (not the key): tells which key signed a checkpoint."""
    return hashlib.sha256(b"selfsup key id\0" + key).hexdigest()[:16]


def _mac(key: bytes, files: dict[str, Any]) -> str:
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def signature_for(files: dict[str, Any], key: bytes) -> dict[str, str]:
    """The manifest's ``signature`` entry for these file entries."""
    return {"algorithm": ALGORITHM, "key_id": key_id(key), "mac": _mac(key, files)}


def signature_problem(files: dict[str, Any], signature: Any, key: bytes | None) -> str | None:
    """What is wrong with a manifest's signature under ``key``; None when it holds (or no key)."""
    if key is None:
        return None
    if signature is None:
        return f"it is unsigned, and {KEY_VARIABLE} is set: only signed checkpoints are read"
    if not isinstance(signature, dict) or signature.get("algorithm") != ALGORITHM:
        return "its signature is not an HMAC-SHA256 signature of selfsup's"
    if signature.get("key_id") != key_id(key):
        return (
            f"it was signed with another key (key id {signature.get('key_id')!s:.16}; this key's "
            f"is {key_id(key)})"
        )
    if not hmac.compare_digest(str(signature.get("mac", "")), _mac(key, files)):
        return "its manifest does not match its signature: files were altered and re-listed"
    return None


def describe_signature(signature: Any, key: bytes | None) -> str:
    """For ``checkpoint inspect``: unsigned, or signed by which key (and whether checked)."""
    if signature is None:
        return "unsigned"
    named = signature.get("key_id", "?") if isinstance(signature, dict) else "?"
    if key is None:
        return f"signed (key id {named!s:.16}; not checked: no {KEY_VARIABLE} set)"
    return f"signed with this key (key id {named!s:.16})"
