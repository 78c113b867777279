"""Bad files inside a checkpoint folder, read by inspect, verify, export, probe and resume."""

from __future__ import annotations

import pytest
from helpers.bad_input import Ctx, Row, check_row, edit_json, replace, torch_bytes
from helpers.payloads import TouchesSentinel, disguised, plain_payload

from selfsup.cli import main
from selfsup.pipelines.checkpoint.manifest import write_manifest


def _damage(name: str, make, relist: bool = True):
    """Replace ``name`` in the latest checkpoint; re-list the manifest as an attacker would."""

    def damage(ctx: Ctx) -> None:
        path = ctx.latest / name
        replace(path, make(ctx, path))
        if relist:
            write_manifest(ctx.latest)

    return damage


def _meta(change):
    """Edit meta.json and re-list the manifest (it covers meta.json), as an attacker would."""

    def damage(ctx: Ctx) -> None:
        edit_json(ctx.latest / "meta.json", change)
        write_manifest(ctx.latest)

    return damage


def _manifest(change):
    return lambda ctx: edit_json(ctx.latest / "manifest.json", change)


def _set(key, value):
    return lambda values: values.__setitem__(key, value)


def _first_entry(key, value):
    def change(values):
        first = next(iter(values["files"]))
        values["files"][first][key] = value

    return change


def _rename_entry(new_name):
    def change(values):
        first = next(iter(values["files"]))
        values["files"][new_name] = values["files"].pop(first)

    return change


def _latest_link(target: str):
    def damage(ctx: Ctx) -> None:
        latest = ctx.run / "checkpoints" / "latest"
        latest.unlink()
        latest.symlink_to(target)

    return damage


def _remove(name: str):
    return lambda ctx: (ctx.latest / name).unlink()


def _shard(ctx: Ctx):
    return next(ctx.latest.glob("*.distcp"))


def _truncate_shard(ctx: Ctx) -> None:
    shard = _shard(ctx)
    replace(shard, shard.read_bytes()[:1000])


def _flip_shard_byte(ctx: Ctx) -> None:
    shard = _shard(ctx)
    data = bytearray(shard.read_bytes())
    data[-64] ^= 0xFF
    replace(shard, bytes(data))


# What each damage does to the latest checkpoint, and what the one line must say.
DAMAGE: dict[str, tuple[object, str]] = {
    "meta.json without step": (_meta(lambda m: m.pop("step")), "meta.json lacks step"),
    "meta.json with step -7": (_meta(_set("step", -7)), "step"),
    "meta.json with step as text": (_meta(_set("step", "7")), "step"),
    "meta.json with a step of 10**30": (_meta(_set("step", 10**30)), "step"),
    "meta.json with world_size 0": (_meta(_set("world_size", 0)), "world_size"),
    "meta.json with epoch -1": (_meta(_set("epoch", -1)), "epoch"),
    "meta.json with an unknown engine": (_meta(_set("engine", "banana")), "engine"),
    "meta.json that is a list": (
        _damage("meta.json", lambda c, p: "[1, 2]"),
        "meta.json is not a mapping",
    ),
    "meta.json edited, manifest not": (
        lambda c: edit_json(c.latest / "meta.json", _set("step", 5)),
        "truncated or grown meta.json",
    ),
    "meta.json that is not JSON": (
        _damage("meta.json", lambda c, p: "{step: 6", relist=False),
        "meta.json",
    ),
    "empty meta.json": (_damage("meta.json", lambda c, p: "", relist=False), "meta.json"),
    "manifest entry outside the checkpoint": (
        _manifest(_rename_entry("../../../etc/passwd")),
        "names a file outside the checkpoint",
    ),
    "manifest entry with an absolute path": (
        _manifest(_rename_entry("/etc/passwd")),
        "names a file outside the checkpoint",
    ),
    "manifest entry with bytes as text": (_manifest(_first_entry("bytes", "9")), "valid 'bytes'"),
    "manifest entry without sha256": (
        _manifest(lambda m: m["files"][next(iter(m["files"]))].pop("sha256")),
        "valid 'sha256'",
    ),
    "manifest whose files are a list": (_manifest(_set("files", [1])), "manifest.json"),
    "manifest that is not JSON": (
        _damage("manifest.json", lambda c, p: "{", relist=False),
        "manifest.json",
    ),
    "rng file with a plain payload": (
        _damage("rng_rank0.pt", lambda c, p: plain_payload(c.sentinel)),
        "rng_rank0.pt: it carries code",
    ),
    "rng file with a disguised payload": (
        _damage("rng_rank0.pt", lambda c, p: disguised(b"\x80\x02}q\x00.", c.sentinel)),
        "rng_rank0.pt: it carries code",
    ),
    "rng file with a legacy payload": (
        _damage("rng_rank0.pt", lambda c, p: torch_bytes(TouchesSentinel(c.sentinel), True)),
        "rng_rank0.pt: it carries code",
    ),
    "truncated rng file": (
        _damage("rng_rank0.pt", lambda c, p: p.read_bytes()[:100]),
        "rng_rank0.pt",
    ),
    "DCP index with a payload": (
        _damage(".metadata", lambda c, p: plain_payload(c.sentinel)),
        ".metadata: it carries code",
    ),
    "DCP index disguised": (
        _damage(".metadata", lambda c, p: disguised(p.read_bytes(), c.sentinel)),
        ".metadata: it carries code",
    ),
    "truncated DCP index": (
        _damage(".metadata", lambda c, p: p.read_bytes()[:50]),
        ".metadata",
    ),
    "empty DCP index": (_damage(".metadata", lambda c, p: b""), ".metadata"),
    "truncated shard": (_truncate_shard, "truncated or grown"),
    "a shard with one byte altered": (_flip_shard_byte, "altered (SHA-256 differs)"),
    "missing shard": (lambda c: _shard(c).unlink(), "missing"),
}
# Sizes match: only hash checks (verify, or any reader with a checkpoint key) see it.
DAMAGE_HASH_ONLY = {"a shard with one byte altered"}
# checkpoint inspect reports a damaged file in its output (exit 0) rather than refusing.
INSPECT_REPORTS = {
    "a shard with one byte altered", "truncated shard", "missing shard",
    "meta.json edited, manifest not",
}  # fmt: skip

COMMANDS = {
    "inspect": lambda c: ["checkpoint", "inspect", str(c.run)],
    "verify": lambda c: ["checkpoint", "verify", str(c.run)],
    "export": lambda c: ["checkpoint", "export", str(c.latest), str(c.scratch / "b.pt")],
    "resume": lambda c: c.train("train.max_steps=9"),
}

ROWS = {
    f"{command}: {damage}": (command, damage)
    for damage in DAMAGE
    for command in COMMANDS
    if not (damage in DAMAGE_HASH_ONLY and command in ("export", "resume"))
    and not (damage in INSPECT_REPORTS and command == "inspect")
    and not (damage.startswith(("rng", "truncated rng")) and command == "export")  # not read
}


def _row(command: str, damage: str) -> Row:
    make, fragment = DAMAGE[damage]

    def make_args(ctx: Ctx) -> list[str]:
        make(ctx)  # type: ignore[operator]
        return COMMANDS[command](ctx)

    return make_args, fragment


@pytest.mark.parametrize("row", sorted(ROWS))
def test_a_damaged_checkpoint_is_one_line_and_changes_nothing(row, ctx, capsys):
    check_row(_row(*ROWS[row]), ctx, capsys)


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../etc"])
def test_a_latest_pointing_anywhere_is_ignored_without_echoing_it(target, ctx, capsys):
    latest = ctx.run / "checkpoints" / "latest"
    latest.unlink()
    if target.startswith("/"):
        latest.symlink_to(target)
    else:
        latest.write_text(target + "\n")
    assert main(["checkpoint", "verify", str(ctx.run)]) == 0  # the newest, found by scanning
    out = capsys.readouterr()
    assert "root:" not in out.out + out.err, "the file it links to was printed"
    assert "latest" in out.err and "ignored" in out.err
