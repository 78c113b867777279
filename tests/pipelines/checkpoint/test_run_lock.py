"""The run directory's lock: one holder, named when refused, stale locks taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from selfsup.pipelines.checkpoint.run_lock import LOCK_FILE, RunLock, RunLocked, read_holder


def write_lock(run_dir, **values):
    now = time.time()
    holder = {"host": socket.gethostname(), "pid": 1, "job_id": "", "started": now,
              "renewed": now, "lease_s": 120.0, "token": "theirs"} | values  # fmt: skip
    (run_dir / LOCK_FILE).write_text(json.dumps(holder))


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def test_a_second_start_is_refused_naming_the_holder_and_its_slurm_job(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with RunLock(tmp_path).acquire() as first:
        assert read_holder(tmp_path / LOCK_FILE) == first.holder
        with pytest.raises(RunLocked) as refused:
            RunLock(tmp_path).acquire()
    message = str(refused.value)
    assert "\n" not in message
    assert f"is in use by pid {first.holder.pid} on {socket.gethostname()} (SLURM job 4242)" in (
        message
    )
    assert "--wait-for-lock" in message
    assert not (tmp_path / LOCK_FILE).exists(), "released when the block ends"
    RunLock(tmp_path).acquire().release()  # free again


@pytest.mark.parametrize(
    "holder, reason",
    [
        ({"pid": "DEAD"}, "process DEAD is gone"),  # this host: its pid is checked
        ({"host": "node-that-died", "renewed": time.time() - 500}, "not renewed for"),
    ],
)
def test_a_stale_lock_is_taken_over_with_a_log_line(tmp_path, caplog, holder, reason):
    pid = dead_pid()
    holder = {k: pid if v == "DEAD" else v for k, v in holder.items()}
    write_lock(tmp_path, **holder)
    with caplog.at_level(logging.WARNING), RunLock(tmp_path).acquire() as lock:
        assert read_holder(tmp_path / LOCK_FILE).token == lock.holder.token
    assert "took over the stale lock of pid" in caplog.text
    assert reason.replace("DEAD", str(pid)) in caplog.text
    assert not list(tmp_path.glob(f"{LOCK_FILE}.*")), "no stale copy left behind"


def test_a_live_holder_on_another_host_keeps_its_lock_within_its_lease(tmp_path):
    write_lock(tmp_path, host="node-7", pid=1, job_id="77_3")
    with pytest.raises(RunLocked, match=r"pid 1 on node-7 \(SLURM job 77_3\)"):
        RunLock(tmp_path).acquire()


def test_an_empty_lock_file_counts_as_held_until_a_lease_has_passed(tmp_path):
    (tmp_path / LOCK_FILE).write_text("")  # a taker died between create and write
    with pytest.raises(RunLocked):
        RunLock(tmp_path).acquire()
    old = time.time() - 2 * RunLock.DEFAULT_LEASE_S

    os.utime(tmp_path / LOCK_FILE, (old, old))
    RunLock(tmp_path).acquire().release()


def test_waiting_for_the_lock_takes_it_when_the_holder_releases(tmp_path):
    holder = RunLock(tmp_path).acquire()
    threading.Timer(1.5, holder.release).start()
    started = time.monotonic()
    with RunLock(tmp_path).acquire(wait=True, wait_limit_s=60):
        assert time.monotonic() - started >= 1.0
    with holder, pytest.raises(RunLocked):  # a bounded wait ends in the refusal
        holder.acquire()
        RunLock(tmp_path).acquire(wait=True, wait_limit_s=1.5)


def test_the_holder_renews_its_lease_and_notices_when_it_was_taken_over(tmp_path):
    lock = RunLock(tmp_path, lease_s=0.4).acquire()
    first = read_holder(tmp_path / LOCK_FILE).renewed
    time.sleep(0.5)
    assert read_holder(tmp_path / LOCK_FILE).renewed > first  # renewed every lease/4
    write_lock(tmp_path, host="other", token="usurper")
    time.sleep(0.3)
    assert lock.lost
    lock.release()
    assert read_holder(tmp_path / LOCK_FILE).token == "usurper", "never deletes another's lock"
