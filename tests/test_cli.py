"""The command line: sub-commands, one-line errors for bad input, a fast --help."""

import os
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


MAE = str(REPO / "configs" / "mae_vit_tiny_cifar10.yaml")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["method.mask_ratio=1.0"], ["'method.mask_ratio' must be strictly between 0 and 1"]),
        (["method.mask_ratio=0"], ["'method.mask_ratio' must be strictly between 0 and 1"]),
        (["data.image_size=30"], ["image_size=30 is not divisible by model.patch_size=4"]),
        (["model.backbone=vit_smal"], ["unknown backbone 'vit_smal'", "'vit_small'"]),
        (["model.backbone=resnet18"], ["method.name=mae needs a ViT backbone"]),
    ],
)
def test_masked_recipe_bad_input_is_one_line(capsys, tmp_path, args, fragments):
    code, _, err = run_cli(capsys, "train", MAE, f"output_dir={tmp_path}", *args)
    assert_one_line_error(code, err, *fragments)
    assert not list(tmp_path.iterdir())  # refused before anything was written


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
        (lambda p: (p / "x.txt").write_text("x") and p / "x.txt", "is not a weights file"),
    ],
)
def test_probe_bad_paths(capsys, tmp_path, make, fragment):
    code, _, err = run_cli(capsys, "probe", str(make(tmp_path)))
    assert_one_line_error(code, err, fragment)


def test_report_lists_a_run_not_yet_evaluated(capsys, tmp_path):
    from selfsup.pipelines.config import RunConfig, save_config

    save_config(RunConfig(), tmp_path / "config.yaml")  # a run directory, not yet probed
    (tmp_path / "selfsup-run.json").write_text('{"format": "selfsup.run/1"}')
    code, out, err = run_cli(capsys, "report", str(tmp_path))
    assert code == 0, err
    assert f"{tmp_path.name}: not evaluated yet: run `selfsup probe {tmp_path.name}`" in out
    code, _, err = run_cli(capsys, "report", str(tmp_path / "elsewhere"))
    assert_one_line_error(code, err, "elsewhere does not exist")


@pytest.mark.ffcv
def test_data_write_and_inspect(capsys, tmp_path, data_root):
    out = tmp_path / "c.beton"
    code, stdout, err = run_cli(
        capsys, "data", "write", str(data_root / "cifar-10-batches-py"), str(out), "--workers", "1"
    )
    assert code == 0, err
    assert f"wrote {out}: 200 images, 10 classes (20-20 per class)" in stdout
    code, stdout, _ = run_cli(capsys, "data", "inspect", str(out))
    assert code == 0 and "200 images (200 jpg)" in stdout and "[20, 20," in stdout


@pytest.mark.ffcv
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--mode", "jpeg"], "unknown write mode 'jpeg' (ffcv calls JPEG mode 'jpg')"),
        (["--dataset", "cifar100"], "unknown dataset 'cifar100'"),
    ],
)
def test_data_write_bad_input(capsys, tmp_path, data_root, args, fragment):
    code, _, err = run_cli(
        capsys,
        "data",
        "write",
        str(data_root / "cifar-10-batches-py"),
        str(tmp_path / "x.beton"),
        *args,
    )
    assert_one_line_error(code, err, fragment)


def test_data_write_from_an_ambiguous_root(capsys, tmp_path, data_root):
    code, _, err = run_cli(capsys, "data", "write", str(data_root), str(tmp_path / "x.beton"))
    assert_one_line_error(code, err, "holds several datasets", "--dataset")


def without_ffcv(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI in a process where ``import ffcv`` fails, as on a machine without it."""
    code = (
        "import sys; sys.modules['ffcv'] = None\n"
        "from selfsup.cli import main\n"
        f"raise SystemExit(main({list(args)!r}))\n"
    )
    env = {**os.environ, "SELFSUP_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env
    )


def test_without_ffcv_loader_ffcv_is_one_clear_line(tiny_overrides, tmp_path):
    result = without_ffcv(
        "train", DEMO, *tiny_overrides, "data.loader=ffcv", f"data.beton={tmp_path}/x.beton"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "selfsup: error: ffcv is not installed" in result.stderr
    assert "scripts/install-ffcv.sh" in result.stderr
    result = without_ffcv(
        "data", "write", str(tmp_path), str(tmp_path / "x.beton"), "--dataset", "cifar10"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_without_ffcv_loader_auto_falls_back_with_one_log_line(tiny_overrides, tmp_path):
    result = without_ffcv(
        "train", DEMO, *tiny_overrides, "data.loader=auto", f"data.beton={tmp_path}/x.beton",
        "train.max_steps=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "using the torchvision loader" in line]
    assert len(lines) == 1 and "ffcv is not installed" in lines[0]


def test_without_deepspeed_engine_deepspeed_is_one_clear_line(tiny_overrides):
    code = (
        "import sys; sys.modules['deepspeed'] = None\n"
        "from selfsup.cli import main\n"
        f"raise SystemExit(main({['train', DEMO, *tiny_overrides, 'train.engine=deepspeed']!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "selfsup: error: train.engine=deepspeed needs DeepSpeed, which is not installed"
        in result.stderr
    )
    assert "pip install -e .[deepspeed]" in result.stderr


def test_output_to_a_closed_pipe_is_not_a_traceback():
    # `selfsup config keys | head -1`: the reader leaves before selfsup writes.
    exe = Path(sys.executable).with_name("selfsup")
    process = subprocess.Popen(
        [str(exe), "config", "keys"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
