"""DeepSpeed checkpoint files that carry code: no command or config slot runs it.

DeepSpeed's readers call ``torch.load(weights_only=False)``; selfsup makes
those loads weights-only (one parser, nothing scanned first). The files come
in the two forms a scan-then-load design let through: torch's legacy
(non-zip) format, and a polyglot (a legacy pickle in front of an ordinary
zip: Python's ``zipfile`` sees the zip, torch reads the pickle). The
manifest is recomputed after the tampering, so the code check refuses them,
not the hash check.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.payloads import TouchesSentinel

from selfsup.cli import main
from selfsup.pipelines.checkpoint.folders import find_latest
from selfsup.pipelines.checkpoint.manifest import write_manifest
from selfsup.pipelines.checkpoint.untrusted import load_deepspeed_file

pytestmark = pytest.mark.slow

MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIM_STATES = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def legacy_with_payload(path: Path, sentinel: Path) -> None:
    """The real contents plus a payload, in torch's legacy format."""
    state = load_deepspeed_file(path)
    state["x"] = TouchesSentinel(sentinel)
    torch.save(state, path, _use_new_zipfile_serialization=False)


def polyglot_with_payload(path: Path, sentinel: Path) -> None:
    """A legacy pickle carrying the payload, in front of the real (zip) file."""
    buffer = io.BytesIO()
    torch.save({"x": TouchesSentinel(sentinel)}, buffer, _use_new_zipfile_serialization=False)
    path.write_bytes(buffer.getvalue() + path.read_bytes())


POISONS = {"legacy": legacy_with_payload, "polyglot": polyglot_with_payload}
# A resume starts DeepSpeed in a process of its own (~10 s): one per file, one per form.
RESUMED = {("legacy", MODEL_STATES), ("polyglot", OPTIM_STATES)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def deepspeed_run(tmp_path_factory, data_root):
    """A finished 4-step DeepSpeed ZeRO-2 run of one process (checkpoints at 2 and 4)."""
    pytest.importorskip("deepspeed")
    run = tmp_path_factory.mktemp("ds") / "run"
    args = [
        "train", str(Path(__file__).parent.parent / "configs" / "demo.yaml"), f"run_dir={run}",
        f"data.path={data_root / 'cifar-10-batches-py'}", "data.batch_size=16",
        "data.num_workers=0", "model.channels_last=false", "method.proj_hidden_dim=64",
        "method.proj_output_dim=32", "train.max_steps=4", "checkpoint.every_steps=2",
        "train.engine=deepspeed", "train.zero_stage=2", "optim.name=adamw",
        "optim.base_lr=0.001",
    ]  # fmt: skip
    done = in_own_process(args)  # DeepSpeed's engine starts once per process
    assert done.returncode == 0, done.stderr[-2000:]
    return run, args


def in_own_process(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "selfsup", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def readers(run: Path, checkpoint: Path, out: Path, data: Path) -> dict[str, list[str]]:
    """Every command and config slot that reads a checkpoint folder's weights."""
    demo = str(Path(__file__).parent.parent / "configs" / "demo.yaml")
    student = [
        f"data.path={data / 'cifar-10-batches-py'}", "data.batch_size=16", "data.num_workers=0",
        "model.channels_last=false", "train.max_steps=2",
    ]  # fmt: skip
    return {
        "export": ["checkpoint", "export", str(checkpoint), str(out / "b.pt")],
        "inspect": ["checkpoint", "inspect", str(checkpoint)],
        "verify": ["checkpoint", "verify", str(checkpoint)],
        "probe": ["probe", str(checkpoint), "--datasets", "cifar10", "--no-baseline",
                  f"--data={data}", "train_samples=20", "test_samples=20"],
        "finetune": ["finetune", str(checkpoint), "--datasets", "cifar10", f"--data={data}",
                     f"--out={out / 'ft'}", "epochs=1"],
        "prune": ["prune", str(checkpoint), "--target", "0.5", "--out", str(out / "p.pt")],
        "teacher": ["train", demo, f"run_dir={out / 'student'}", *student,
                    "method.name=distill", f"method.teacher={checkpoint}"],
        "init_weights": ["train", demo, f"run_dir={out / 'init'}", *student,
                         f"model.init_weights={checkpoint}"],
    }  # fmt: skip


def assert_refused(reader: str, code: int, stderr: str, file: Path) -> None:
    err = stderr.strip().splitlines()
    assert code == 2 and err, (reader, err)
    assert f"refusing {file}: it carries code" in err[-1], (reader, err)
    assert not any("Traceback" in line or "weights_only=False" in line for line in err)


@pytest.mark.parametrize("form", sorted(POISONS))
def test_deepspeed_files_with_code_are_refused_by_every_reader(
    deepspeed_run, form, tmp_path, data_root, capsys
):
    run, args = deepspeed_run
    checkpoint = find_latest(run / "checkpoints")
    assert checkpoint is not None
    keep = tmp_path / "original"
    keep.mkdir()
    sentinel = tmp_path / "PAYLOAD_RAN"
    for name in (MODEL_STATES, OPTIM_STATES):
        shutil.copy(checkpoint / name, keep / name)
        POISONS[form](checkpoint / name, sentinel)
        write_manifest(checkpoint)  # the attacker covers the tracks
        commands = readers(run, checkpoint, tmp_path, data_root)
        if name == OPTIM_STATES:  # only the resume and the checks read optimizer states
            commands = {k: commands[k] for k in ("inspect", "verify")}
        for reader, command in commands.items():
            code = main(command)
            assert_refused(reader, code, capsys.readouterr().err, checkpoint / name)
        if (form, name) in RESUMED:
            resumed = in_own_process([*args, "train.max_steps=6"])
            assert_refused("resume", resumed.returncode, resumed.stderr, checkpoint / name)
        shutil.copy(keep / name, checkpoint / name)
        write_manifest(checkpoint)
    assert not sentinel.exists(), "a payload ran"
    # The control: the restored checkpoint is read by the same commands.
    assert main(["checkpoint", "verify", str(checkpoint)]) == 0
    assert main(["checkpoint", "export", str(checkpoint), str(tmp_path / "ok.pt")]) == 0
