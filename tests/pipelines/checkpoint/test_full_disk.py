"""A full disk: one line naming the folder and the space needed, the previous checkpoint intact."""

import subprocess

import pytest

from selfsup.cli import main
from selfsup.pipelines.checkpoint.folders import list_checkpoints
from selfsup.pipelines.checkpoint.tools import verify_checkpoint


@pytest.fixture
def small_disk(tmp_path):
    """A 130 MiB tmpfs: room for one checkpoint of the tiny run (about 86 MiB), not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=130m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()}); needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_gives_one_line_and_keeps_the_previous_checkpoint(
    small_disk, tiny_overrides, tmp_path, capsys
):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: tiny\n")
    run = small_disk / "run"
    overrides = [o for o in tiny_overrides if not o.startswith("output_dir=")]
    code = main(
        ["train", str(recipe), *overrides, f"run_dir={run}", "optim.name=sgd",
         "checkpoint.every_steps=1", "train.max_steps=3", "train.log_every=1"]
    )  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("selfsup: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"no space left on device writing a checkpoint into {run / 'checkpoints'}" in lines[0]
    assert "MiB, the size of the last one" in lines[0] and "step_000000001" in lines[0]
    (kept,) = list_checkpoints(run / "checkpoints")
    assert kept.name == "step_000000001" and "intact" in verify_checkpoint(kept)
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the partial write is gone
