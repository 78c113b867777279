"""Signed checkpoints: with a key, only checkpoints signed by it are read."""

from __future__ import annotations

import json

import pytest

from selfsup.cli import main
from selfsup.errors import CheckpointError
from selfsup.pipelines.checkpoint.folders import find_latest
from selfsup.pipelines.checkpoint.manifest import write_manifest
from selfsup.pipelines.config import load_config
from selfsup.pipelines.train.trainer import train

KEY = "0123456789abcdef0123456789abcdef"
SHARD = "__0_0.distcp"


@pytest.fixture
def signed_run(tiny_overrides, monkeypatch):
    monkeypatch.setenv("SELFSUP_CHECKPOINT_KEY", KEY)
    run = train(load_config(None, tiny_overrides)).run_dir
    return run, find_latest(run / "checkpoints")


def refused(capsys, args: list[str], expected: str) -> None:
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err


def test_signed_unsigned_and_wrong_key(signed_run, tiny_overrides, monkeypatch, capsys, tmp_path):
    run, latest = signed_run
    signature = json.loads((latest / "manifest.json").read_text())["signature"]
    assert signature["algorithm"] == "HMAC-SHA256" and len(signature["mac"]) == 64
    assert "meta.json" in json.loads((latest / "manifest.json").read_text())["files"]
    assert main(["checkpoint", "verify", str(run)]) == 0
    assert "signed with this key" in capsys.readouterr().out
    assert main(["checkpoint", "inspect", str(run)]) == 0
    assert "signed with this key" in capsys.readouterr().out
    # A key file works as the variable does.
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    monkeypatch.delenv("SELFSUP_CHECKPOINT_KEY")
    monkeypatch.setenv("SELFSUP_CHECKPOINT_KEY_FILE", str(key_file))
    assert main(["checkpoint", "verify", str(run)]) == 0
    # Another key: refused by every reader, resume included.
    monkeypatch.setenv("SELFSUP_CHECKPOINT_KEY_FILE", str(tmp_path / "missing"))
    refused(capsys, ["checkpoint", "verify", str(run)], "cannot be read")
    monkeypatch.delenv("SELFSUP_CHECKPOINT_KEY_FILE")
    monkeypatch.setenv("SELFSUP_CHECKPOINT_KEY", "another key of 32 bytes, at least")
    for args in (["checkpoint", "verify", str(run)],
                 ["checkpoint", "export", str(latest), str(tmp_path / "b.pt")]):  # fmt: skip
        refused(capsys, args, "it was signed with another key")
    with pytest.raises(CheckpointError, match="signed with another key"):
        train(load_config(None, [*tiny_overrides, "train.max_steps=9"]))
    monkeypatch.setenv("SELFSUP_CHECKPOINT_KEY", "short")
    refused(capsys, ["checkpoint", "verify", str(run)], "use at least 16 random bytes")
    # No key: read as before; inspect says it is signed but could not check.
    monkeypatch.delenv("SELFSUP_CHECKPOINT_KEY")
    assert main(["checkpoint", "inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "signed (key id" in out and "not checked: no SELFSUP_CHECKPOINT_KEY set" in out
    # An unsigned checkpoint, read with a key set: refused.
    write_manifest(latest)  # rewritten with no key: unsigned
    assert main(["checkpoint", "inspect", str(run)]) == 0
    assert "unsigned" in capsys.readouterr().out
    monkeypatch.setenv("SELFSUP_CHECKPOINT_KEY", KEY)
    refused(capsys, ["checkpoint", "verify", str(run)], "unsigned, and SELFSUP_CHECKPOINT_KEY")


def test_a_tampered_shard_is_refused_with_or_without_a_recomputed_manifest(
    signed_run, tiny_overrides, capsys, tmp_path, monkeypatch
):
    run, latest = signed_run
    shard = latest / SHARD
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF  # same size, other bytes: only the hash sees it
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"damaged \(altered \(SHA-256 differs\) __0_0"):
        train(load_config(None, [*tiny_overrides, "train.max_steps=9"]))  # hashes checked
    # The attacker re-lists the files without the key (or with a key of their own).
    with monkeypatch.context() as attacker:
        attacker.delenv("SELFSUP_CHECKPOINT_KEY")
        write_manifest(latest)
    refused(capsys, ["checkpoint", "verify", str(run)], "it is unsigned")
    manifest = json.loads((latest / "manifest.json").read_text())
    manifest["signature"] = {"algorithm": "HMAC-SHA256", "key_id": "x", "mac": "0" * 64}
    (latest / "manifest.json").write_text(json.dumps(manifest))
    refused(capsys, ["checkpoint", "verify", str(run)], "signed with another key")
    from selfsup.pipelines.checkpoint.signing import key_id

    manifest["signature"]["key_id"] = key_id(KEY.encode())  # the right id, a forged MAC
    (latest / "manifest.json").write_text(json.dumps(manifest))
    for args in (["checkpoint", "verify", str(run)],
                 ["checkpoint", "export", str(latest), str(tmp_path / "b.pt")],
                 ["probe", str(latest), "--no-baseline", "train_samples=20"]):  # fmt: skip
        refused(capsys, args, "its manifest does not match its signature")
    with pytest.raises(CheckpointError, match="does not match its signature"):
        train(load_config(None, [*tiny_overrides, "train.max_steps=9"]))
