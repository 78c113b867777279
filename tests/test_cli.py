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


EXIT = "@@selfsup exited with "


def without_libraries(modules: tuple[str, ...], *commands: list[str]) -> list[tuple[int, str]]:
    """Each command through the CLI, in one process where importing ``modules`` fails (as on
    a machine without them): its exit status and what it wrote to stderr."""
    code = "\n".join([
        "import sys",
        *(f"sys.modules[{m!r}] = None" for m in modules),
        "from selfsup.cli import main",
        f"for command in {[list(c) for c in commands]!r}:",
        f"    print({EXIT!r} + str(main(command)), file=sys.stderr, flush=True)",
    ])  # fmt: skip
    env = {**os.environ, "SELFSUP_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # stderr: out0 EXIT s0 \n out1 EXIT s1 \n ...: part i+1 starts with command i's status.
    parts = result.stderr.split(EXIT)
    statuses = [int(part.partition("\n")[0]) for part in parts[1:]]
    outputs = [parts[0], *(part.partition("\n")[2] for part in parts[1:-1])]
    return list(zip(statuses, outputs, strict=True))


@pytest.mark.slow
def test_missing_optional_libraries_are_one_clear_line_each(tiny_overrides, tmp_path):
    """Without ffcv and DeepSpeed (one process: each start of Python costs seconds)."""
    beton = f"data.beton={tmp_path}/x.beton"
    train = ["train", DEMO, *tiny_overrides]
    outcomes = without_libraries(
        ("ffcv", "deepspeed"),
        [*train, "data.loader=ffcv", beton, f"run_dir={tmp_path}/a"],
        ["data", "write", str(tmp_path), str(tmp_path / "x.beton"), "--dataset", "cifar10"],
        [*train, "data.loader=auto", beton, "train.max_steps=1", f"run_dir={tmp_path}/b"],
        [*train, "train.engine=deepspeed", f"run_dir={tmp_path}/c"],
    )
    (ffcv_train, train_err), (ffcv_write, write_err), (auto, auto_err), (ds, ds_err) = outcomes
    assert ffcv_train == 2 and ffcv_write == 2 and auto == 0 and ds == 2
    assert "Traceback" not in train_err + write_err + ds_err
    assert "selfsup: error: ffcv is not installed" in train_err
    assert "scripts/install-ffcv.sh" in train_err
    fallback = [line for line in auto_err.splitlines() if "using the torchvision loader" in line]
    assert len(fallback) == 1 and "ffcv is not installed" in fallback[0]
    assert (
        "selfsup: error: train.engine=deepspeed needs DeepSpeed, which is not installed" in ds_err
    )
    assert "pip install -e .[deepspeed]" in ds_err


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
