"""Fine-tune sweeps: sources x datasets x recipes x learning rates, as independent tasks.

The fine-tune counterpart of :mod:`selfsup.eval.sweeps.probe_array`: each task is one
``selfsup finetune`` of one dataset with one recipe and one ``base_lr``, into
a folder of its own under the sweep's folder, so the tasks run as one SLURM
job array (``selfsup submit-eval --task finetune``) and land in one report.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from selfsup.eval.finetune.run import finetune, load_source
from selfsup.eval.finetune.settings import finetune_settings
from selfsup.eval.reports.finetune import test_accuracies
from selfsup.eval.sweeps.probe_array import write_sweep_report

FORMAT = "selfsup.finetune_eval_report/1"


@dataclass(frozen=True)
class FinetuneTask:
    source: str  # run directory, checkpoint folder or .pt
    dataset: str
    recipe: str
    lr: float | None  # finetune.optim.base_lr; None: the recipe's
    overrides: tuple[str, ...]  # finetune.* (and train.*) overrides of every task
    out: str  # this task's folder (selfsup finetune --out)
    device: str = "auto"

    def arguments(self) -> list[str]:
        lr = [] if self.lr is None else [f"optim.base_lr={self.lr}"]
        return [*self.overrides, f"datasets=[{self.dataset}]", *lr]

    def label(self) -> str:
        lr = "recipe lr" if self.lr is None else f"lr {self.lr:g}"
        return f"{self.source} on {self.dataset}, {self.recipe}, {lr}"


def finetune_sweep(
    sources: list[str],
    datasets: list[str],
    recipes: list[str],
    lrs: list[float | None],
    overrides: list[str],
    out: Path,
    device: str = "auto",
) -> list[FinetuneTask]:
    """Every combination, each checked (one error line) before anything is submitted."""
    combos = itertools.product(sources, datasets, recipes, lrs)
    tasks = []
    for i, (source, dataset, recipe, lr) in enumerate(combos):
        folder = out / "tasks" / f"{i:03d}-{dataset}-{recipe}"
        task = FinetuneTask(source, dataset, recipe, lr, tuple(overrides), str(folder), device)
        finetune_settings(Path(source), recipe, task.arguments())  # refuses bad settings now
        tasks.append(task)
    return tasks


def run_finetune_task(task: FinetuneTask) -> dict[str, Any]:
    """One fine-tune (pretrained and, with the baseline, scratch); its test accuracies."""
    config = finetune_settings(Path(task.source), task.recipe, task.arguments())
    (result,) = finetune(load_source(task.source, config), Path(task.out), task.device)
    return {
        **asdict(task),
        "lr": config.finetune.optim.base_lr,
        "test_accuracy": test_accuracies(asdict(result)),
        "best_epoch": {init: r.best_epoch for init, r in result.results.items()},
        "report": str(Path(task.out) / "finetune" / task.dataset / task.recipe / "report.md"),
    }


def write_finetune_eval_report(
    rows: list[dict[str, Any]], failures: list[str], out_dir: Path
) -> Path:
    """One report of the sweep; bold: the best rate per source, dataset and recipe."""
    best: dict[tuple[str, str, str], float] = {}
    for row in rows:
        key = (row["source"], row["dataset"], row["recipe"])
        best[key] = max(best.get(key, float("-inf")), row["test_accuracy"]["pretrained"])
    table = []
    for row in sorted(rows, key=lambda r: (r["source"], r["dataset"], r["recipe"], r["lr"])):
        scores = row["test_accuracy"]
        pretrained = f"{scores['pretrained']:.2f}"
        if scores["pretrained"] == best[(row["source"], row["dataset"], row["recipe"])]:
            pretrained = f"**{pretrained}**"
        scratch = f"{scores['scratch']:.2f}" if scores.get("scratch") is not None else "-"
        table.append(
            [
                row["source"],
                row["dataset"],
                row["recipe"],
                f"{row['lr']:g}",
                pretrained,
                scratch,
                row["report"],
            ]
        )
    return write_sweep_report(
        out_dir,
        FORMAT,
        "# selfsup fine-tune sweep",
        rows,
        failures,
        ["source", "dataset", "recipe", "base lr", "pretrained top-1", "scratch top-1", "report"],
        table,
        "Scratch: the same recipe from the run's initial weights (the control); bold: "
        "the best rate per source, dataset and recipe.",
    )
