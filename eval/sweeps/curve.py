"""Accuracy against step: every kept checkpoint of a run probed, as a table and a plot.

``selfsup probe RUN --every-checkpoint`` runs the tasks here in a loop;
``selfsup submit-eval RUN --every-checkpoint`` runs the same tasks as a SLURM
job array (one task per checkpoint and dataset). Either way the rows become
``probe_curve.json``, ``probe_curve.md`` and ``probe_curve.png``: linear and
kNN top-1 at each checkpoint's step, the random-init network at step 0 (the
weights the run started from), and, where the run was monitored, its online
kNN curve from TensorBoard beside the post-hoc one. A run keeps
``checkpoint.keep_last`` checkpoints; ``checkpoint.keep_every`` keeps more for
a finer curve.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from selfsup.atomic import write_atomic
from selfsup.errors import ConfigError
from selfsup.eval.sweeps.probe_array import ProbeTask, run_probe_task, sweep
from selfsup.pipelines.checkpoint.folders import list_checkpoints
from selfsup.pipelines.checkpoint.run_dir import CHECKPOINT_DIR, TB_DIR, find_run_dir
from selfsup.pipelines.config import ProbeConfig
from selfsup.pipelines.train.monitor import read_scalars
from selfsup.text import markdown_table

log = logging.getLogger(__name__)

CURVE_JSON, CURVE_MD, CURVE_PNG = "probe_curve.json", "probe_curve.md", "probe_curve.png"
Point = tuple[int, float, float]  # step, linear top-1, kNN top-1


def run_checkpoints(path: str | Path) -> list[str]:
    """Every complete checkpoint folder of the run at ``path``, oldest first."""
    run_dir = find_run_dir(Path(path))
    if run_dir is None:
        raise ConfigError(
            f"--every-checkpoint needs a run directory; {path} is not one (nor inside one)"
        )
    found = list_checkpoints(run_dir / CHECKPOINT_DIR)
    if not found:
        raise ConfigError(f"{run_dir} holds no complete checkpoint to probe")
    return [str(p) for p in found]


def curve_tasks(
    runs: list[str], datasets: list[str], settings: ProbeConfig, device: str = "auto"
) -> list[ProbeTask]:
    """One probe per checkpoint and dataset; the random-init baseline with the first only."""
    tasks = []
    for run in runs:
        for i, checkpoint in enumerate(run_checkpoints(run)):
            first = replace(settings, baseline=settings.baseline and i == 0)
            tasks += sweep([checkpoint], datasets, [settings.lr], first, device)
    return tasks


def probe_curve(tasks: list[ProbeTask]) -> list[dict[str, Any]]:
    """The tasks run here, one after another (the job array's rows, without SLURM)."""
    return [run_probe_task(task) for task in tasks]


def curve_points(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[Point]]]:
    """run directory -> dataset -> (step, linear, kNN) points, step 0 the random init."""
    points: dict[str, dict[str, list[Point]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        run = str(Path(row["checkpoint"]).parent.parent)
        curve = points[run][row["dataset"]]
        curve.append((int(row["step"]), row["linear_top1"], row["knn_top1"]))
        if row.get("random_init_linear_top1") is not None:
            curve.append((0, row["random_init_linear_top1"], row["random_init_knn_top1"]))
    return {run: {d: sorted(c) for d, c in by.items()} for run, by in points.items()}


def write_curve_report(rows: list[dict[str, Any]], failures: list[str], out_dir: Path) -> Path:
    """``probe_curve.json``, ``.md`` (one table per run and dataset) and ``.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    points = curve_points(rows)
    online = {run: read_scalars(Path(run) / TB_DIR, "monitor/knn_top1") for run in points}
    payload = {"format": "selfsup.probe_curve/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "curves": points, "online_knn": online, "failures": failures}  # fmt: skip
    write_atomic(out_dir / CURVE_JSON, json.dumps(payload, indent=1))
    plot_curves(points, online, out_dir / CURVE_PNG)
    lines = ["# selfsup: accuracy against step", "", f"![curves]({CURVE_PNG})", ""]
    for run, by_dataset in points.items():
        for dataset, curve in by_dataset.items():
            rows_md = [[str(s), f"{lin:.2f}", f"{knn:.2f}"] for s, lin, knn in curve]
            lines += [f"## {Path(run).name} on {dataset}", ""]
            lines += [*markdown_table(["step", "linear top-1", "kNN top-1"], rows_md), ""]
    if failures:
        lines += ["## Failed tasks", "", *[f"- {f}" for f in failures], ""]
    lines += ["Step 0: the run's initial weights (random init, same seed).", ""]
    write_atomic(out_dir / CURVE_MD, "\n".join(lines))
    return out_dir / CURVE_MD


def plot_curves(
    points: dict[str, dict[str, list[Point]]],
    online: dict[str, list[tuple[int, float]]],
    path: Path,
) -> None:
    """Linear (solid) and kNN (dashed) against step per run and dataset; online kNN dotted."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    for run, by_dataset in points.items():
        name = Path(run).name
        for dataset, curve in by_dataset.items():
            steps = [s for s, _, _ in curve]
            line = ax.plot(steps, [c[1] for c in curve], marker="o", markersize=3,
                           label=f"{name} {dataset} linear")[0]  # fmt: skip
            ax.plot(steps, [c[2] for c in curve], linestyle="--", color=line.get_color(),
                    label=f"{name} {dataset} kNN")  # fmt: skip
        if online.get(run):
            ax.plot([s for s, _ in online[run]], [v for _, v in online[run]], linestyle=":",
                    label=f"{name} online kNN")  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    try:  # atomically: a full disk leaves no half-written picture
        write_atomic(path, lambda fh: fig.savefig(fh, format="png"))
    finally:
        plt.close(fig)


def overlay_runs(runs: list[Path], path: Path) -> bool:
    """The curves of several runs in one plot (``selfsup report``): each run's
    ``probe_curve.json`` and online kNN; False when none has either."""
    points: dict[str, dict[str, list[Point]]] = {}
    online: dict[str, list[tuple[int, float]]] = {}
    for run in runs:
        key = str(run.resolve())
        points[key] = _saved_curves(run / CURVE_JSON)
        online[key] = read_scalars(run / TB_DIR, "monitor/knn_top1")
    if not any(points.values()) and not any(online.values()):
        return False
    plot_curves(points, online, path)
    return True


def _saved_curves(path: Path) -> dict[str, list[Point]]:
    """dataset -> points of a ``probe_curve.json`` ({} when absent; one log line when damaged)."""
    if not path.is_file():
        return {}
    try:
        curves = json.loads(path.read_text())["curves"]
        return {
            dataset: [(int(p[0]), float(p[1]), float(p[2])) for p in curve]
            for by_dataset in curves.values()
            for dataset, curve in by_dataset.items()
        }
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        log.warning("%s is damaged (%s); its curves are left out: probe the run again", path, exc)
        return {}
