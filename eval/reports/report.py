"""Reports: ``report.json`` (for tools), ``report.md`` + ``loss.png`` (for people), tables.

The training-loss curve is read back from the run's TensorBoard event files,
the single record of what was logged (and already cleaned of steps replayed
after a resume).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from selfsup.atomic import write_atomic
from selfsup.errors import one_line
from selfsup.eval.frozen.probe import ProbeOutcome
from selfsup.eval.reports.monitor import (
    MONITOR_PNG,
    monitor_markdown,
    monitor_record,
    plot_monitor,
)
from selfsup.pipelines.checkpoint.run_dir import CONFIG_FILE, TB_DIR, is_run_dir, read_summary
from selfsup.pipelines.config import load_saved_config
from selfsup.pipelines.train.monitor import read_scalars
from selfsup.text import markdown_table

log = logging.getLogger(__name__)

FORMAT = "selfsup.report/1"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
LOSS_PNG = "loss.png"


def plot_loss(points: list[tuple[int, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    steps, values = zip(*points, strict=True)
    ax.plot(steps, values, color="#1f77b4", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:  # atomically: a full disk leaves no half-written (or 0-byte) picture
        write_atomic(path, lambda fh: fig.savefig(fh, format="png"))
    finally:
        plt.close(fig)


def build_report(outcome: ProbeOutcome) -> dict[str, Any]:
    """Everything worth keeping about a run and its probe, as JSON-able data."""
    report: dict[str, Any] = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "probe": outcome.to_dict(),
        "run": None,
    }
    run_dir = outcome.info.run_dir
    if run_dir is not None and (run_dir / CONFIG_FILE).is_file():
        config = load_saved_config(run_dir / CONFIG_FILE)
        summary = read_summary(run_dir)
        report["run"] = {
            "name": config.name,
            "dir": str(run_dir),
            "method": config.method.name,
            "backbone": config.model.backbone,
            "dataset": config.data.dataset,
            "image_size": config.data.image_size,
            "batch_size": config.data.batch_size,
            "optimizer": config.optim.name,
            "precision": config.train.precision,
            "step": outcome.info.step,
            "total_steps": summary.get("total_steps"),
            "final_loss": summary.get("final_loss"),
            "loss_curve": read_scalars(run_dir / TB_DIR, "train/loss"),
            "monitor": monitor_record(run_dir, summary),
        }
    return report


def write_report(outcome: ProbeOutcome, out_dir: Path) -> dict[str, Any]:
    """Write report.json, report.md and loss.png into ``out_dir``; log to TensorBoard."""
    report = build_report(outcome)
    try:
        _write_report_files(report, out_dir)
        if outcome.info.run_dir is not None:
            log_to_tensorboard(outcome, outcome.info.run_dir / TB_DIR)
    except OSError as exc:  # a full disk, a read-only folder: each file is whole or absent
        from selfsup.errors import SelfsupError

        raise SelfsupError(
            f"cannot write the report into {out_dir} ({exc.strerror or one_line(exc)}); free "
            "space or make it writable, or pass --out DIR, and probe again"
        ) from None
    return report


def _write_report_files(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    run = report["run"]
    if run and run["loss_curve"]:
        title = f"{run['method']} / {run['backbone']} on {run['dataset']}"
        plot_loss(run["loss_curve"], out_dir / LOSS_PNG, title)
    if run and run.get("monitor"):
        title = f"online monitor of {run['name']}"
        plot_monitor(run["monitor"], out_dir / MONITOR_PNG, title)
    write_atomic(out_dir / REPORT_JSON, json.dumps(report, indent=1))
    has_plot = (out_dir / LOSS_PNG).is_file()
    markdown = render_markdown(report, has_plot, (out_dir / MONITOR_PNG).is_file())
    write_atomic(out_dir / REPORT_MD, markdown)


def log_to_tensorboard(outcome: ProbeOutcome, tb_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    step = outcome.info.step or 0
    with SummaryWriter(str(tb_dir)) as writer:
        for result in outcome.results:
            prefix = f"probe/{result.dataset}"
            writer.add_scalar(f"{prefix}/linear_top1", result.trained.linear_top1, step)
            writer.add_scalar(f"{prefix}/knn_top1", result.trained.knn_top1, step)
            if result.random_init is not None:
                writer.add_scalar(
                    f"{prefix}/random_init_linear_top1", result.random_init.linear_top1, step
                )
                writer.add_scalar(
                    f"{prefix}/random_init_knn_top1", result.random_init.knn_top1, step
                )


def accuracy_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per probed dataset: the accuracy table of a single report."""
    rows = []
    for r in report["probe"]["results"]:
        row = [r["dataset"], f"{r['train_images']:,} / {r['test_images']:,}"]
        base = r.get("random_init")
        for metric in ("linear_top1", "knn_top1"):
            trained = r["trained"][metric]
            row.append(f"{trained:.2f}")
            row += [f"{base[metric]:.2f}", f"{trained - base[metric]:+.2f}"] if base else ["-", "-"]
        rows.append(row)
    return rows


ACCURACY_HEADER = [
    "dataset",
    "train / test images",
    "linear (trained)",
    "linear (random init)",
    "linear gain",
    "kNN (trained)",
    "kNN (random init)",
    "kNN gain",
]


def render_markdown(report: dict[str, Any], has_plot: bool, has_monitor_plot: bool = False) -> str:
    probe = report["probe"]
    backbone = probe["backbone"]
    settings = probe["settings"]
    run = report["run"]
    title = run["name"] if run else Path(backbone["origin"]).name
    lines = [f"# selfsup report: {title}", ""]
    if run:
        loss = f"{run['final_loss']:.4f}" if run.get("final_loss") is not None else "n/a"
        lines += [
            f"**{run['method']}** pretraining of **{run['backbone']}** "
            f"({backbone['source']}{', CIFAR stem' if backbone['cifar_stem'] else ''}) on "
            f"**{run['dataset']}** at {run['image_size']} px: {run['step']} steps of "
            f"{run['batch_size']} images ({run['optimizer']}, {run['precision']}), "
            f"final loss {loss}.",
            "",
        ]
    lines += [
        f"Weights: `{backbone['origin']}`"
        + (f" (step {backbone['step']})" if backbone["step"] else ""),
        "",
        "## Frozen-feature accuracy (top-1, %)",
        "",
        _markdown_table(ACCURACY_HEADER, accuracy_rows(report)),
        "",
        f"*Linear*: one linear layer on standardised features, AdamW, {settings['epochs']} epochs. "
        f"*kNN*: k={settings['knn_k']}, cosine similarity, temperature "
        f"{settings['knn_temperature']}. *Random init*: the same architecture with the "
        "run's initial weights (same seed), before any training.",
        "",
    ]
    if has_plot:
        lines += ["## Training loss", "", f"![training loss]({LOSS_PNG})", ""]
    if run and run.get("monitor"):
        lines += monitor_markdown(run["monitor"], probe, has_monitor_plot)
    lines += [f"Generated {report['created']}.", ""]
    return "\n".join(lines)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(markdown_table(header, rows))


def load_report_if_any(run_dir: Path) -> dict[str, Any] | None:
    """The probe report of a run, None when the run is not probed yet."""
    from selfsup.errors import SelfsupError

    if not run_dir.exists():
        raise SelfsupError(f"{run_dir} does not exist; pass run directories of `selfsup train`")
    path = run_dir / REPORT_JSON if run_dir.is_dir() else run_dir
    if run_dir.is_dir() and not is_run_dir(run_dir):
        if any((run_dir / "finetune").glob(f"*/*/{REPORT_JSON}")):
            return None  # the --out folder of `selfsup finetune`: its reports, no probe report
        raise SelfsupError(
            f"{run_dir} is not a selfsup run directory (no {CONFIG_FILE}) nor a fine-tune "
            "output folder (no finetune/<dataset>/<recipe>/report.json); pass run directories "
            "of `selfsup train` or the --out folders of `selfsup finetune`"
        )
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SelfsupError(f"{path} is not valid JSON ({exc}); run `selfsup probe` again") from exc
    if not _is_report(report):
        raise SelfsupError(
            f"{path} is not a selfsup report (wrong format or shape); run `selfsup probe "
            f"{run_dir}` again to rewrite it"
        )
    return report


def _is_report(report: Any) -> bool:
    """The shape :func:`comparison` reads, with the types and ranges of every value it prints."""
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        return False
    probe, run = report.get("probe"), report.get("run")
    if not isinstance(probe, dict) or not isinstance(probe.get("results"), list):
        return False
    if run is not None and not (
        isinstance(run, dict)
        and all(isinstance(run.get(k), (str, type(None))) for k in ("name", "method"))
        and (run.get("final_loss") is None or _number(run["final_loss"]))
    ):
        return False
    backbone = probe.get("backbone")
    if not isinstance(backbone, dict) or not all(
        isinstance(backbone.get(k), str) for k in ("name", "origin")
    ):
        return False
    step = backbone.get("step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        return False
    return all(_is_result(r) for r in probe["results"])


def _number(value: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


def _is_scores(scores: Any) -> bool:
    """Top-1 accuracies in percent."""
    return isinstance(scores, dict) and all(
        _number(scores.get(k), 0, 100) for k in ("linear_top1", "knn_top1")
    )


def _is_result(result: Any) -> bool:
    return (
        isinstance(result, dict)
        and isinstance(result.get("dataset"), str)
        and _is_scores(result.get("trained"))
        and (result.get("random_init") is None or _is_scores(result["random_init"]))
    )


def comparison(reports: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a table comparing runs: one row per run, two columns per dataset."""
    datasets: list[str] = []
    for report in reports:
        for r in report["probe"]["results"]:
            if r["dataset"] not in datasets:
                datasets.append(r["dataset"])
    header = ["run", "method", "backbone", "steps", "final loss"]
    for name in datasets:
        header += [f"{name} linear", f"{name} kNN"]
    rows = []
    for report in reports:
        run = report.get("run") or {}
        backbone = report["probe"]["backbone"]
        loss = run.get("final_loss")
        row = [
            run.get("name") or Path(backbone["origin"]).name,
            run.get("method", "-"),
            backbone["name"],
            str(backbone.get("step") or "-"),
            f"{loss:.4f}" if loss is not None else "-",
        ]
        by_name = {r["dataset"]: r for r in report["probe"]["results"]}
        for name in datasets:
            r = by_name.get(name)
            row += (
                [f"{r['trained']['linear_top1']:.2f}", f"{r['trained']['knn_top1']:.2f}"]
                if r
                else ["-", "-"]
            )
        rows.append(row)
    return header, rows


TRANSFER_HEADER = [
    "run",
    "kNN (trained / random init)",
    "linear (trained / random init)",
    "head_then_unfreeze (pretrained / scratch)",
    "full (pretrained / scratch)",
]
NOT_EVALUATED = "not evaluated yet: run `selfsup probe RUN` and `selfsup finetune RUN`"


def _pair(trained: float | None, control: float | None) -> str:
    if trained is None:
        return "-"
    return f"{trained:.2f} / {control:.2f}" if control is not None else f"{trained:.2f} / -"


def transfer_cells(
    probe_report: dict[str, Any] | None, finetunes: list[dict[str, Any]]
) -> dict[str, dict[str, str]]:
    """One run's cells by dataset, then by column (kNN, linear, each fine-tune recipe)."""
    cells: dict[str, dict[str, str]] = {}
    for r in (probe_report or {}).get("probe", {}).get("results", []):
        base = r.get("random_init") or {}
        cells.setdefault(r["dataset"], {}).update(
            knn=_pair(r["trained"]["knn_top1"], base.get("knn_top1")),
            linear=_pair(r["trained"]["linear_top1"], base.get("linear_top1")),
        )
    for report in finetunes:
        scores = report.get("test_accuracy", {})
        row = cells.setdefault(report["dataset"], {})
        if report["recipe"] != "linear" or "linear" not in row:
            row[report["recipe"]] = _pair(scores.get("pretrained"), scores.get("scratch"))
    return cells


def transfer_tables(
    runs: list[tuple[str, dict[str, Any] | None, list[dict[str, Any]]]],
) -> dict[str, list[list[str]]]:
    """Rows of :data:`TRANSFER_HEADER` by dataset; a run with no result anywhere says so."""
    by_run = [(name, transfer_cells(probe, finetunes)) for name, probe, finetunes in runs]
    datasets = [d for _, cells in by_run for d in cells]
    tables: dict[str, list[list[str]]] = {d: [] for d in dict.fromkeys(datasets)}
    for name, cells in by_run:
        for dataset, rows in tables.items():
            row = cells.get(dataset, {})
            columns = ("knn", "linear", "head_then_unfreeze", "full")
            rows.append([name, *(row.get(c, "-") for c in columns)])
    return tables
