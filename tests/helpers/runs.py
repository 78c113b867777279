"""Launching ``selfsup train`` in processes, killing them, comparing their checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from selfsup.pipelines.checkpoint.dcp_io import load_everything
from selfsup.pipelines.checkpoint.untrusted import load_deepspeed_file

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo.yaml")


def launch(
    nproc: int, overrides: list[str], torchrun: bool = True, config: str = DEMO
) -> subprocess.Popen:
    """``selfsup train CONFIG`` under torchrun, or (``torchrun=False``, one process) on its own."""
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    launcher = [
        "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
    ] if torchrun else []  # fmt: skip
    command = [sys.executable, *launcher, "-m", "selfsup", "train", config, *overrides]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def kill_all(process: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers at once (torchrun puts each worker in its own session)."""
    import psutil

    victims = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for victim in reversed(victims):  # workers first: nothing gets to react
        victim.send_signal(signal.SIGKILL)
    process.communicate()


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-4000:]
    return err


def kill_when(
    process: subprocess.Popen, path: Path, delay: float = 0.0, timeout: float = 600
) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-4000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)
    time.sleep(delay)
    kill_all(process)


def all_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint folder holds (model, optimizer, RNG), by a flat name."""
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{prefix}/{i}", v)

    if (checkpoint / ".metadata").exists():
        walk("dcp", load_everything(checkpoint))
    for file in sorted(checkpoint.glob("*.pt")):  # DeepSpeed's files and RNG
        walk(file.name, load_deepspeed_file(file))
    return flat


def assert_identical(a: Path, b: Path, ignore: tuple[str, ...] = ()) -> None:
    """Every tensor of two checkpoints equal, but those of the files named in ``ignore``
    (what one run has and the other has not: the online monitor's ``hook_monitor.pt``)."""
    ta, tb = all_tensors(a), all_tensors(b)
    ta, tb = ({k: v for k, v in t.items() if k.split("/")[0] not in ignore} for t in (ta, tb))
    assert ta.keys() == tb.keys()
    assert any("optim" in k for k in ta), "optimizer state is compared too"
    for key in ta:
        diff = (ta[key].double() - tb[key].double()).abs().max().item() if ta[key].numel() else 0.0
        assert diff == 0, f"{key} differs by {diff}"
