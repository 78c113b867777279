import pytest

from selfsup.atomic import atomic_path, write_atomic


def test_write_replaces_the_whole_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    write_atomic(target, "new")
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    write_atomic(tmp_path / "c.bin", lambda fh: fh.write(b"by function"))
    assert target.read_text() == "new" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.bin").read_bytes() == b"by function"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def fails_halfway(fh):
        fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, fails_halfway)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("also half")
        raise RuntimeError("writer crashed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
