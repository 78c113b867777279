"""Training checkpoints, written atomically, found and pruned.

Layout of a run's ``checkpoints/`` folder::

    step_000000500/          one complete checkpoint
        .metadata            DCP index (single/DDP engines)
        __0_0.distcp ...     tensors, one file per writing rank
        (DeepSpeed: mp_rank_*_model_states.pt, zero_pp_rank_*_optim_states.pt)
        rng_rank0.pt ...     every rank's RNG states (weights-only files)
        meta.json            step, epoch, world size, engine, scheduler position
    step_000001000/
    latest                   name of the newest complete checkpoint

A checkpoint is written into ``.step_XXXXXXXXX.tmp/`` by every rank, and rank
0 renames it after all ranks are done and ``meta.json`` is on disk; ``latest``
is replaced (write + rename) after that. A crash at any moment therefore
leaves the previous checkpoint intact and findable, and an unfinished
temporary folder is ignored and removed by the next save. Model and optimizer
states are the engine's business (DCP or DeepSpeed); this module owns the
protocol around them.
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
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from selfsup.errors import CheckpointError

if TYPE_CHECKING:
    from selfsup.pipelines.engines.base import Engine

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


def _fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


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
    """This process's RNG states (tensors, ints and floats only: weights-only loadable)."""
    version, state, gauss = random.getstate()
    rng: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "python": [version, list(state), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["torch_cuda"] = torch.cuda.get_rng_state()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["torch_cuda"])
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))


def rng_file(path: Path, rank: int) -> Path:
    return path / f"rng_rank{rank}.pt"


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
        engine: Engine,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        state: TrainState,
        extra_meta: dict[str, Any] | None = None,
    ) -> Path:
        """Write a checkpoint of the current state on every rank; returns its folder."""
        started = time.perf_counter()
        final = self.directory / step_dir_name(state.step)
        tmp = self.directory / f".{final.name}.tmp"
        if self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        engine.barrier()
        engine.save_model_and_optimizer(tmp)
        own_rng = rng_file(tmp, self.rank)
        torch.save(capture_rng(), own_rng)
        _fsync_file(own_rng)
        engine.barrier()  # every rank's files are on disk
        if self.rank == 0:
            meta = {
                "format": FORMAT,
                **asdict(state),
                "world_size": self.world_size,
                "engine": engine.name,
                "scheduler": scheduler_position(scheduler),
                "engine_state": _jsonable(engine.state_dict()),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **(extra_meta or {}),
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
            _fsync_tree(tmp)
            if final.exists():  # the same step saved again (e.g. the final save)
                shutil.rmtree(final)
            tmp.rename(final)
            _fsync_dir(self.directory)
            _write_atomic(self.directory / LATEST_FILE, final.name + "\n")
            self._prune()
            log.info("saved checkpoint %s (%.1fs)", final, time.perf_counter() - started)
        engine.barrier()
        return final

    def load(
        self, path: Path, engine: Engine, scheduler: torch.optim.lr_scheduler.LRScheduler
    ) -> TrainState:
        """Restore model, optimizer, engine, scheduler position and RNG from ``path``."""
        meta = read_meta(path)
        engine.load_model_and_optimizer(path, meta)
        engine.load_state_dict(meta.get("engine_state", {}))
        scheduler.__dict__.update(meta["scheduler"])
        own_rng = rng_file(path, self.rank)
        if meta.get("world_size") == self.world_size and own_rng.is_file():
            restore_rng(torch.load(own_rng, weights_only=True))
        else:
            log.warning(
                "checkpoint %s was written by %s process(es), this run has %d: resharded; RNG "
                "streams start fresh (training continues; bitwise replay needs the same count)",
                path, meta.get("world_size"), self.world_size,
            )  # fmt: skip
        return TrainState(step=int(meta["step"]), epoch=int(meta["epoch"]))

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
            f"{path} has no readable DCP index (.metadata): {_first_line(exc)}"
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
