"""Reading and checking ``torch.distributed.checkpoint`` (DCP) folders.

The single-process and DDP engines store model and optimizer through DCP;
these helpers read its index without loading tensors, check that every
shard it names is present and long enough, and name differing keys when a
checkpoint belongs to another model.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from selfsup.errors import CheckpointError, one_line

# DCP reports read failures as CheckpointException, which derives from BaseException.
DCP_ERRORS = (Exception, CheckpointException)


@contextmanager
def quiet_dcp() -> Iterator[None]:
    # DCP warns on every call that no process group exists; in a single
    # process that is the intended use.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", message=".*process group.*")
        yield


def check_shards_present(path: Path) -> None:
    """Every tensor file a DCP index refers to exists and is long enough."""
    metadata = read_dcp_metadata(path)
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    missing = sorted(name for name in needed if not (path / name).is_file())
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is missing shard file(s) {', '.join(missing)} (every rank that "
            "wrote it leaves one): copy the whole folder, or delete it to resume from the one "
            "before"
        )
    short = sorted(name for name, end in needed.items() if (path / name).stat().st_size < end)
    if short:
        raise CheckpointError(
            f"checkpoint {path} has truncated shard file(s) {', '.join(short)}; delete it to "
            "resume from the one before"
        )


def stored_keys(path: Path) -> dict[str, Any]:
    """Flattened key -> tensor metadata (size, dtype) of a DCP checkpoint."""
    return dict(read_dcp_metadata(path).state_dict_metadata)


def read_dcp_metadata(path: Path) -> Any:
    """The DCP index (``.metadata``) of a checkpoint folder, or a CheckpointError naming it."""
    try:
        return dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as exc:
        raise CheckpointError(
            f"{path} has no readable DCP index (.metadata): {one_line(exc)}"
        ) from exc


def check_model_keys(path: Path, model_sd: dict[str, Any], stored: dict[str, Any]) -> None:
    """Raise a :class:`CheckpointError` listing parameter names or shapes that differ."""
    wanted = {f"model.{k}": v for k, v in model_sd.items() if isinstance(v, torch.Tensor)}
    have = {k: v for k, v in stored.items() if k.startswith("model.")}
    missing = sorted(set(wanted) - set(have))
    unexpected = sorted(set(have) - set(wanted))
    shapes = sorted(
        f"{k[6:]} {tuple(have[k].size)} in checkpoint vs {tuple(wanted[k].shape)} in model"
        for k in set(wanted) & set(have)
        if hasattr(have[k], "size") and tuple(have[k].size) != tuple(wanted[k].shape)
    )
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing from checkpoint: {_few([k[6:] for k in missing])}")
    if unexpected:
        parts.append(f"not in this model: {_few([k[6:] for k in unexpected])}")
    if shapes:
        parts.append(f"different shapes: {_few(shapes)}")
    raise CheckpointError(
        f"checkpoint {path} does not match this model ({'; '.join(parts)}); "
        "it was written by another model or config"
    )


def _few(items: list[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def describe_dcp_error(exc: BaseException) -> str:
    """The underlying error of a DCP failure, in a few words."""
    if isinstance(exc, CheckpointException):
        causes = {type(failure[0]).__name__ for failure in exc.failures.values()}
        return "read failed: " + ", ".join(sorted(causes))
    return one_line(exc)
