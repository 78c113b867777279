"""Reading and checking ``torch.distributed.checkpoint`` (DCP) folders.

The single-process and DDP engines store model and optimizer through DCP;
these helpers read its index without loading tensors, check that every
shard it names is present and long enough, and name differing keys when a
checkpoint belongs to another model.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import (
    DefaultLoadPlanner,
    _EmptyStateDictLoadPlanner,  # what DCP's own dcp_to_torch_save reads with
)
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta

from selfsup import safe_pickle
from selfsup.errors import CheckpointError, one_line
from selfsup.pipelines.checkpoint.untrusted import carries_code, torch_value, weights_only_load
from selfsup.safe_pickle import CodeInPickle
from selfsup.ssl.sparsity import MASK_SUFFIX

# DCP reports read failures as CheckpointException, which derives from BaseException.
DCP_ERRORS = (Exception, CheckpointException)
METADATA_FILE = ".metadata"


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


def check_mask_entries(path: Path) -> None:
    """Sparsity masks are stored as bool: refuse a mask of another type (one line).

    A mask rewritten as floats (say -0.25 and 7.25) would be cast to True on
    load: the layer would become dense without a word. Shapes are DCP's own check.
    """
    if not (path / METADATA_FILE).is_file():
        return  # DeepSpeed: checked where its files are read
    for key, entry in stored_keys(path).items():
        dtype = getattr(getattr(entry, "properties", None), "dtype", None)
        if key.endswith(MASK_SUFFIX) and dtype != torch.bool:
            raise CheckpointError(
                f"checkpoint {path} stores sparsity mask {key} as {dtype}, not bool: the "
                "checkpoint was altered; delete it to resume from the one before"
            )


def read_dcp_metadata(path: Path) -> Any:
    """The DCP index (``.metadata``) of a checkpoint folder, or a CheckpointError naming it."""
    try:
        return SafeFileSystemReader(path).read_metadata()
    except CodeInPickle as exc:
        raise carries_code(path / METADATA_FILE, exc) from None
    except Exception as exc:
        raise CheckpointError(
            f"{path} has no readable DCP index (.metadata): {one_line(exc)}"
        ) from exc


# What DCP's index pickles: its own metadata dataclasses, torch sizes, dtypes
# and layouts, paths. Nothing else may be rebuilt from a .metadata file.
_DCP_METADATA_CLASSES = {
    "Metadata",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "TensorProperties",
    "MetadataIndex",
    "StorageMeta",
    "_MEM_FORMAT_ENCODING",
}
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": _DCP_METADATA_CLASSES,
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


def _metadata_allowed(module: str, name: str) -> bool:
    if name in _METADATA_GLOBALS.get(module, ()) or (module, name) == ("torch", "Size"):
        return True
    return torch_value(module, name, torch.dtype, torch.layout, torch.memory_format)


class SafeFileSystemReader(dcp.FileSystemReader):
    """DCP's reader, with the index read through an allowlist instead of ``pickle.load``."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        with (Path(self.path) / METADATA_FILE).open("rb") as fh:
            metadata = safe_pickle.load(fh, _metadata_allowed)
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{self.path}/{METADATA_FILE} is not a DCP index")
        storage_meta = getattr(metadata, "storage_meta", None) or StorageMeta()
        storage_meta.load_id = self.load_id
        metadata.storage_meta = storage_meta
        return metadata


class _WeightsOnlyBytes(DefaultLoadPlanner):
    """DCP's planner, but non-tensor entries load with ``weights_only=True`` (it uses False)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        # DefaultLoadPlanner.load_bytes with weights_only=True; the rest as there.
        # Damaged bytes raise UnpicklingError: reported as a corrupt checkpoint.
        loaded = weights_only_load(value)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


class SafeLoadPlanner(_WeightsOnlyBytes):
    """DCP's default planner (loads into a given state), reading non-tensor entries safely."""


class SafeWholeLoadPlanner(_WeightsOnlyBytes, _EmptyStateDictLoadPlanner):
    """DCP's planner for reading a whole checkpoint into an empty state, reading entries safely."""


def load_everything(path: Path) -> dict[str, Any]:
    """All a DCP checkpoint holds, nested as saved, on the CPU and without a process group.

    What DCP's ``dcp_to_torch_save`` reads (with its private loader: the public
    ``dcp.load`` fills only the keys it is given), through the safe reader and planner.
    """
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict[str, Any] = {}
    with quiet_dcp():
        try:
            _load_state_dict(
                state, SafeFileSystemReader(path), planner=SafeWholeLoadPlanner(), no_dist=True
            )
        except DCP_ERRORS as exc:
            raise unreadable(path, exc) from None
    return state


def check_byte_entries(path: Path) -> int:
    """Read every non-tensor entry of a DCP checkpoint the safe way; how many there were.

    Refuses (one line) an entry that carries code: what :func:`load_into`
    would refuse, found without a model to load into.
    """
    metadata = read_dcp_metadata(path)
    count = 0
    for index, info in metadata.storage_data.items():
        if not isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            continue
        with (path / info.relative_path).open("rb") as fh:
            fh.seek(info.offset)
            entry = io.BytesIO(fh.read(info.length))
        try:
            weights_only_load(entry)
        except CodeInPickle as exc:
            raise carries_code(path / info.relative_path, exc) from None
        except pickle.UnpicklingError:
            raise CheckpointError(
                f"{path / info.relative_path} holds a damaged entry ({index.fqn}); delete the "
                "checkpoint to resume from the one before"
            ) from None
        count += 1
    return count


def load_into(state: dict[str, Any], path: Path) -> None:
    """``dcp.load`` of ``path`` into ``state`` in place; nothing in the folder can run code.

    A refused pickle, a read failure or corrupt bytes end in one
    :class:`CheckpointError` naming the folder.
    """
    with quiet_dcp():
        try:
            dcp.load(state, storage_reader=SafeFileSystemReader(path), planner=SafeLoadPlanner())
        except DCP_ERRORS as exc:
            raise unreadable(path, exc) from None


def unreadable(path: Path, exc: BaseException) -> CheckpointError:
    """One line for a DCP read that failed: code refused, or an incomplete/corrupt folder."""
    code = find_cause(exc, CodeInPickle)
    if code is not None:
        return carries_code(path, code)
    return CheckpointError(
        f"cannot read checkpoint {path} ({describe_dcp_error(exc)}); it is incomplete "
        "or corrupt: delete it to resume from the one before"
    )


ErrorT = TypeVar("ErrorT", bound=BaseException)


def find_cause(exc: BaseException, kind: type[ErrorT]) -> ErrorT | None:
    """The ``kind`` error behind a failure: itself, a rank's error DCP wrapped, or a cause."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, CheckpointException):  # DCP gathers every rank's error
        for failure in exc.failures.values():
            error = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(error, BaseException) and (found := find_cause(error, kind)):
                return found
    cause = exc.__cause__ or exc.__context__
    return find_cause(cause, kind) if cause is not None and cause is not exc else None


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
