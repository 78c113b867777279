import os
import socket
import subprocess
import sys

from torch.distributed import DistBackendError

from selfsup.pipelines.runtime.distributed import Peer, detect_env, lost_peer_message


def test_torchrun_variables_win():
    env = detect_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.master_port, env.launcher) == (1, 4, 1234, "torchrun")


def test_an_srun_task_is_read_through_submitit(monkeypatch):
    slurm = {
        "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }  # fmt: skip
    for name in ("RANK", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    env = detect_env()
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (3, 1, 4, 2)
    assert env.master_addr == "gpu07" and env.launcher == "slurm"
    assert env.master_port == 20000 + 4242  # from the job id: the same in every task
    monkeypatch.setenv("MASTER_PORT", "29999")
    assert detect_env().master_port == 29999


def test_a_lone_process_and_the_batch_script_are_single():
    assert detect_env({}).launcher == "single"
    # Its own free port (two one-process DeepSpeed runs side by side), or MASTER_PORT.
    assert detect_env({}).master_port != 29500
    assert detect_env({"MASTER_PORT": "29613"}).master_port == 29613
    # The batch script of a 4-task job is one process (no step id): not distributed.
    assert not detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}).distributed


def test_a_lost_peer_is_named_from_the_error_or_by_elimination():
    peers = [Peer(0, "node1", "10.0.0.11"), Peer(1, "node2", "10.0.0.12"),
             Peer(2, "node3", "10.0.0.13")]  # fmt: skip
    closed = DistBackendError(
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Read error [10.0.0.13]:4830: "
        "Connection reset by peer. This is typically caused by a remote worker hanging"
    )
    line = lost_peer_message(closed, peers, me=0)
    assert line.startswith("lost rank 2 on node3 (10.0.0.13): a collective failed on rank 0 "
                           "(Read error [10.0.0.13]:4830: Connection reset by peer)")  # fmt: skip
    timed_out = RuntimeError(  # what gloo raises (not a DistError) when a peer is silent
        "[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation"
    )
    assert lost_peer_message(timed_out, peers[:2], me=1).startswith("lost rank 0 on node1")
    assert lost_peer_message(timed_out, peers, me=1).startswith("lost a peer rank:")
    assert lost_peer_message(ValueError("a bug"), peers, me=0) is None


SILENT_PEER = """
import sys, time, torch, torch.distributed as dist
from selfsup.pipelines.runtime.distributed import (
    DistEnv, Peer, init_process_group, lost_peer_message)
rank, port = int(sys.argv[1]), int(sys.argv[2])
env = DistEnv(rank=rank, world_size=2, master_addr="127.0.0.1", master_port=port)
init_process_group(env, torch.device("cpu"), timeout_s=3)
if rank == 1:
    time.sleep(60)  # alive, connected, silent: a hung or unreachable peer
started = time.monotonic()
try:
    dist.all_reduce(torch.ones(1))
except Exception as exc:
    peers = [Peer(0, "a", "127.0.0.1"), Peer(1, "b", "127.0.0.2")]
    print(f"{time.monotonic() - started:.1f}", lost_peer_message(exc, peers, 0))
"""


def test_a_silent_peer_fails_the_collective_within_the_timeout():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", SILENT_PEER, str(r), str(port)], env=env,
                              stdout=subprocess.PIPE, text=True) for r in (0, 1)]  # fmt: skip
    try:
        out, _ = ranks[0].communicate(timeout=60)
    finally:
        ranks[1].kill()
    waited, line = out.strip().split(" ", 1)
    assert 3.0 <= float(waited) < 8.0, out  # timeout_s=3, not gloo's default of 30 minutes
    assert line.startswith("lost rank 1 on b (127.0.0.2): a collective failed on rank 0"), out
