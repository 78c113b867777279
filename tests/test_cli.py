"""The command line: sub-commands, one-line errors for bad input, a fast --help."""

import subprocess
import sys
from pathlib import Path

import pytest

from selfsup.cli import main

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "configs" / "demo.yaml")


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("selfsup: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_does_not_import_torch():
    code = (
        "import sys; from selfsup.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "probe" in result.stdout and "report" in result.stdout


def test_console_script_entry_point_runs():
    exe = Path(sys.executable).with_name("selfsup")
    result = subprocess.run(
        [str(exe), "config", "show", DEMO, "train.epochs=7"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "epochs: 7" in result.stdout


def test_config_show_and_keys(capsys):
    code, out, _ = run_cli(capsys, "config", "show", DEMO, "optim.base_lr=0.25")
    assert code == 0 and "base_lr: 0.25" in out and "name: demo" in out
    code, out, _ = run_cli(capsys, "config", "keys")
    assert code == 0 and "optim.base_lr" in out.splitlines()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["optim.lrr=1"], ["unknown config key 'optim.lrr'", "did you mean 'optim.base_lr'"]),
        (["data.batch_size=abc"], ["'data.batch_size' expects an integer, got 'abc'"]),
        (["--data", "/nonexistent/cifar"], ["/nonexistent/cifar does not exist"]),
    ],
)
def test_train_bad_input_is_one_line(capsys, tmp_path, args, fragments):
    code, _, err = run_cli(capsys, "train", DEMO, f"output_dir={tmp_path}", *args)
    assert_one_line_error(code, err, *fragments)


def test_train_on_a_folder_of_the_wrong_format(capsys, tmp_path, data_root):
    code, _, err = run_cli(
        capsys, "train", DEMO, f"output_dir={tmp_path}", "--data", str(data_root / "FashionMNIST")
    )
    assert_one_line_error(code, err, "does not look like CIFAR-10")


def test_missing_config_file(capsys):
    code, _, err = run_cli(capsys, "train", "configs/nope.yaml")
    assert_one_line_error(code, err, "configs/nope.yaml does not exist")


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_is_named(capsys, tmp_path, datagen, tiny_overrides, workers):
    root = datagen.write_image_folder(tmp_path / "imgs", per_class=8, classes=2)
    broken = sorted((root / "train").rglob("*.JPEG"))[0]
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, _, err = run_cli(
        capsys, "train", DEMO, *tiny_overrides, "data.dataset=imagefolder", f"data.path={root}",
        "data.batch_size=16", f"data.num_workers={workers}",
    )  # fmt: skip
    assert_one_line_error(code, err, "cannot read image", broken.name, "delete or replace the file")


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: p / "missing_run", "does not exist"),
        (lambda p: p, "is not a selfsup run directory or checkpoint"),
        (lambda p: (p / "x.txt").write_text("x") and p / "x.txt", "not a torch weights file"),
    ],
)
def test_probe_bad_paths(capsys, tmp_path, make, fragment):
    code, _, err = run_cli(capsys, "probe", str(make(tmp_path)))
    assert_one_line_error(code, err, fragment)


def test_report_without_probe(capsys, tmp_path):
    code, _, err = run_cli(capsys, "report", str(tmp_path))
    assert_one_line_error(code, err, "report.json not found", "selfsup probe")
