"""Files that carry code: every reader refuses them with one line, and the code never runs.

Each payload would create a sentinel file when unpickled. It comes twice:
plainly (the pickle *is* the payload) and disguised (it runs, then returns
the real content, so a reader that unpickles it would carry on normally).
The manifest is rewritten after the tampering, as a careful attacker would,
so what refuses the file is the code check, not the hash check.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.payloads import TouchesSentinel, disguised, plain_payload, poison_zip_pickle

from selfsup.cli import main
from selfsup.errors import CheckpointError
from selfsup.pipelines.checkpoint.dcp_io import SafeLoadPlanner
from selfsup.pipelines.checkpoint.manifest import write_manifest
from selfsup.pipelines.config import load_config
from selfsup.pipelines.data.datasets import read_cifar10_pickle
from selfsup.pipelines.train.trainer import train
from selfsup.safe_pickle import CodeInPickle


@pytest.fixture
def sentinel(tmp_path):
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a payload ran"


def test_the_payloads_do_run_under_plain_pickle(tmp_path, monkeypatch):
    # The control: unpickled naively, both payloads create the sentinel, and the
    # disguised one still returns the real content (the suite's guard stands aside).
    monkeypatch.setenv("SELFSUP_ALLOW_UNSAFE_LOAD", "1")
    first, second = tmp_path / "a", tmp_path / "b"
    pickle.loads(plain_payload(first))
    assert pickle.loads(disguised(pickle.dumps({"real": 1}), second)) == {"real": 1}
    assert first.exists() and second.exists()
    buffer = io.BytesIO()
    torch.save({"real": torch.ones(2)}, buffer)
    third = tmp_path / "c.pt"
    third.write_bytes(buffer.getvalue())
    poison_zip_pickle(third, tmp_path / "d")
    assert torch.equal(torch.load(third, weights_only=False)["real"], torch.ones(2))
    assert (tmp_path / "d").exists()


def test_the_suites_guard_records_and_refuses_unsafe_loads_in_child_processes(tmp_path):
    # Every process the suite starts inherits the guard (conftest.install_load_guard).
    log = tmp_path / "unsafe.log"
    env = {**os.environ, "SELFSUP_UNSAFE_LOAD_LOG": str(log)}
    weights = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, weights)
    for code, names in (
        (f"import torch; torch.load({str(weights)!r}, weights_only=True)", None),
        (f"import torch; torch.load({str(weights)!r}, weights_only=False)", "_rebuild_tensor"),
        (f"import pickle; pickle.load(open({str(weights)!r}, 'rb'))", "pickle.load("),
    ):
        log.write_text("")
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
        assert (done.returncode == 0) == (names is None), done.stderr
        assert (names or "") in log.read_text() and bool(log.read_text()) == bool(names)


@pytest.fixture
def run(tiny_overrides):
    """A finished tiny run with checkpoints at steps 3 and 6."""
    return train(load_config(None, tiny_overrides)).run_dir


def tamper(folder: Path, name: str, how: str, sentinel: Path) -> None:
    path = folder / name
    if how == "plain":
        path.write_bytes(plain_payload(sentinel))
    elif path.read_bytes()[:2] == b"PK":
        poison_zip_pickle(path, sentinel)
    else:
        path.write_bytes(disguised(path.read_bytes(), sentinel))
    write_manifest(folder)  # the attacker covers the tracks


READERS = {
    "inspect": lambda run, out: ["checkpoint", "inspect", str(run)],
    "verify": lambda run, out: ["checkpoint", "verify", str(run)],
    "export": lambda run, out: ["checkpoint", "export", str(run), str(out / "b.pt")],
    "probe": lambda run, out: [  # the checkpoint itself: a finished run probes backbone.pt
        "probe",
        str(run / "checkpoints" / "step_000000006"),
        "--datasets",
        "cifar10",
        "--no-baseline",
        "train_samples=20",
        "test_samples=20",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["plain", "disguised"])
@pytest.mark.parametrize("name", [".metadata", "rng_rank0.pt"])
def test_tampered_checkpoint_files_are_refused_by_every_reader(
    run, name, how, sentinel, capsys, tiny_overrides, tmp_path
):
    latest = run / "checkpoints" / "step_000000006"
    tamper(latest, name, how, sentinel)
    readers = dict(READERS)
    if name != ".metadata":  # RNG files: read by resume, and checked by inspect and verify
        readers = {k: v for k, v in READERS.items() if k in ("inspect", "verify")}
    for reader, args in readers.items():
        code = main(args(run, tmp_path))
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, (reader, err)
        assert f"refusing {latest / name}: it carries code" in err, (reader, err)
    # Resume: a longer schedule from the tampered checkpoint.
    with pytest.raises(CheckpointError, match=f"refusing {latest / name}: it carries code"):
        train(load_config(None, [*tiny_overrides, "train.max_steps=9"]))


@pytest.mark.parametrize("how", ["plain", "disguised"])
def test_a_tampered_backbone_file_is_refused(run, how, sentinel, capsys, tmp_path):
    backbone = run / "backbone.pt"
    if how == "plain":
        backbone.write_bytes(plain_payload(sentinel))
    else:
        poison_zip_pickle(backbone, sentinel)
    for args in (
        ["probe", str(backbone)],
        ["checkpoint", "export", str(backbone), str(tmp_path / "x.pt")],
    ):
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2 and f"refusing {backbone}: it carries code" in err, err


@pytest.mark.parametrize("how", ["plain", "disguised"])
def test_a_tampered_cifar_batch_is_refused(data_root, how, sentinel, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(data_root / "cifar-10-batches-py", folder)
    batch = folder / "data_batch_1"
    real = batch.read_bytes()
    batch.write_bytes(plain_payload(sentinel) if how == "plain" else disguised(real, sentinel))
    with pytest.raises(Exception, match=f"refusing {batch}: it carries code"):
        read_cifar10_pickle(folder, "train")


def test_a_code_carrying_entry_in_a_dcp_shard_is_refused(sentinel):
    # Non-tensor entries of DCP shards (optimizer step counts, param groups)
    # are torch.save'd objects; DCP's own planner loads them with weights_only=False.
    buffer = io.BytesIO()
    torch.save(TouchesSentinel(sentinel), buffer)
    buffer.seek(0)
    with pytest.raises(CodeInPickle, match="it asks to call builtins.exec"):
        SafeLoadPlanner().load_bytes(None, buffer)
