"""A full disk: one line naming the folder and the space needed, the previous checkpoint intact."""

import subprocess
from pathlib import Path

import pytest

from selfsup.cli import main
from selfsup.pipelines.checkpoint.folders import list_checkpoints
from selfsup.pipelines.checkpoint.tools import verify_checkpoint


def mount_tmpfs(mount: Path, size: str) -> None:
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()}); needs root")


@pytest.fixture
def small_disk(tmp_path):
    """A 130 MiB tmpfs: room for one checkpoint of the tiny run (about 86 MiB), not two."""
    mount = tmp_path / "disk"
    mount_tmpfs(mount, "130m")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def full_disk(tmp_path):
    """A 4 MiB tmpfs, filled up: no room for anything."""
    mount = tmp_path / "full"
    mount_tmpfs(mount, "4m")
    try:
        with (mount / "filler").open("wb") as fh:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
    except OSError:
        pass
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("async_save", [False, True], ids=["synchronous", "background"])
def test_a_full_disk_gives_one_line_and_keeps_the_previous_checkpoint(
    async_save, small_disk, tiny_overrides, tmp_path, capsys
):
    """In the background too: the failed write is reported at the next step, which stops."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: tiny\n")
    run = small_disk / "run"
    overrides = [o for o in tiny_overrides if not o.startswith("output_dir=")]
    code = main(
        ["train", str(recipe), *overrides, f"run_dir={run}", "optim.name=sgd",
         "checkpoint.every_steps=1", "train.max_steps=3", "train.log_every=1",
         f"checkpoint.async_save={str(async_save).lower()}"]
    )  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("selfsup: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"no space left on device writing a checkpoint into {run / 'checkpoints'}" in lines[0]
    assert "MiB, the size of the last one" in lines[0] and "step_000000001" in lines[0]
    (kept,) = list_checkpoints(run / "checkpoints")
    assert kept.name == "step_000000001" and "intact" in verify_checkpoint(kept)
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the partial write is gone


def test_a_disk_too_small_for_the_first_checkpoint_gives_one_line(tmp_path, tiny_overrides, capsys):
    mount = tmp_path / "tiny"
    mount_tmpfs(mount, "40m")  # the run's log and config fit, its first checkpoint does not
    try:
        run = mount / "run"
        overrides = [o for o in tiny_overrides if not o.startswith("output_dir=")]
        code = main(["train", "configs/demo.yaml", *overrides, f"run_dir={run}",
                     "checkpoint.every_steps=1", "train.max_steps=2"])  # fmt: skip
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("selfsup: error:")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert "no space left on device writing the first checkpoint" in lines[0]
        assert "training starts over" in lines[0]
        assert not list((run / "checkpoints").glob("*step_*")), "no partial checkpoint left"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def writers(run: Path, place: Path) -> dict[str, list[str]]:
    """Every command that writes a file a user names, writing into ``place``."""
    return {
        "export": ["checkpoint", "export", str(run), str(place / "b.pt")],
        "export safetensors": ["checkpoint", "export", str(run), str(place / "b.safetensors")],
        "prune": ["prune", str(run), "--target", "0.5", "--out", str(place / "p.pt")],
        "probe": ["probe", str(run), "--no-baseline", f"--out={place / 'report'}",
                  "train_samples=20", "test_samples=20", "epochs=1"],
    }  # fmt: skip


def assert_one_line_each(commands: dict[str, list[str]], expected: str, capsys) -> None:
    for name, args in commands.items():
        capsys.readouterr()
        code = main(args)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("selfsup: error:")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (name, err[-2000:])
        assert expected in lines[0], (name, lines[0])


def test_export_prune_and_probe_on_a_full_disk_give_one_line_and_no_partial_file(
    full_disk, tiny_overrides, capsys
):
    from selfsup.pipelines.config import load_config
    from selfsup.pipelines.train.trainer import train

    run = train(load_config(None, tiny_overrides)).run_dir
    assert_one_line_each(writers(run, full_disk), "No space left on device", capsys)
    left = sorted(p.name for p in full_disk.rglob("*") if p.is_file() and p.name != "filler")
    assert not left, f"partial outputs left: {left}"


def test_a_read_only_place_gives_one_line_for_every_command(tmp_path, tiny_overrides, capsys):
    from selfsup.pipelines.config import load_config
    from selfsup.pipelines.train.trainer import train

    run = train(load_config(None, tiny_overrides)).run_dir
    frozen = tmp_path / "frozen"
    mount_tmpfs(frozen, "1m,ro")  # root ignores file modes: a read-only mount binds it too
    try:
        overrides = [o for o in tiny_overrides if not o.startswith("output_dir=")]
        commands = writers(run, frozen)
        commands["train"] = ["train", "configs/demo.yaml", *overrides, f"run_dir={frozen / 'r'}"]
        assert_one_line_each(commands, "Read-only file system", capsys)
    finally:
        subprocess.run(["umount", "-l", str(frozen)], check=False)
