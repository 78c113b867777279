"""Pickles that run code when unpickled: the hostile files of the tests."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path


class TouchesSentinel:
    """Unpickling this runs ``open(sentinel, "w")``: the shape of a real attack."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (exec, (f"open({str(self.sentinel)!r}, 'w').close()",))


def plain_payload(sentinel: Path) -> bytes:
    return pickle.dumps(TouchesSentinel(sentinel), protocol=2)


def disguised(real: bytes, sentinel: Path) -> bytes:
    """Runs the payload and drops its result, then unpickles to exactly what ``real`` holds.

    The prelude is ``getattr(Path(sentinel), "touch")()`` in pickle opcodes
    (protocol 0), followed by POP; the real pickle's own opcodes come after.
    """
    prelude = (
        b"cbuiltins\ngetattr\n(cpathlib\nPath\n(S'" + str(sentinel).encode() + b"'\ntR"
        b"S'touch'\ntR)R0"
    )
    return prelude + real


def poison_zip_pickle(path: Path, sentinel: Path) -> None:
    """Rewrite a torch.save zip with its data.pkl disguised (the tensors stay valid)."""
    with zipfile.ZipFile(path) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    name = next(n for n in entries if n.endswith("/data.pkl"))
    entries[name] = disguised(entries[name], sentinel)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for entry, data in entries.items():
            archive.writestr(entry, data)
