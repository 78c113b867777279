"""A run's online monitor in its report: the curves against step, and the probe beside them.

The curves are read back from the run's TensorBoard files (``monitor/*``),
the one record the training loop wrote; the monitor's settings (subset
sizes, k, T) from ``summary.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfsup.atomic import write_atomic
from selfsup.pipelines.checkpoint.run_dir import TB_DIR
from selfsup.pipelines.train.monitor import read_scalars
from selfsup.text import markdown_table

MONITOR_PNG = "monitor.png"
# TensorBoard tag -> the report's column (accuracies in %, then the label-free measures).
CURVES = {
    "monitor/knn_top1": "online kNN",
    "monitor/linear_top1": "online linear",
    "monitor/rankme": "RankMe",
    "monitor/std": "std",
}


def monitor_record(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The run's monitor curves and settings, or None when it ran without one."""
    curves = {tag: read_scalars(run_dir / TB_DIR, tag) for tag in CURVES}
    curves = {tag: points for tag, points in curves.items() if points}
    if "monitor/knn_top1" not in curves:
        return None
    return {"settings": summary.get("monitor", {}), "curves": curves}


def plot_monitor(record: dict[str, Any], path: Path, title: str) -> None:
    """Online kNN and linear top-1 against step (left), RankMe (right axis)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    curves = record["curves"]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    for tag, colour in (("monitor/knn_top1", "#1f77b4"), ("monitor/linear_top1", "#2ca02c")):
        if tag in curves:
            steps, values = zip(*curves[tag], strict=True)
            ax.plot(steps, values, color=colour, marker="o", markersize=3, label=CURVES[tag])
    ax.set_xlabel("step")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    if "monitor/rankme" in curves:
        right = ax.twinx()
        steps, values = zip(*curves["monitor/rankme"], strict=True)
        right.plot(steps, values, color="#ff7f0e", linestyle="--", label="RankMe")
        right.set_ylabel("RankMe (effective rank)")
        right.legend(loc="lower right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    try:  # atomically: a full disk leaves no half-written picture
        write_atomic(path, lambda fh: fig.savefig(fh, format="png"))
    finally:
        plt.close(fig)


def monitor_markdown(record: dict[str, Any], probe: dict[str, Any], has_plot: bool) -> list[str]:
    """The report's monitor section: the plot, the points, the last kNN beside the probe's."""
    curves, settings = record["curves"], record["settings"]
    steps = sorted({step for points in curves.values() for step, _ in points})
    columns = [tag for tag in CURVES if tag in curves]
    by_step = {tag: dict(points) for tag, points in curves.items()}
    rows = [[str(step), *(_cell(tag, by_step[tag].get(step)) for tag in columns)] for step in steps]
    lines = ["## Online monitor (while training)", ""]
    if has_plot:
        lines += [f"![online monitor]({MONITOR_PNG})", ""]
    lines += markdown_table(["step", *(CURVES[t] for t in columns)], rows)
    lines += ["", *_against_probe(curves["monitor/knn_top1"], settings, probe), ""]
    return lines


def _against_probe(knn: list[tuple[int, float]], settings: dict, probe: dict) -> list[str]:
    """One paragraph: the last online kNN, the probe's kNN on the training dataset, sizes."""
    first, last = knn[0], knn[-1]
    bank, test = settings.get("bank_size", "?"), settings.get("test_size", "?")
    text = (
        f"Online kNN went from {first[1]:.2f}% (step {first[0]}) to {last[1]:.2f}% (step "
        f"{last[0]}), with a bank of {bank} training images scored on {test} test images "
        f"(k={settings.get('knn_k', '?')}, T={settings.get('knn_temperature', '?')})."
    )
    for result in probe["results"]:
        same = result.get("monitor_subsets")
        if same is None:
            continue
        text += (
            f" The probe, on the same {same['bank_size']} / {same['test_size']} images of "
            f"{result['dataset']} with the final weights: {same['knn_top1']:.2f}%. On its own "
            f"{result['train_images']:,} training / {result['test_images']:,} test images: "
            f"{result['trained']['knn_top1']:.2f}%: the gap between the online and the "
            "post-hoc kNN is their subset sizes' (a larger bank votes with closer neighbours)."
        )
    return [text]


def _cell(tag: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if tag == "monitor/std" else f"{value:.2f}"
