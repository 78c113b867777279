"""Evaluation sweeps: probes over checkpoints x datasets x learning rates, as independent tasks.

Each task is one ``probe`` call and returns plain numbers, so the sweep can
run as a SLURM job array (``selfsup submit-eval``) or in a loop; the results
are written as one report (``eval_report.md`` and ``.json``).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from selfsup.atomic import write_atomic
from selfsup.eval.frozen.probe import probe
from selfsup.pipelines.config import ProbeConfig
from selfsup.text import markdown_table

REPORT_JSON = "eval_report.json"
REPORT_MD = "eval_report.md"


@dataclass(frozen=True)
class ProbeTask:
    checkpoint: str  # run directory, checkpoint folder or backbone .pt
    dataset: str
    lr: float
    settings: dict[str, Any]  # ProbeConfig fields
    device: str = "auto"


def sweep(
    checkpoints: list[str],
    datasets: list[str],
    lrs: list[float],
    settings: ProbeConfig,
    device: str = "auto",
) -> list[ProbeTask]:
    """Every (checkpoint, dataset, learning rate) combination."""
    base = asdict(settings)
    return [
        ProbeTask(checkpoint, dataset, lr, base, device)
        for checkpoint, dataset, lr in itertools.product(checkpoints, datasets, lrs)
    ]


def run_probe_task(task: ProbeTask) -> dict[str, Any]:
    """Probe one checkpoint on one dataset with one linear-probe learning rate."""
    settings = replace(ProbeConfig(**task.settings), datasets=[task.dataset], lr=task.lr)
    outcome = probe(task.checkpoint, settings, device=task.device)
    result = outcome.results[0]
    return {
        "checkpoint": task.checkpoint,
        "step": outcome.info.step,
        "dataset": task.dataset,
        "lr": task.lr,
        "train_images": result.train_images,
        "test_images": result.test_images,
        "linear_top1": result.trained.linear_top1,
        "knn_top1": result.trained.knn_top1,
        "random_init_linear_top1": result.random_init.linear_top1 if result.random_init else None,
        "random_init_knn_top1": result.random_init.knn_top1 if result.random_init else None,
    }


def write_eval_report(rows: list[dict[str, Any]], failures: list[str], out_dir: Path) -> Path:
    """One report for the sweep, marking the best learning rate per checkpoint and dataset."""
    best: dict[tuple[str, str], float] = {}
    for row in rows:
        key = (row["checkpoint"], row["dataset"])
        best[key] = max(best.get(key, float("-inf")), row["linear_top1"])
    table = []
    for row in sorted(rows, key=lambda r: (r["checkpoint"], r["dataset"], r["lr"])):
        linear = f"{row['linear_top1']:.2f}"
        if row["linear_top1"] == best[(row["checkpoint"], row["dataset"])]:
            linear = f"**{linear}**"
        table.append(
            [
                row["checkpoint"],
                str(row["step"]),
                row["dataset"],
                f"{row['lr']:g}",
                f"{row['train_images']:,} / {row['test_images']:,}",
                linear,
                f"{row['knn_top1']:.2f}",
            ]
        )
    return write_sweep_report(
        out_dir,
        "selfsup.eval_report/1",
        "# selfsup evaluation sweep",
        rows,
        failures,
        ["checkpoint", "step", "dataset", "lr", "train / test", "linear top-1", "kNN top-1"],
        table,
        "Bold: the best linear-probe learning rate for that checkpoint and dataset.",
    )


def write_sweep_report(
    out_dir: Path,
    kind: str,
    title: str,
    rows: list[dict[str, Any]],
    failures: list[str],
    header: list[str],
    table: list[list[str]],
    footer: str,
) -> Path:
    """``eval_report.json`` (the rows, the failures) and ``eval_report.md`` (the table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": rows,
        "failures": failures,
    }
    write_atomic(out_dir / REPORT_JSON, json.dumps(payload, indent=1))
    lines = [
        title,
        "",
        f"{len(rows)} task(s) finished" + (f", {len(failures)} failed" if failures else "") + ".",
        "",
        *markdown_table(header, table),
    ]
    if failures:
        lines += ["", "## Failed tasks", "", *[f"- {f}" for f in failures]]
    lines += ["", footer, ""]
    path = out_dir / REPORT_MD
    write_atomic(path, "\n".join(lines))
    return path
