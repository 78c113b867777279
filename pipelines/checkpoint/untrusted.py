"""Reading checkpoint and weight files as if they came from anywhere: no file runs code.

Every ``.pt`` file selfsup reads goes through :func:`load_tensor_file`
(``torch.load(weights_only=True)``), DCP folders through the allowlisting
reader of :mod:`selfsup.pipelines.checkpoint.dcp_io`. A file that asks to
rebuild anything but tensors and plain containers is refused with one line
naming the file and what it asked for.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import IO, Any

import torch

from selfsup import safe_pickle
from selfsup.errors import CheckpointError, one_line
from selfsup.safe_pickle import CodeInPickle


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


def weights_only_load(source: Path | IO[bytes], map_location: str | None = None) -> Any:
    """``torch.load(source, weights_only=True)``; :class:`CodeInPickle` for a refused global.

    Any other unpickling error (damaged bytes) propagates as it is.
    """
    try:
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
            f"{path} is not a readable {what} ({one_line(exc)}): it is damaged or of another format"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # truncated zip, not torch's
        raise CheckpointError(
            f"{path} is not a readable {what} ({type(exc).__name__}): it may be truncated or "
            "of another format"
        ) from None


# What DeepSpeed's checkpoint files rebuild: tensors (torch's own rebuild
# functions and storage types), and three DeepSpeed classes. DeepSpeed reads
# its files with plain pickle (weights_only=False), so each is scanned
# against this list first.
_TORCH_REBUILD = {
    "torch._utils": {"_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state"},
    "torch._tensor": {"_rebuild_from_type_v2"},
    "collections": {"OrderedDict"},
}
_DEEPSPEED_CLASSES = {
    "deepspeed.runtime.fp16.loss_scaler": {"LossScaler", "DynamicLossScaler"},
    "deepspeed.runtime.zero.config": {"ZeroStageEnum"},
    "deepspeed.utils.tensor_fragment": {"fragment_address"},
}


def torch_value(module: str, name: str, *kinds: type) -> bool:
    """``torch.<name>`` names a value of one of ``kinds`` (``torch.float32``: a dtype)."""
    return module == "torch" and isinstance(getattr(torch, name, None), kinds)


def _deepspeed_allowed(module: str, name: str) -> bool:
    if name in {**_TORCH_REBUILD, **_DEEPSPEED_CLASSES}.get(module, set()):
        return True
    if module == "torch" and (name in ("Size", "Tensor", "device") or name.endswith("Storage")):
        return True
    return torch_value(module, name, torch.dtype, torch.device)


def scan_deepspeed_file(path: Path) -> None:
    """Refuse (one line) a DeepSpeed checkpoint file whose pickle names anything else."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
                for name in pickles:
                    safe_pickle.scan(io.BytesIO(archive.read(name)), _deepspeed_allowed)
        else:
            with path.open("rb") as fh:
                safe_pickle.scan(fh, _deepspeed_allowed)
    except CodeInPickle as exc:
        raise carries_code(path, exc) from None
    except Exception as exc:  # truncated, not a pickle: damaged
        raise CheckpointError(
            f"{path} is not a readable DeepSpeed checkpoint file ({type(exc).__name__}); it is "
            "damaged: delete the checkpoint to resume from the one before"
        ) from None


def scan_deepspeed_folder(folder: Path) -> None:
    for file in sorted(folder.glob("*.pt")):
        if not file.name.startswith("rng_rank"):
            scan_deepspeed_file(file)
