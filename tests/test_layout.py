"""Package layout promises: one import package, and ``import ssl`` still means the stdlib."""

import importlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_ssl_from_the_repository_root_is_the_standard_library():
    result = subprocess.run(
        [sys.executable, "-c", "import ssl; ssl.SSLContext; print(ssl.__file__)"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "site-packages" not in result.stdout and not result.stdout.startswith(str(REPO))


def test_ssl_folder_has_no_init():
    assert not (REPO / "ssl" / "__init__.py").exists()


def test_code_folders_import_as_one_package():
    for name in (
        "selfsup.ssl.simclr",
        "selfsup.pipelines.train.trainer",
        "selfsup.slurm",
        "selfsup.eval.frozen.probe",
    ):
        module = importlib.import_module(name)
        assert Path(module.__file__).resolve().is_relative_to(REPO)


def test_the_checkout_root_is_this_checkout():
    from selfsup.paths import checkout_root

    assert checkout_root() == REPO and (checkout_root() / "pyproject.toml").is_file()
