"""The distillation table of ``selfsup report``: teacher, distilled student, undistilled student.

For each distillation run among the runs given, the table puts its teacher
(the run directory ``method.teacher`` names, or the folder of its file) and
the same student trained without a teacher (a run given beside it with the
same backbone, dataset and number of steps, any other method) side by side,
with each one's frozen-feature accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfsup.eval.reports.report import load_report_if_any
from selfsup.pipelines.checkpoint.run_dir import CONFIG_FILE, read_summary
from selfsup.pipelines.config import RunConfig, load_saved_config

NO_CONTROL = "not given: pass the run of the same student trained without a teacher"


@dataclass
class RunFacts:
    path: Path
    config: RunConfig
    steps: int | None

    @property
    def key(self) -> tuple[str, str, int | None]:
        """What makes two runs the same student: backbone, dataset, steps."""
        return self.config.model.backbone, self.config.data.dataset, self.steps


def run_facts(path: Path) -> RunFacts | None:
    if not (path / CONFIG_FILE).is_file():
        return None
    steps = read_summary(path).get("step")
    return RunFacts(path, load_saved_config(path / CONFIG_FILE), steps)


def teacher_run_dir(teacher: str) -> Path | None:
    """The run directory a ``method.teacher`` path belongs to, where it is one."""
    path = Path(teacher)
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    return None


def _accuracy_cells(run: Path | None, datasets: list[str]) -> list[str]:
    report = load_report_if_any(run) if run is not None else None
    by_dataset = {r["dataset"]: r for r in (report or {}).get("probe", {}).get("results", [])}
    cells = []
    for name in datasets:
        result = by_dataset.get(name)
        trained = result["trained"] if result else None
        cells += (
            [f"{trained['knn_top1']:.2f}", f"{trained['linear_top1']:.2f}"]
            if trained
            else ["-", "-"]
        )
    return cells


def distillation_tables(runs: list[Path]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` for each distillation run among ``runs``."""
    facts = [f for f in map(run_facts, runs) if f is not None]
    tables = []
    for student in (f for f in facts if f.config.method.name == "distill"):
        teacher_path: str = getattr(student.config.method, "teacher", "")
        teacher_dir = teacher_run_dir(teacher_path)
        control = next(
            (f for f in facts if f.config.method.name != "distill" and f.key == student.key), None
        )
        datasets = _probed_datasets([student.path, teacher_dir, control and control.path])
        header = ["role", "run", "backbone"]
        for name in datasets:
            header += [f"{name} kNN", f"{name} linear"]
        teacher_backbone = (
            load_saved_config(teacher_dir / CONFIG_FILE).model.backbone if teacher_dir else "-"
        )
        rows = [
            [
                "teacher",
                str(teacher_dir or teacher_path),
                teacher_backbone,
                *_accuracy_cells(teacher_dir, datasets),
            ],
            [
                "distilled student",
                student.path.name,
                student.config.model.backbone,
                *_accuracy_cells(student.path, datasets),
            ],
            [
                "undistilled student",
                control.path.name if control else NO_CONTROL,
                student.config.model.backbone,
                *_accuracy_cells(control.path if control else None, datasets),
            ],
        ]
        title = f"distillation: {student.path.name} from teacher {teacher_path} (top-1 %)"
        tables.append((title, header, rows))
    return tables


def _probed_datasets(runs: list[Any]) -> list[str]:
    names: list[str] = []
    for run in runs:
        report = load_report_if_any(run) if run is not None else None
        for result in (report or {}).get("probe", {}).get("results", []):
            if result["dataset"] not in names:
                names.append(result["dataset"])
    return names
