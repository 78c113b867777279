"""One writer per run directory: a lock file with a lease, safe on shared filesystems.

Two starts in one run directory (a requeued SLURM job whose previous instance
still writes, a second ``selfsup train`` typed by hand) would delete each
other's checkpoints. The run's rank 0 holds ``<run_dir>/selfsup.lock`` from
before it reads a checkpoint until the run ends:

- **Taking it** is one ``link()`` of a file already holding the holder's
  record to the lock's name, atomic on local disks, NFS and Lustre alike (it
  fails when the name exists), so a lock is never seen empty. ``flock`` and
  ``fcntl`` locks are not used: on NFS they depend on the lock daemon, and a
  lock held by a dead node's kernel is never released.
- **The file names its holder** (host, pid, SLURM job id, start) and a
  renewal time, rewritten every quarter lease by a thread of the holder
  (written to a temporary file, then renamed over the lock: readers never see
  a half-written lock).
- **A stale lock is taken over**, with a log line: its holder's process is
  gone (checked on its own host only: pids mean nothing across hosts), or it
  has not been renewed for a lease (``checkpoint.lock_lease_s``; a node that
  died). Hosts are expected to keep their clocks in step (NTP), as a cluster's
  do. The takeover renames the stale file away and checks that it moved the
  lock it judged; a fresh lock moved by a lost race is put back.
- A second start refuses in one line naming the holder, or with
  ``--wait-for-lock`` (``checkpoint.wait_for_lock``) polls until the lock is
  free or stale.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from selfsup.errors import CheckpointError

log = logging.getLogger(__name__)

LOCK_FILE = "selfsup.lock"
POLL_S = 1.0  # how often a waiting start looks at the lock again


class RunLocked(CheckpointError):
    """The run directory is locked by a live run."""


@dataclass
class Holder:
    """Who holds a run directory, as its lock file says."""

    host: str
    pid: int
    job_id: str  # SLURM job id (array job_task), or "" outside SLURM
    started: float
    renewed: float
    lease_s: float
    token: str  # this holder's random id: a lock is only ever released by its taker

    def describe(self) -> str:
        job = f" (SLURM job {self.job_id})" if self.job_id else ""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}{job}, since {since}"

    def stale_because(self, now: float) -> str | None:
        """Why this holder no longer holds the lock, or None while it does."""
        if self.host == socket.gethostname() and not _process_alive(self.pid):
            return f"process {self.pid} is gone"
        if now - self.renewed > self.lease_s:
            return f"not renewed for {now - self.renewed:.0f} s (lease {self.lease_s:g} s)"
        return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _job_id() -> str:
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID", "")


def read_holder(path: Path) -> Holder | None:
    """The lock's holder; None when there is no lock. A lock that is not one reads as stale."""
    try:
        values: Any = json.loads(path.read_text())
        return Holder(
            host=str(values["host"]),
            pid=int(values["pid"]),
            job_id=str(values.get("job_id", "")),
            started=float(values["started"]),
            renewed=float(values["renewed"]),
            lease_s=float(values["lease_s"]),
            token=str(values["token"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # Empty (its taker died between create and write), or not a lock:
        # stale once its file is a lease old (the default lease).
        try:
            modified = path.stat().st_mtime
        except FileNotFoundError:
            return None
        return Holder("?", -1, "", modified, modified, RunLock.DEFAULT_LEASE_S, "")


class RunLock:
    """The lock of one run directory, held from :meth:`acquire` to :meth:`release`."""

    DEFAULT_LEASE_S = 120.0

    def __init__(self, run_dir: Path, lease_s: float = DEFAULT_LEASE_S) -> None:
        if lease_s <= 0:
            raise CheckpointError(f"checkpoint.lock_lease_s must be > 0, got {lease_s}")
        self.path = run_dir / LOCK_FILE
        self.lease_s = lease_s
        now = time.time()
        self.holder = Holder(
            socket.gethostname(), os.getpid(), _job_id(), now, now, lease_s, uuid.uuid4().hex
        )
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost = False  # set when another start took the lock over

    def acquire(self, wait: bool = False, wait_limit_s: float | None = None) -> RunLock:
        """Take the lock (taking over a stale one); :class:`RunLocked` if a live run holds it."""
        deadline = None if wait_limit_s is None else time.monotonic() + wait_limit_s
        while not self._try_create():
            holder = read_holder(self.path)
            if holder is None:
                continue  # released just now
            reason = holder.stale_because(time.time())
            if reason is not None:
                self._take_over(holder, reason)
                continue
            if not wait or (deadline is not None and time.monotonic() > deadline):
                raise RunLocked(
                    f"run directory {self.path.parent} is in use by {holder.describe()}: wait "
                    "for that run to end (or pass --wait-for-lock), stop it, or choose another "
                    f"run_dir; a lock left by a dead run is taken over by itself ({self.path})"
                )
            time.sleep(POLL_S)
        self._renewer = threading.Thread(target=self._renew_loop, name="run-lock", daemon=True)
        self._renewer.start()
        return self

    def _try_create(self) -> bool:
        """Create the lock, contents included, in one step; False when it exists.

        The contents go to a file of this start's own first, which is then
        hard-linked to the lock's name: ``link`` fails when the name exists,
        atomically (NFS and Lustre included), so no reader ever sees an empty
        lock. Where hard links are not supported, ``O_CREAT | O_EXCL``.
        """
        staged = self.path.with_name(f"{LOCK_FILE}.{self.holder.token}.new")
        try:
            with staged.open("w") as fh:
                fh.write(json.dumps(asdict(self.holder)))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(staged, self.path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                return self._create_exclusively()
        except OSError as exc:
            raise CheckpointError(
                f"cannot create the lock file {self.path} ({exc.strerror}): make the run "
                "directory writable, or choose another run_dir"
            ) from None
        finally:
            staged.unlink(missing_ok=True)
        return True

    def _create_exclusively(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(asdict(self.holder)))
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _take_over(self, holder: Holder, reason: str) -> None:
        moved = self.path.with_name(f"{LOCK_FILE}.stale-{self.holder.token}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return  # another start took it over first
        now_moved = read_holder(moved)
        if now_moved is not None and now_moved.token != holder.token:
            # A race lost: another start replaced the stale lock since we read it.
            with contextlib.suppress(FileExistsError):
                os.link(moved, self.path)
            moved.unlink(missing_ok=True)
            return
        moved.unlink(missing_ok=True)
        log.warning("took over the stale lock of %s: %s", holder.describe(), reason)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            self.renew()

    def renew(self) -> None:
        """Rewrite the renewal time (atomically), unless another start has taken the lock."""
        current = read_holder(self.path)
        if current is None or current.token != self.holder.token:
            if not self.lost:
                log.error("lost the lock of %s to another start", self.path.parent)
            self.lost = True
            return
        self.holder.renewed = time.time()
        temporary = self.path.with_name(f"{LOCK_FILE}.{self.holder.token}.tmp")
        try:
            temporary.write_text(json.dumps(asdict(self.holder)))
            os.replace(temporary, self.path)
        except OSError as exc:  # a full or flaky disk: retried at the next renewal
            log.warning("could not renew the lock %s (%s)", self.path, exc.strerror)
            temporary.unlink(missing_ok=True)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=10)
        current = read_holder(self.path)
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
