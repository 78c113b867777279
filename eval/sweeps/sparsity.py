"""Accuracy against sparsity (``selfsup sparsity sweep``): prune, probe, recover, report.

Each point prunes the same trained backbone one-shot (:mod:`selfsup.pipelines.train.prune`)
and probes it (kNN and linear, the ``probe:`` settings). Target 0 is the
dense model itself: the control every row is read against. With
``recover_steps``, each pruned model is also distilled from the dense one for
that many steps (masks fixed) and probed again. ``2:4`` has one point, 50%.
The report: ``report.json``, ``report.md`` (a table) and ``sparsity.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from selfsup.atomic import write_atomic
from selfsup.eval.frozen.probe import probe
from selfsup.pipelines.config import ProbeConfig
from selfsup.pipelines.train.prune import prune_backbone, recover, sparsity_settings
from selfsup.text import markdown_table

REPORT_JSON, REPORT_MD, PLOT_PNG = "report.json", "report.md", "sparsity.png"


@dataclass
class SweepPoint:
    pattern: str  # "dense" for the unpruned control
    target: float
    zeros: float  # measured share of zeros in the covered layers
    weights: str
    knn: dict[str, float] = field(default_factory=dict)  # dataset -> top-1 %
    linear: dict[str, float] = field(default_factory=dict)
    recovered_knn: dict[str, float] = field(default_factory=dict)
    recovered_linear: dict[str, float] = field(default_factory=dict)


def sweep_points(targets: list[float], patterns: list[str]) -> list[tuple[str, float]]:
    """``(pattern, target)`` to prune to: every target per pattern, ``2:4`` only at 0.5."""
    points = []
    for pattern in patterns:
        for target in [0.5] if pattern == "2:4" else [t for t in targets if t > 0]:
            sparsity_settings(target, pattern)  # refused here, before any work
            points.append((pattern, target))
    return points


def _scores(path: Path, settings: ProbeConfig, device: str) -> tuple[dict, dict]:
    outcome = probe(path, settings, device=device)
    knn = {r.dataset: r.trained.knn_top1 for r in outcome.results}
    linear = {r.dataset: r.trained.linear_top1 for r in outcome.results}
    return knn, linear


def run_sweep(
    source: str | Path,
    targets: list[float],
    patterns: list[str],
    out: Path,
    settings: ProbeConfig,
    recover_steps: int = 0,
    recover_overrides: list[str] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Every point of the sweep, probed (and recovered), written as a report into ``out``."""
    points = sweep_points(targets, patterns)
    settings.baseline = False  # the dense model is the control here
    dense_knn, dense_linear = _scores(Path(source), settings, device)
    rows = [SweepPoint("dense", 0.0, 0.0, str(source), dense_knn, dense_linear)]
    for pattern, target in points:
        config = sparsity_settings(target, pattern)
        tag = f"{pattern.replace(':', 'of')}-{round(100 * target)}"
        pruned = prune_backbone(source, config, out / "pruned" / f"{tag}.pt")
        knn, linear = _scores(pruned.path, settings, device)
        row = SweepPoint(pattern, target, pruned.overall, str(pruned.path), knn, linear)
        if recover_steps > 0:
            recovered = recover(
                pruned, config, recover_steps, out / "recovered" / tag, recover_overrides or []
            )
            row.recovered_knn, row.recovered_linear = _scores(recovered, settings, device)
        rows.append(row)
    return write_sparsity_report(rows, source, settings, recover_steps, out)


def write_sparsity_report(
    rows: list[SweepPoint],
    source: str | Path,
    settings: ProbeConfig,
    recover_steps: int,
    out: Path,
) -> dict[str, Any]:
    report = {
        "format": "selfsup.sparsity_sweep/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": str(source),
        "recover_steps": recover_steps,
        "probe": asdict(settings),
        "points": [asdict(r) for r in rows],
    }
    out.mkdir(parents=True, exist_ok=True)
    plot_sweep(rows, out / PLOT_PNG)
    write_atomic(out / REPORT_JSON, json.dumps(report, indent=1))
    write_atomic(out / REPORT_MD, render_sweep(report))
    return report


def _cell(scores: dict[str, float], dataset: str) -> str:
    return f"{scores[dataset]:.2f}" if dataset in scores else "-"


def render_sweep(report: dict[str, Any]) -> str:
    """The markdown table: one row per point, kNN and linear per dataset, recovered beside."""
    rows = [SweepPoint(**p) for p in report["points"]]
    datasets = list(rows[0].knn)
    recovered = report["recover_steps"] > 0
    header = ["pattern", "target", "zeros"]
    for d in datasets:
        header += [f"{d} kNN", f"{d} linear"]
        header += [f"{d} kNN recovered", f"{d} linear recovered"] if recovered else []
    table = []
    for r in rows:
        cells = [r.pattern, f"{100 * r.target:.0f}%", f"{100 * r.zeros:.1f}%"]
        for d in datasets:
            cells += [_cell(r.knn, d), _cell(r.linear, d)]
            if recovered:
                cells += [_cell(r.recovered_knn, d), _cell(r.recovered_linear, d)]
        table.append(cells)
    lines = [
        f"# Accuracy against sparsity: `{report['source']}`",
        "",
        *markdown_table(header, table),
    ]
    probe = report["probe"]
    lines += [
        "",
        "Top-1 %. *zeros*: the share of zero weights in the pruned layers (every convolution "
        "and linear layer of the backbone but the stem, patch embedding and classifier). "
        "One-shot magnitude pruning of the dense model (first row: the control). "
        + (
            f"*recovered*: {report['recover_steps']} steps of distillation from the dense model "
            "with the masks fixed. "
            if recovered
            else ""
        )
        + f"Probe: linear {probe['epochs']} epochs, kNN k={probe['knn_k']}.",
        "",
        f"![accuracy against sparsity]({PLOT_PNG})",
        "",
        f"Generated {report['created']}.",
        "",
    ]
    return "\n".join(lines)


def plot_sweep(rows: list[SweepPoint], path: Path) -> None:
    """Linear and kNN accuracy against the share of zeros, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    datasets = list(rows[0].knn)
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(5.5 * len(datasets), 3.6), dpi=120, squeeze=False
    )
    for ax, dataset in zip(axes[0], datasets, strict=True):
        _plot_dataset(ax, rows, dataset)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_dataset(ax: Any, rows: list[SweepPoint], dataset: str) -> None:
    dense = rows[0]
    line = [dense, *[r for r in rows if r.pattern == "unstructured"]]
    for metric, color in (("linear", "#1f77b4"), ("knn", "#ff7f0e")):
        xs = [100 * r.zeros for r in line]
        ax.plot(
            xs,
            [getattr(r, metric)[dataset] for r in line],
            "o-",
            color=color,
            label=f"{metric} (unstructured)",
        )
        recovered = [
            (100 * r.zeros, getattr(r, f"recovered_{metric}")[dataset])
            for r in line[1:]
            if getattr(r, f"recovered_{metric}")
        ]
        if recovered:
            ax.plot(
                *zip(*recovered, strict=True),
                "o--",
                color=color,
                alpha=0.6,
                label=f"{metric}, recovered",
            )
        for r in (r for r in rows if r.pattern not in ("unstructured", "dense")):
            ax.plot(
                100 * r.zeros,
                getattr(r, metric)[dataset],
                "s",
                color=color,
                markersize=8,
                markerfacecolor="none",
                label=f"{metric} ({r.pattern})",
            )
            again = getattr(r, f"recovered_{metric}")
            if again:
                ax.plot(
                    100 * r.zeros,
                    again[dataset],
                    "s",
                    color=color,
                    alpha=0.6,
                    label=f"{metric} ({r.pattern}), recovered",
                )
    ax.set_xlabel("zero weights in pruned layers (%)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(dataset, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
