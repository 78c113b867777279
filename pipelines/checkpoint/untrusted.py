"""Reading checkpoint and weight files as if they came from anywhere: no file runs code.

Every ``.pt`` file selfsup reads goes through :func:`load_tensor_file`
(``torch.load(weights_only=True)``), DCP folders through the allowlisting
reader of :mod:`selfsup.pipelines.checkpoint.dcp_io`, and DeepSpeed's files
through DeepSpeed's own readers made weights-only (:func:`deepspeed_reads`). A file that asks to
rebuild anything but tensors and plain containers is refused with one line
naming the file and what it asked for.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from selfsup import safe_pickle
from selfsup.errors import CheckpointError
from selfsup.safe_pickle import CodeInPickle, every_torch_load_weights_only


def carries_code(path: Path, exc: CodeInPickle) -> CheckpointError:
    return CheckpointError(
        f"refusing {path}: it carries code ({exc}); checkpoints and weights hold only tensors "
        "and numbers, so this file was tampered with or is not selfsup's: delete it, or take "
        "it from a source you trust"
    )


def refused_global(exc: pickle.UnpicklingError) -> CodeInPickle | None:
    """The global a weights-only ``torch.load`` refused, from torch's message."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if not found:
        return None
    module, _, name = found.group(1).rpartition(".")
    return CodeInPickle(module or "builtins", name)


def _code_in_bare_pickle(path: Path) -> CodeInPickle | None:
    """What a bare (non-zip) pickle asks to call, read with nothing allowed (so nothing runs).

    torch's weights-only reader stops at opcodes it does not know (protocol 4
    frames) before it sees the globals; this reader sees them.
    """
    try:
        with path.open("rb") as fh:
            safe_pickle.load(fh, lambda module, name: False)
    except CodeInPickle as exc:
        return exc
    except Exception:  # not a pickle after all: damaged, not code
        return None
    return None


def unpickling_reason(exc: pickle.UnpicklingError) -> str:
    """What torch's weights-only reader stumbled on, without its advice to load unsafely."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(exc), re.S)
    reason = found.group(1) if found else str(exc).split("\n")[-1]
    if "weights_only" in reason or not reason.strip():
        reason = "not a pickle of tensors"
    return " ".join(reason.split())[:120]


def weights_only_load(source: Path | IO[bytes], map_location: str | None = None) -> Any:
    """``torch.load(source, weights_only=True)``; :class:`CodeInPickle` for a refused global.

    Any other unpickling error (damaged bytes) propagates as it is.
    """
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol N": a second line, no news
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        code = refused_global(exc)
        if code is None and isinstance(source, Path):
            code = _code_in_bare_pickle(source)
        if code is None:
            raise
        raise code from None


def load_tensor_file(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line errors.

    ``what`` names the file for the message ("RNG state file", "backbone file").
    """
    try:
        return weights_only_load(path, map_location="cpu")
    except CodeInPickle as exc:
        raise carries_code(path, exc) from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} is not a readable {what} ({unpickling_reason(exc)}): it is damaged or of "
            "another format"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # truncated zip, not torch's
        raise CheckpointError(
            f"{path} is not a readable {what} ({type(exc).__name__}): it may be truncated or "
            "of another format"
        ) from None


def torch_value(module: str, name: str, *kinds: type) -> bool:
    """``torch.<name>`` names a value of one of ``kinds`` (``torch.float32``: a dtype)."""
    return module == "torch" and isinstance(getattr(torch, name, None), kinds)


def deepspeed_classes() -> list[Any]:
    """The DeepSpeed classes its checkpoint files rebuild (loss scaler, ZeRO stage, fragments).

    Plain data holders: rebuilding them runs no code of the file's choosing.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def deepspeed_files(folder: Path) -> list[Path]:
    """The ``.pt`` files DeepSpeed reads from a checkpoint folder (not selfsup's RNG files)."""
    return [f for f in sorted(folder.glob("*.pt")) if not f.name.startswith("rng_rank")]


def load_deepspeed_file(path: Path) -> Any:
    """A DeepSpeed checkpoint file, weights-only with its classes allowed; one-line errors."""
    with torch.serialization.safe_globals(deepspeed_classes()):
        return load_tensor_file(path, "DeepSpeed checkpoint file")


@contextlib.contextmanager
def deepspeed_reads(folder: Path) -> Iterator[None]:
    """DeepSpeed's own readers of ``folder``, weights-only, with DeepSpeed's classes allowed.

    DeepSpeed calls ``torch.load(weights_only=False)``; inside the block
    torch makes those loads weights-only (:func:`every_torch_load_weights_only`).
    When one is refused, the folder's files are read one by one (weights-only,
    on this error path only) to name the file in one line.
    """
    with every_torch_load_weights_only(), torch.serialization.safe_globals(deepspeed_classes()):
        try:
            yield
        except (pickle.UnpicklingError, RuntimeError, EOFError):
            for file in deepspeed_files(folder):
                load_deepspeed_file(file)  # raises the one-line error for the culprit
            raise
