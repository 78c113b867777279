"""The bad-input suite's harness: each row damages a copy of a finished run, runs one command.

A row is ``(make_args, fragment)``: ``make_args(ctx)`` damages what it needs
(files of the run, files in ``ctx.scratch``) and returns the command's
arguments; ``fragment`` must be in the one error line. For every row:
exit status 2, exactly one line (``selfsup: error: ...``), no traceback,
no payload ran (``ctx.sentinel`` absent), and every input file (the run's
and the scratch folder's) byte-identical afterwards.

The copy of the run hard-links files over 1 MiB (checkpoint shards, weights)
and copies the rest: damage goes through :func:`replace`, which writes a new
file instead of changing the shared one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from selfsup.cli import main

REPO = Path(__file__).resolve().parent.parent.parent
DEMO = str(REPO / "configs" / "demo.yaml")
LATEST = Path("checkpoints") / "step_000000006"
_LINK_ABOVE = 1 << 20


@dataclass
class Ctx:
    run: Path  # a copy of a finished 6-step run (checkpoint at step 6, backbone files)
    scratch: Path  # an empty folder for the row's own files
    base: list[str]  # the run's overrides, without run_dir
    data_root: Path  # tiny CIFAR-10 / Fashion-MNIST / image folder

    @property
    def sentinel(self) -> Path:
        return self.scratch / "PAYLOAD_RAN"

    @property
    def out(self) -> Path:
        """Where a row's command may write (outside the snapshot)."""
        return self.scratch.parent / "out"

    @property
    def latest(self) -> Path:
        return self.run / LATEST

    def train(self, *extra: str) -> list[str]:
        """``selfsup train`` over this run (resume), with ``extra`` overrides."""
        return ["train", DEMO, *self.base, f"run_dir={self.run}", *extra]

    def train_elsewhere(self, *extra: str) -> list[str]:
        """``selfsup train`` of a new run beside the scratch folder (a student, say)."""
        return ["train", DEMO, *self.base, f"run_dir={self.out / 'new'}", *extra]


Row = tuple[Callable[[Ctx], list[str]], str]


def replace(path: Path, data: str | bytes) -> Path:
    """Write ``path`` as a new file (never through a hard link shared with the original run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    values = json.loads(path.read_text())
    change(values)
    replace(path, json.dumps(values))


def torch_bytes(obj: object, legacy: bool = False) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def copy_run(source: Path, target: Path) -> None:
    def link_or_copy(src: str, dst: str) -> None:
        if os.path.getsize(src) > _LINK_ABOVE:
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy, symlinks=True)


def snapshot(*folders: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_symlink():
                files[str(p)] = b"-> " + os.readlink(p).encode()
            elif p.is_file():
                files[str(p)] = p.read_bytes()
    return files


def check_row(row: Row, ctx: Ctx, capsys) -> None:
    make_args, fragment = row
    args = make_args(ctx)
    before = snapshot(ctx.run, ctx.scratch)
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err[-3000:])
    assert len(lines) == 1 and lines[0].startswith("selfsup: error:"), err[-3000:]
    assert "Traceback" not in err and fragment in lines[0], lines[0]
    assert "weights_only=False" not in err, lines[0]
    assert not ctx.sentinel.exists(), "a payload ran"
    after = snapshot(ctx.run, ctx.scratch)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"files changed or left behind: {changed[:5]}"
