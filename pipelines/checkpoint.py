"""Training checkpoints with torch.distributed.checkpoint (DCP), written atomically.

Layout of a run's ``checkpoints/`` folder::

    step_000000500/      one complete checkpoint
        .metadata        DCP index
        __0_0.distcp     tensors (one file per writing rank)
        meta.json        step, epoch, world size, engine, scheduler, RNG
    step_000001000/
    latest               name of the newest complete checkpoint

A checkpoint is written into ``.step_XXXXXXXXX.tmp/`` and renamed when every
file is on disk; ``latest`` is replaced (write + rename) after that. A crash at
any moment therefore leaves the previous checkpoint intact and findable, and
an unfinished temporary folder is ignored and removed by the next save.

Model and optimizer states go through ``torch.distributed.checkpoint.state_dict``
so their keys are parameter names, independent of the process count.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from selfsup.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "selfsup.checkpoint/1"
META_FILE = "meta.json"
LATEST_FILE = "latest"
STEP_DIR = re.compile(r"^step_(\d{9})$")
# DCP reports read failures as CheckpointException, which derives from BaseException.
DCP_ERRORS = (Exception, CheckpointException)


@dataclass
class TrainState:
    """Where training stands: optimizer steps taken and the epoch they are in."""

    step: int = 0
    epoch: int = 0


@contextmanager
def quiet_dcp() -> Iterator[None]:
    # DCP warns on every call that no process group exists; in a single
    # process that is the intended use.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", message=".*process group.*")
        yield


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def is_complete(path: Path) -> bool:
    return (path / META_FILE).is_file() and (path / ".metadata").is_file()


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
        target = directory / pointer.read_text().strip()
        if STEP_DIR.match(target.name) and is_complete(target):
            newest = list_checkpoints(directory)
            # A crash between the rename and the pointer update leaves a newer
            # complete checkpoint than the pointer names: take the newer one.
            return newest[-1] if newest and newest[-1].name > target.name else target
        log.warning("%s names %s, which is not a complete checkpoint; scanning", pointer, target)
    found = list_checkpoints(directory)
    return found[-1] if found else None


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with file.open("rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def capture_rng() -> dict[str, Any]:
    """This process's RNG states: torch CPU/CUDA as tensors, Python's as JSON-able data."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    version, state, gauss = random.getstate()
    return {"tensors": tensors, "python": [version, list(state), gauss]}


def restore_rng(tensors: dict[str, torch.Tensor], python_state: list[Any] | None) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    if python_state is not None:
        version, state, gauss = python_state
        random.setstate((version, tuple(state), gauss))


class CheckpointManager:
    """Saves, finds, loads and prunes one run's checkpoints."""

    def __init__(
        self,
        directory: Path,
        keep_last: int = 2,
        keep_every: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.directory = directory
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.rank = rank
        self.world_size = world_size

    def latest(self) -> Path | None:
        return find_latest(self.directory)

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        state: TrainState,
        engine_state: dict[str, Any],
        extra_meta: dict[str, Any] | None = None,
    ) -> Path:
        """Write a checkpoint of the current state; returns its folder."""
        started = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / step_dir_name(state.step)
        tmp = self.directory / f".{final.name}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        rng = capture_rng()
        tensors = {
            "model": model_sd,
            "optim": optim_sd,
            "rng": {f"rank{self.rank}": rng["tensors"]},
        }
        with quiet_dcp():
            dcp.save(tensors, checkpoint_id=tmp)
        meta = {
            "format": FORMAT,
            **asdict(state),
            "world_size": self.world_size,
            "scheduler": scheduler_position(scheduler),
            "engine_state": _jsonable(engine_state),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra_meta or {}),
        }
        # Each rank keeps its own Python RNG state beside the shared tensors.
        (tmp / f"python_rng_rank{self.rank}.json").write_text(json.dumps(rng["python"]))
        if self.rank == 0:
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
            _fsync_tree(tmp)
            if final.exists():  # the same step saved again (e.g. the final save)
                shutil.rmtree(final)
            tmp.rename(final)
            _fsync_dir(self.directory)
            _write_atomic(self.directory / LATEST_FILE, final.name + "\n")
            self._prune()
        log.info("saved checkpoint %s (%.1fs)", final, time.perf_counter() - started)
        return final

    def load(
        self,
        path: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> tuple[TrainState, dict[str, Any]]:
        """Restore model, optimizer, scheduler and RNG from ``path``.

        Returns the training state and the engine state for the engine to restore.
        """
        meta = read_meta(path)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        rank_key = f"rank{self.rank}"
        tensors: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
        stored = stored_keys(path)
        check_model_keys(path, model_sd, stored)
        same_layout = meta.get("world_size") == self.world_size
        if same_layout and f"rng.{rank_key}.torch_cpu" in stored:
            tensors["rng"] = {rank_key: capture_rng()["tensors"]}
        with quiet_dcp():
            try:
                dcp.load(tensors, checkpoint_id=path)
            except DCP_ERRORS as exc:
                raise CheckpointError(
                    f"cannot read checkpoint {path} ({describe_dcp_error(exc)}); it is incomplete "
                    "or corrupt: delete it to resume from the one before"
                ) from exc
        set_state_dict(
            model, optimizer, model_state_dict=tensors["model"], optim_state_dict=tensors["optim"]
        )
        scheduler.__dict__.update(meta["scheduler"])
        if "rng" in tensors:
            python_rng = path / f"python_rng_{rank_key}.json"
            restore_rng(
                tensors["rng"][rank_key],
                json.loads(python_rng.read_text()) if python_rng.is_file() else None,
            )
        else:
            log.warning(
                "checkpoint %s was written by %s process(es), this run has %d: RNG streams "
                "start fresh (training continues; bitwise replay needs the same process count)",
                path, meta.get("world_size"), self.world_size,
            )  # fmt: skip
        state = TrainState(step=int(meta["step"]), epoch=int(meta["epoch"]))
        return state, meta.get("engine_state", {})

    def _prune(self) -> None:
        found = list_checkpoints(self.directory)
        keep = set(found[-self.keep_last :])
        for path in found:
            step = int(STEP_DIR.match(path.name).group(1))  # type: ignore[union-attr]
            if path in keep or (self.keep_every and step % self.keep_every == 0):
                continue
            shutil.rmtree(path, ignore_errors=True)
        for leftover in self.directory.glob(".step_*.tmp"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)


# The schedule's shape (warmup, length) comes from the config, so a resumed run
# may extend it; a checkpoint restores only the position in it.
SCHEDULER_POSITION = ("last_epoch", "_step_count", "_last_lr")


def scheduler_position(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    state = scheduler.state_dict()
    return _jsonable({k: state[k] for k in SCHEDULER_POSITION if k in state})


def stored_keys(path: Path) -> dict[str, Any]:
    """Flattened key -> tensor metadata (size, dtype) of a DCP checkpoint."""
    try:
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as exc:
        raise CheckpointError(
            f"{path} has no readable DCP index (.metadata): {_first_line(exc)}"
        ) from exc
    return dict(metadata.state_dict_metadata)


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
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _jsonable(value: Any) -> Any:
    """Scheduler/scaler states hold only numbers, lists and dicts; tensors become floats."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value
