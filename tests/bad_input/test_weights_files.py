"""Bad backbone files (``.pt`` and safetensors) in every command and config slot that reads one."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from helpers.bad_input import Ctx, Row, check_row, replace, torch_bytes
from helpers.payloads import TouchesSentinel, plain_payload, poison_zip_pickle


def _copy(ctx: Ctx, name: str = "backbone.pt") -> bytes:
    return (ctx.run / name).read_bytes()


def _payload(ctx: Ctx) -> dict:
    return torch.load(ctx.run / "backbone.pt", weights_only=True)


def _disguised_zip(ctx: Ctx) -> bytes:
    path = ctx.scratch / "poisoned.tmp"
    shutil.copy(ctx.run / "backbone.pt", path)
    poison_zip_pickle(path, ctx.sentinel)
    data = path.read_bytes()
    path.unlink()
    return data


def _legacy_payload(ctx: Ctx) -> bytes:
    return torch_bytes({**_payload(ctx), "x": TouchesSentinel(ctx.sentinel)}, legacy=True)


def _polyglot(ctx: Ctx) -> bytes:
    return torch_bytes({"x": TouchesSentinel(ctx.sentinel)}, legacy=True) + _copy(ctx)


def _header(change) -> object:
    def make(ctx: Ctx) -> bytes:
        payload = _payload(ctx)
        change(payload)
        return torch_bytes(payload)

    return make


def _safetensors(metadata: dict | None, truncate: bool = False):
    def make(ctx: Ctx) -> bytes:
        from safetensors.torch import save

        data = save(_payload(ctx)["state_dict"], metadata=metadata)
        return data[: len(data) // 2] if truncate else data

    return make


def _resnet50_header(payload: dict) -> None:
    payload["backbone"]["name"] = "resnet50"  # the tensors stay a resnet18's


def _huge_safetensors_header(ctx: Ctx) -> bytes:
    return struct.pack("<Q", 1 << 40) + b"{}"


# Each kind of bad file, and what its one line must say.
FILES: dict[str, tuple[object, str]] = {
    "plain pickle payload": (lambda c: plain_payload(c.sentinel), "it carries code"),
    "disguised zip payload": (_disguised_zip, "it carries code"),
    "legacy-format payload": (_legacy_payload, "it carries code"),
    "polyglot legacy+zip": (_polyglot, "it carries code"),
    "truncated zip": (lambda c: _copy(c)[: len(_copy(c)) // 2], "truncated"),
    "empty file": (lambda c: b"", "is not a weights file"),
    "random bytes": (lambda c: b"\x80" + bytes(range(256)) * 4, "is not a readable"),
    "text file": (lambda c: b"hello, not weights\n", "is not a weights file"),
    "weights without a header": (lambda c: torch_bytes({"w": torch.ones(2)}), "not a selfsup"),
    "header missing backbone": (_header(lambda p: p.pop("backbone")), "damaged header"),
    "backbone name of wrong type": (
        _header(lambda p: p["backbone"].update(name=5)),
        "damaged header",
    ),
    "image size of a billion": (_header(lambda p: p.update(image_size=10**9)), "damaged header"),
    "mean of two numbers": (_header(lambda p: p.update(mean=[0.5, 0.5])), "damaged header"),
    "mean as text": (_header(lambda p: p.update(mean="abc")), "damaged header"),
    "unknown backbone name": (
        _header(lambda p: p["backbone"].update(name="resnet9000")),
        "resnet9000",
    ),
    "header of another architecture": (_header(_resnet50_header), "does not hold the resnet50"),
    "state_dict of text": (
        _header(lambda p: p.update(state_dict={"conv1.weight": "x"})),
        "holds no valid state_dict",
    ),
    "safetensors without selfsup header": (_safetensors(None), "holds no selfsup header"),
    "safetensors with a header of wrong type": (
        _safetensors({"format": "selfsup.backbone/1", "selfsup": json.dumps([1, 2])}),
        "holds no selfsup header",
    ),
    "truncated safetensors": (
        _safetensors({"format": "selfsup.backbone/1", "selfsup": "{}"}, truncate=True),
        "is not a readable safetensors file",
    ),
    "safetensors claiming a terabyte header": (
        _huge_safetensors_header,
        "is not a readable safetensors file",
    ),
}


def _symlink_out(ctx: Ctx):
    link = ctx.scratch / "w.pt"
    link.symlink_to("/etc/passwd")
    return link


def _target(ctx: Ctx, kind: str):
    if kind == "symlink to /etc/passwd":
        return _symlink_out(ctx)
    make, _ = FILES[kind]
    name = "w.safetensors" if "safetensors" in kind else "w.pt"
    return replace(ctx.scratch / name, make(ctx))  # type: ignore[operator]


FILES["symlink to /etc/passwd"] = (None, "is not a weights file")

# Every command and config slot that reads a backbone file.
COMMANDS = {
    "probe": lambda c, w: ["probe", str(w), "--no-baseline"],
    "export": lambda c, w: ["checkpoint", "export", str(w), str(c.scratch / "out.pt")],
    "inspect": lambda c, w: ["checkpoint", "inspect", str(w)],
    "teacher": lambda c, w: c.train_elsewhere("method.name=distill", f"method.teacher={w}"),
    "init_weights": lambda c, w: c.train_elsewhere(f"model.init_weights={w}"),
    "finetune": lambda c, w: ["finetune", str(w), "--datasets", "cifar10", f"--out={c.out}"],
    "prune": lambda c, w: ["prune", str(w), "--target", "0.5", "--out", str(c.out / "p.pt")],
}
# Every kind in the first four; the hostile and header kinds in the other three too.
EVERYWHERE = ("probe", "export", "inspect", "teacher")
HOSTILE = (
    "plain pickle payload", "legacy-format payload", "polyglot legacy+zip", "truncated zip",
    "header missing backbone", "header of another architecture", "safetensors without selfsup "
    "header", "symlink to /etc/passwd",
)  # fmt: skip

ROWS: dict[str, tuple[str, str]] = {}
for kind in FILES:
    for command in COMMANDS:
        if command in EVERYWHERE or kind in HOSTILE:
            ROWS[f"{command}: {kind}"] = (command, kind)


def _row(command: str, kind: str) -> Row:
    return (lambda ctx: COMMANDS[command](ctx, _target(ctx, kind)), FILES[kind][1])


@pytest.mark.parametrize("row", sorted(ROWS))
def test_a_bad_weights_file_is_one_line_and_changes_nothing(row, ctx, capsys):
    check_row(_row(*ROWS[row]), ctx, capsys)
