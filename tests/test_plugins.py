"""Extensions from outside the package: a loader and a fine-tune recipe, used by the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "configs" / "demo.yaml")

TOY_PLUGIN = """
import logging

from selfsup.eval.finetune.recipes import RECIPES, FinetuneRecipe, Phase
from selfsup.pipelines.data.train_loader import LOADERS

log = logging.getLogger("selfsup.toy_plugin")


def toy_loader(config, spec, device):
    log.info("toy loader: batches of %d", spec.batch_size)
    return LOADERS.get("torchvision")(config, spec, device)


def one_frozen_phase(ft):
    return [Phase("toy_phase", ft.epochs, 1.0, frozen_base=True)]


LOADERS.register("toy_loader", toy_loader)
RECIPES.register(
    "toy_recipe",
    FinetuneRecipe("toy_recipe", one_frozen_phase, lambda s: "A head on the frozen base (toy)."),
)
"""


def selfsup(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "selfsup", *args], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def test_a_plugin_loader_and_recipe_drive_train_and_finetune(tiny_overrides, data_root, tmp_path):
    (tmp_path / "toy_plugin.py").write_text(TOY_PLUGIN)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "SELFSUP_PLUGINS": "toy_plugin"}
    run = tmp_path / "run"
    trained = selfsup("train", DEMO, *tiny_overrides, f"run_dir={run}", "train.max_steps=2",
                      "data.loader=toy_loader", env=env)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "toy loader: batches of 16" in (run / "train.log").read_text()
    tuned = selfsup(
        "finetune", str(run), "--recipe", "toy_recipe", "--datasets", "cifar10", "--data",
        str(data_root), "--device", "cpu", "batch_size=16", "num_workers=0",
        "train_samples=64", "test_samples=32", "epochs=1", "baseline=false", env=env,
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr
    out = run / "finetune" / "cifar10" / "toy_recipe"
    assert (out / "pretrained" / "toy_phase" / "classifier.pt").is_file()
    assert json.loads((out / "report.json").read_text())["recipe"] == "toy_recipe"
    assert "A head on the frozen base (toy)." in (out / "report.md").read_text()
    # A plugin that cannot be imported: one line naming it and the fix, nothing run.
    missing = selfsup("train", DEMO, *tiny_overrides, f"run_dir={tmp_path / 'never'}",
                      env={**env, "SELFSUP_PLUGINS": "no_such_plugin"})  # fmt: skip
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1, missing.stderr
    assert "plugin module 'no_such_plugin'" in lines[0] and "PYTHONPATH" in lines[0]
    assert not (tmp_path / "never").exists()
