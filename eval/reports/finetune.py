"""Fine-tune reports: ``report.json`` (for tools), ``report.md`` with plots (for people).

One report per dataset and recipe (``<run>/finetune/<dataset>/<recipe>/``):
test accuracy of the pretrained and the scratch fine-tune, the epoch chosen
on validation, accuracy-per-epoch curves (``curves.png``), per-class
accuracy and confusion matrices (``confusion.png``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfsup.atomic import write_atomic
from selfsup.eval.finetune.recipes import RECIPES
from selfsup.pipelines.config import FinetuneConfig
from selfsup.text import markdown_table

if TYPE_CHECKING:
    from selfsup.eval.finetune.run import RecipeResult

FORMAT = "selfsup.finetune-report/1"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion.png"
COLOURS = {
    "pretrained": "#1f77b4",
    "distilled": "#2ca02c",
    "scratch": "#d62728",
    "supervised": "#9467bd",
}


def write_recipe_report(result: RecipeResult, out_dir: Path, ft: FinetuneConfig) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    values = asdict(result)
    report = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": asdict(ft) | {"recipe": result.recipe, "datasets": [result.dataset]},
        **values,
        "test_accuracy": test_accuracies(values),
    }
    plots = []
    if result.results:
        plot_curves(report, out_dir / CURVES_PNG)
        plot_confusion(report, out_dir / CONFUSION_PNG)
        plots = [CURVES_PNG, CONFUSION_PNG]
    write_atomic(out_dir / REPORT_JSON, json.dumps(report, indent=1))
    write_atomic(out_dir / REPORT_MD, render_markdown(report, plots))
    return report


def test_accuracies(result: dict[str, Any]) -> dict[str, float | None]:
    """Test top-1 (%) by init: a fine-tune's score, or the linear probe's."""
    if result.get("linear"):
        return {init: (s or {}).get("linear_top1") for init, s in result["linear"].items()}
    return {init: r["test"]["accuracy"] for init, r in result["results"].items()}


def render_markdown(report: dict[str, Any], plots: list[str]) -> str:
    s = report["settings"]
    lines = [
        f"# Fine-tune report: {report['recipe']} on {report['dataset']}",
        "",
        f"{report['train_images']:,} training, {report['val_images']:,} validation and "
        f"{report['test_images']:,} test images at {report['image_size']} px. "
        + _recipe_sentence(s),
        "",
    ]
    rows = []
    for init, accuracy in report["test_accuracy"].items():
        run = report["results"].get(init)
        epoch = str(run["best_epoch"]) if run else "-"
        val = f"{run['best_val_accuracy']:.2f}" if run else "-"
        rows.append([init, f"{accuracy:.2f}" if accuracy is not None else "-", epoch, val])
    header = ["init", "test top-1 (%)", "best epoch", "validation top-1 (%)"]
    lines += markdown_table(header, rows)
    lines += [
        "",
        "*Scratch*: the same architecture and recipe from the weights the "
        "pretraining started from (same seed).",
        "",
    ]
    if "supervised" in report["test_accuracy"]:
        origin = report["settings"].get("supervised", "")
        lines += [
            f"*Supervised*: the library's ImageNet classifier weights ({origin}), its "
            "classifier dropped, fine-tuned with the same recipe.",
            "",
        ]
    if report["results"]:
        lines += _per_class_table(report)
    for plot in plots:
        lines += [f"![{plot[:-4]}]({plot})", ""]
    lines += [f"Generated {report['created']}.", ""]
    return "\n".join(lines)


def _recipe_sentence(s: dict[str, Any]) -> str:
    if s["recipe"] not in RECIPES:  # a report of a recipe this installation does not have
        return f"Recipe {s['recipe']}."
    return RECIPES.get(s["recipe"]).sentence(s)


def _per_class_table(report: dict[str, Any]) -> list[str]:
    inits = list(report["results"])
    rows = [
        [name, *(f"{report['results'][init]['test']['per_class'][i]:.1f}" for init in inits)]
        for i, name in enumerate(report["classes"])
    ]
    return ["## Per-class test accuracy (%)", "", *markdown_table(["class", *inits], rows), ""]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """Validation (solid) and training (dashed) accuracy per epoch, pretrained vs scratch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for init, run in report["results"].items():
        epochs = [e["epoch"] for e in run["history"]]
        colour = COLOURS.get(init, "#555555")
        ax.plot(
            epochs,
            [e["val_accuracy"] for e in run["history"]],
            color=colour,
            marker="o",
            markersize=3,
            label=f"{init}: validation",
        )
        train = [e["train_accuracy"] for e in run["history"]]
        ax.plot(epochs, train, color=colour, linestyle="--", alpha=0.6, label=f"{init}: train")
        ax.axvline(run["best_epoch"], color=colour, linestyle=":", alpha=0.5)
    history = next(iter(report["results"].values()))["history"]
    switches = [b["epoch"] - 0.5 for a, b in pairwise(history) if a["phase"] != b["phase"]]
    for x in switches:
        ax.axvline(x, color="black", alpha=0.3)
        ax.text(x, ax.get_ylim()[0], " unfreeze", fontsize=8, alpha=0.6, va="bottom")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{report['recipe']} on {report['dataset']} (dotted: best epoch)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(report: dict[str, Any], path: Path) -> None:
    """Row-normalised test confusion matrices, one panel per init."""
    import numpy as np

    plt = _pyplot()
    inits = list(report["results"])
    fig, axes = plt.subplots(1, len(inits), figsize=(5.2 * len(inits), 4.8), dpi=110)
    axes = np.atleast_1d(axes)
    for ax, init in zip(axes, inits, strict=True):
        counts = np.array(report["results"][init]["test"]["confusion"], dtype=float)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        ticks = range(len(report["classes"]))
        ax.set_xticks(ticks, report["classes"], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(ticks, report["classes"], fontsize=7)
        for (i, j), share in np.ndenumerate(shares):
            if share >= 0.05:
                ax.text(
                    j,
                    i,
                    f"{100 * share:.0f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if share > 0.5 else "black",
                )
        accuracy = report["results"][init]["test"]["accuracy"]
        ax.set_title(f"{init}: {accuracy:.1f}%", fontsize=10)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def read_recipe_reports(run_dir: Path) -> list[dict[str, Any]]:
    """Every fine-tune report under ``run_dir/finetune`` (unreadable ones skipped)."""
    reports = []
    for path in sorted((run_dir / "finetune").glob(f"*/*/{REPORT_JSON}")):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(report, dict) and report.get("format") == FORMAT:
            reports.append(report)
    return reports
