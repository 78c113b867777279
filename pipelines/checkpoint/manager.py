"""Training checkpoints, written atomically, found and pruned.

Layout of a run's ``checkpoints/`` folder::

    step_000000500/          one complete checkpoint
        .metadata            DCP index (single/DDP/FSDP engines)
        __0_0.distcp ...     tensors, one file per writing rank
        (DeepSpeed: mp_rank_*_model_states.pt, zero_pp_rank_*_optim_states.pt)
        rng_rank0.pt ...     every rank's RNG states (weights-only files)
        hook_<name>.pt       a training hook's own replicated tensors (the online
                             classifier), written by rank 0 (weights-only)
        manifest.json        size and SHA-256 of every file above
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

With ``checkpoint.async_save`` the model and optimizer are copied into CPU
memory at the step saved and written by a background thread
(:mod:`~selfsup.pipelines.checkpoint.background`) while training goes on;
the same commit (meta.json, manifest, rename, ``latest``) follows once every
rank's write is complete, found by :meth:`CheckpointManager.poll` after each
step, or by :meth:`CheckpointManager.wait` before the next save and before
the process ends. A failed background write stops training at the next step.

The manager is built with the stateful objects it saves (torchtitan's
idea): the engine (model, optimizer, loss scale), the scheduler, the
training position and, implicitly, this process's RNG states; it decides
the cadence itself (:meth:`CheckpointManager.save`).
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch.distributed.checkpoint.api import CheckpointException

from selfsup.atomic import fsync_dir, fsync_file, fsync_tree, write_atomic
from selfsup.errors import CheckpointError, one_line
from selfsup.pipelines.checkpoint.background import BackgroundWriter
from selfsup.pipelines.checkpoint.dcp_io import find_cause
from selfsup.pipelines.checkpoint.folders import (
    FORMAT,
    LATEST_FILE,
    META_FILE,
    find_latest,
    list_checkpoints,
    read_meta,
    step_dir_name,
    step_of,
)
from selfsup.pipelines.checkpoint.manifest import require_intact, write_manifest
from selfsup.pipelines.checkpoint.rng import capture_rng, restore_rng, rng_file
from selfsup.pipelines.checkpoint.untrusted import load_tensor_file

if TYPE_CHECKING:  # engines import the DCP helpers of this room; this module only calls them
    from selfsup.pipelines.runtime.engines.base import Engine

log = logging.getLogger(__name__)

Scheduler = torch.optim.lr_scheduler.LRScheduler
HOOKS_META = "hooks"  # the meta.json entry holding each training hook's state


class HookState(Protocol):
    """What the manager needs of a training hook (selfsup.pipelines.train.hooks)."""

    def state_dict(self) -> dict[str, Any]: ...

    def resumed(self, step: int, state: dict[str, Any]) -> None: ...

    def tensor_state(self) -> dict[str, Any] | None: ...

    def load_tensor_state(self, state: dict[str, Any] | None) -> None: ...


@dataclass
class TrainState:
    """Where training stands: optimizer steps taken and the epoch they are in."""

    step: int = 0
    epoch: int = 0


@dataclass(frozen=True)
class Cadence:
    """When checkpoints are written and which are kept."""

    every_steps: int | None = None  # None: only when forced
    total_steps: int | None = None  # the final step is always saved
    keep_last: int = 2
    keep_every: int | None = None  # also keep every checkpoint whose step is a multiple of this


@dataclass
class PendingWrite:
    """A checkpoint whose files are being written; committed when complete."""

    tmp: Path
    final: Path
    meta: dict[str, Any]  # meta.json as of the step saved, written at the commit
    started: float
    future: Future | None = None


class CheckpointManager:
    """Saves, finds, loads and prunes one run's checkpoints of the objects it was built with."""

    def __init__(
        self,
        directory: Path,
        engine: Engine,
        scheduler: Scheduler,
        state: TrainState,
        cadence: Cadence | None = None,
        describe: Callable[[], dict[str, Any]] | None = None,
        before_write: Callable[[], None] | None = None,
        hooks: Mapping[str, HookState] | None = None,
        writer: BackgroundWriter | None = None,
    ) -> None:
        self.directory = directory
        self.engine = engine
        self.scheduler = scheduler
        self.state = state
        self.cadence = cadence or Cadence()
        self.describe = describe or dict  # extra meta.json entries at save time
        # Called on every rank before a checkpoint is written; raising stops the
        # write (the trainer refuses non-finite weights this way).
        self.before_write = before_write
        self.last_saved: int | None = None
        self.hooks = dict(hooks or {})  # training hooks: their state goes into meta.json
        self.writer = writer  # None: every write completes inside save()
        self.pending: PendingWrite | None = None

    def latest(self) -> Path | None:
        return find_latest(self.directory)

    def due(self, step: int) -> bool:
        every, total = self.cadence.every_steps, self.cadence.total_steps
        return bool(every and step % every == 0) or step == total

    def save(self, step: int, force: bool = False) -> Path | None:
        """Checkpoint ``step`` when due (or ``force``) and not saved yet; its folder, or None.

        With a background writer the folder is committed later (:meth:`poll`,
        :meth:`wait`); the write before it is waited for first: one in flight at most.
        """
        if step == self.last_saved or not (force or self.due(step)):
            return None
        assert step == self.state.step, (step, self.state.step)
        self.wait()
        if self.before_write is not None:
            self.before_write()
        path = self._write()
        self.last_saved = step
        return path

    def poll(self) -> None:
        """Commit the background write once it is complete on every rank (collective while
        one is in flight: every rank commits, or fails, at the same step)."""
        self._settle(block=False)

    def wait(self) -> None:
        """Wait for the background write, if any, and commit it (before exit, before the next)."""
        self._settle(block=True)

    def _settle(self, block: bool) -> None:
        pending = self.pending
        if pending is None or pending.future is None:
            return
        done = block or pending.future.done()
        failed = done and pending.future.exception() is not None  # waits for it when blocking
        if self.engine.any_rank(failed):
            self._fail(pending)
        if not self.engine.any_rank(not done):
            self._commit(pending)

    def close(self) -> None:
        """Release the background writer (its process group and staging memory)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _write(self) -> Path:
        """Every rank writes its files into a temporary folder; rank 0 commits it."""
        engine = self.engine
        final = self.directory / step_dir_name(self.state.step)
        tmp = self.directory / f".{final.name}.tmp"
        if engine.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)  # before the RNG files: a background write makes it late
        engine.barrier()
        pending = PendingWrite(tmp, final, self._meta(), time.perf_counter())
        try:
            future = engine.save_model_and_optimizer(tmp, self.writer)
            own_rng = rng_file(tmp, engine.rank)
            torch.save(capture_rng(), own_rng)
            fsync_file(own_rng)
            if engine.is_main:
                self._write_hook_tensors(tmp)
        except (OSError, CheckpointException) as exc:
            shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint stays the newest
            raise self._write_failed(exc) from None
        if future is None:
            self._commit(pending)
        else:
            pending.future = future
            self.pending = pending
            log.info(
                "checkpoint of step %d copied in %.2fs; writing it in the background",
                self.state.step,
                time.perf_counter() - pending.started,
            )
        return final

    def _write_hook_tensors(self, folder: Path) -> None:
        """Each hook's own tensors (replicated: rank 0's copy), as of the step saved."""
        for name, hook in self.hooks.items():
            state = hook.tensor_state()
            if state is not None:
                torch.save(state, hook_file(folder, name))
                fsync_file(hook_file(folder, name))

    def _commit(self, pending: PendingWrite) -> None:
        """Every rank's files are on disk: rank 0 writes meta and manifest, renames, moves
        ``latest``."""
        self.pending = None
        engine, tmp, final = self.engine, pending.tmp, pending.final
        engine.barrier()  # every rank's files are on disk
        if engine.is_main:
            try:
                (tmp / META_FILE).write_text(json.dumps(pending.meta, indent=1))
                write_manifest(tmp)  # last, covering meta.json: the rename below commits both
                fsync_tree(tmp)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise self._write_failed(exc) from None
            if final.exists():  # the same step saved again (e.g. the final save)
                shutil.rmtree(final)
            tmp.rename(final)
            fsync_dir(self.directory)
            write_atomic(self.directory / LATEST_FILE, final.name + "\n")
            self._prune()
            seconds = time.perf_counter() - pending.started
            log.info("saved checkpoint %s (%.1fs)", final, seconds)
        engine.barrier()

    def _fail(self, pending: PendingWrite) -> None:
        """A background write failed on some rank: its folder goes, training stops."""
        self.pending = None
        future = pending.future
        error = future.exception() if future is not None and future.done() else None
        self.engine.barrier()
        if self.engine.is_main:
            shutil.rmtree(pending.tmp, ignore_errors=True)
        raise self._write_failed(error or OSError("the write failed on another rank"))

    def _write_failed(self, exc: BaseException) -> CheckpointError:
        cause = find_cause(exc, OSError)
        previous = list_checkpoints(self.directory)
        if cause is not None and cause.errno == errno.ENOSPC:
            if not previous:  # the first checkpoint: nothing to resume from yet
                return CheckpointError(
                    f"no space left on device writing the first checkpoint into "
                    f"{self.directory}; free space there (or choose a run_dir on a larger "
                    "disk) and rerun: training starts over, as no checkpoint was written"
                )
            needed = sum(f.stat().st_size for f in previous[-1].rglob("*") if f.is_file())
            return CheckpointError(
                f"no space left on device writing a checkpoint into {self.directory} (it needs "
                f"about {needed / 2**20:.0f} MiB, the size of the last one, while the last one "
                "is kept); free that much there (or move the run to a larger disk), then rerun "
                f"to resume from {previous[-1]}"
            )
        return CheckpointError(
            f"writing a checkpoint into {self.directory} failed ({one_line(cause or exc)}); "
            + ("the previous checkpoint is untouched" if previous else "no checkpoint was written")
        )

    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            **asdict(self.state),
            "world_size": self.engine.world_size,
            "engine": self.engine.name,
            "scheduler": scheduler_position(self.scheduler),
            "engine_state": _jsonable(self.engine.state_dict()),
            HOOKS_META: _jsonable({name: h.state_dict() for name, h in self.hooks.items()}),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **self.describe(),
        }

    def load(self, path: Path) -> TrainState:
        """Restore every object this manager was built with from ``path``; the position."""
        meta = read_meta(path)
        require_intact(path)  # sizes against the manifest, before torch reads a byte
        engine = self.engine
        engine.load_model_and_optimizer(path, meta)
        engine.load_state_dict(meta.get("engine_state", {}))
        restore_scheduler_position(self.scheduler, meta["scheduler"])
        own_rng = rng_file(path, engine.rank)
        if meta.get("world_size") == engine.world_size and own_rng.is_file():
            restore_rng(load_tensor_file(own_rng, "RNG state file"))
        else:
            log.warning(
                "checkpoint %s was written by %s process(es), this run has %d: resharded; RNG "
                "streams start fresh (training continues; bitwise replay needs the same count)",
                path,
                meta.get("world_size"),
                engine.world_size,
            )
        self.state.step, self.state.epoch = int(meta["step"]), int(meta["epoch"])
        self._resume_hooks(meta, path)
        self.last_saved = self.state.step
        return self.state

    def _resume_hooks(self, meta: dict[str, Any], path: Path) -> None:
        """Every hook's state back from ``meta.json`` (``{}`` for one it does not hold)."""
        states = meta.get(HOOKS_META, {})
        if not isinstance(states, dict) or not all(isinstance(s, dict) for s in states.values()):
            raise CheckpointError(
                f"checkpoint {path}: meta.json's '{HOOKS_META}' entry is not a mapping of hook "
                "states; the checkpoint is damaged: resume from another one"
            )
        for name, hook in self.hooks.items():
            hook.resumed(self.state.step, states.get(name, {}))
            tensors = hook_file(path, name)
            hook.load_tensor_state(
                load_tensor_file(tensors, f"{name} state file") if tensors.is_file() else None
            )

    def _prune(self) -> None:
        found = list_checkpoints(self.directory)
        keep = set(found[-self.cadence.keep_last :])
        every = self.cadence.keep_every
        for path in found:
            if path in keep or (every and step_of(path) % every == 0):
                continue
            shutil.rmtree(path, ignore_errors=True)
        for leftover in self.directory.glob(".step_*.tmp"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)


# The schedule's shape (warmup, length) comes from the config, so a resumed run
# may extend it; a checkpoint restores only the position in it.
SCHEDULER_POSITION = ("last_epoch", "_step_count", "_last_lr")


def hook_file(folder: Path, name: str) -> Path:
    return folder / f"hook_{name}.pt"


def scheduler_position(scheduler: Scheduler) -> dict[str, Any]:
    state = scheduler.state_dict()
    return _jsonable({k: state[k] for k in SCHEDULER_POSITION if k in state})


def restore_scheduler_position(scheduler: Scheduler, position: dict[str, Any]) -> None:
    """The saved position over the scheduler's own state, through its ``load_state_dict``."""
    scheduler.load_state_dict({**scheduler.state_dict(), **position})


def _jsonable(value: Any) -> Any:
    """Scheduler/scaler states hold only numbers, lists and dicts; tensors become floats."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value
