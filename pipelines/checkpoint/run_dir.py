"""A run directory: resolved config, log file, checkpoints, TensorBoard events, reports.

Layout::

    <run_dir>/config.yaml      the resolved config (what ``selfsup train`` ran)
    <run_dir>/train.log        log lines of every start of the run
    <run_dir>/checkpoints/     see selfsup.pipelines.checkpoint.manager
    <run_dir>/tb/              TensorBoard event files
    <run_dir>/backbone.pt      final backbone weights (weights-only file)
    <run_dir>/backbone.safetensors  the same weights as safetensors
    <run_dir>/summary.json     steps, time, throughput, final loss
    <run_dir>/report.{json,md} probe results (selfsup probe)
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from selfsup.atomic import write_atomic
from selfsup.errors import ConfigError
from selfsup.logs import log_to_file
from selfsup.pipelines.checkpoint.folders import list_checkpoints
from selfsup.pipelines.checkpoint.run_lock import LOCK_FILE
from selfsup.pipelines.config import RunConfig, load_saved_config, save_config, to_dict

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
CHECKPOINT_DIR = "checkpoints"
# selfsup's own marker: a folder is a run directory when it holds this file
# (runs of earlier versions: config.yaml together with train.log).
RUN_MARKER = "selfsup-run.json"
RUN_FORMAT = "selfsup.run/1"
BACKBONE_FILE = "backbone.pt"
BACKBONE_SAFETENSORS = "backbone.safetensors"  # the same weights in a format carrying no code
SUMMARY_FILE = "summary.json"
TB_DIR = "tb"

# Sections that define the network: a checkpoint cannot be resumed under others.
STRUCTURAL_SECTIONS = ("model", "method")
# Paths to files whose contents the run checks itself: a moved teacher is the
# same teacher if its weights' SHA-256 is (selfsup.pipelines.train.teacher).
RELOCATABLE_KEYS = ("method.teacher",)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ, mapped to (old, new)."""
    a, b = flatten(to_dict(old)), flatten(to_dict(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


# What a folder may hold before a run's first start: nothing, the files
# submitit writes into a SLURM job's folder (which is the run directory), or
# what a start that failed before its config was saved left: its log, its lock.
BEFORE_FIRST_START = re.compile(
    r"^\d+(_\d+)*_(submitted\.pkl|submission\.sh|log\.out|log\.err|result\.pkl)$"
    r"|^\.?submission_file_\w+\.sh$"  # submitit writes it hidden (a dot first) since 1.5
    rf"|^{re.escape(LOG_FILE)}$|^{re.escape(LOCK_FILE)}(\..*)?$"
)
# What a finished run writes at its top level: weights, summary, reports.
RUN_RESULTS = (
    BACKBONE_FILE,
    BACKBONE_SAFETENSORS,
    SUMMARY_FILE,
    "report.md",
    "report.json",
    "loss.png",
)
# Files a run directory owns at its top level (nothing else may write them).
RUN_DIR_FILES = (RUN_MARKER, CONFIG_FILE, LOG_FILE, *RUN_RESULTS)
# What a fresh start with checkpoint.overwrite moves aside: the whole earlier run
# but the log (which the new start is writing, and which keeps every start's lines).
RUN_OUTPUTS = (RUN_MARKER, CONFIG_FILE, CHECKPOINT_DIR, TB_DIR, *RUN_RESULTS, "finetune")


def check_run_dir(config: RunConfig, resuming: bool) -> None:
    """Refuse to write into a folder that is not a run, or over a run not being resumed."""
    run_dir = config.resolved_run_dir()
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir {run_dir} is a file; choose a folder (run_dir=... or name=...)")
    if (run_dir / CONFIG_FILE).is_file() and not is_run_dir(run_dir):
        raise ConfigError(
            f"run_dir {run_dir} holds a {CONFIG_FILE} that is not a selfsup run's (no "
            f"{RUN_MARKER}); choose a new or empty folder (run_dir=... or name=...)"
        )
    if not is_run_dir(run_dir):
        names = (p.name for p in run_dir.iterdir())
        strangers = sorted(n for n in names if not BEFORE_FIRST_START.match(n))
        if strangers:
            shown = ", ".join(strangers[:3]) + (" ..." if len(strangers) > 3 else "")
            raise ConfigError(
                f"run_dir {run_dir} exists and is not a selfsup run directory (it holds {shown} "
                "and no config.yaml); choose a new or empty folder (run_dir=... or name=...)"
            )
        return
    has_checkpoints = bool(list_checkpoints(run_dir / CHECKPOINT_DIR))
    if has_checkpoints and not resuming and not config.checkpoint.overwrite:
        raise ConfigError(
            f"{run_dir} holds the checkpoints of an earlier run and checkpoint.resume=false would "
            "start over in it: resume it (checkpoint.resume=true), choose a new run_dir, or pass "
            "--overwrite to move the earlier run aside"
        )


def move_earlier_run_aside(run_dir: Path) -> Path | None:
    """Move an earlier run's outputs into ``replaced-<time>/`` (a fresh start with overwrite)."""
    present = [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if not present:
        return None
    aside = run_dir / time.strftime("replaced-%Y%m%d-%H%M%S")
    aside.mkdir()
    for path in present:
        path.rename(aside / path.name)
    log.info("checkpoint.overwrite: moved the earlier run's outputs to %s", aside)
    return aside


def create_run_dir(config: RunConfig) -> Path:
    """Create the run directory (after checking it may be one), ready for its lock."""
    check_run_dir(config, resuming=True)  # whether to resume is decided under the lock
    run_dir = config.resolved_run_dir()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create run_dir {run_dir} ({exc.strerror}); choose a writable place "
            "(run_dir=... or output_dir=...)"
        ) from None
    return run_dir


def prepare_run_dir(config: RunConfig, resuming: bool, is_main: bool = True) -> Path:
    """Check the run directory (see :func:`check_run_dir`) and create it; write nothing yet.

    A resumed run of another architecture is refused here, before a file changes.
    """
    check_run_dir(config, resuming)
    run_dir = config.resolved_run_dir()
    if resuming and (run_dir / CONFIG_FILE).is_file():
        changes = config_changes(load_saved_config(run_dir / CONFIG_FILE), config)
        structural = {
            k: v
            for k, v in changes.items()
            if k.split(".")[0] in STRUCTURAL_SECTIONS and k not in RELOCATABLE_KEYS
        }
        if structural:
            listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in structural.items())
            raise ConfigError(
                f"{run_dir} holds checkpoints of another model ({listed}); "
                "use a new run directory (name=... or run_dir=...) or the original settings"
            )
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def commit_run_config(config: RunConfig, resuming: bool, is_main: bool = True) -> None:
    """Once the run can start (its checkpoint loaded): log changes, save ``config.yaml``.

    Called after a resume succeeded, so a refused checkpoint leaves the run
    directory as it was; a fresh start with ``checkpoint.overwrite`` moves the
    earlier run aside here.
    """
    run_dir = config.resolved_run_dir()
    saved_path = run_dir / CONFIG_FILE
    if resuming and saved_path.is_file():
        for key, (old, new) in config_changes(load_saved_config(saved_path), config).items():
            log.info("config changed since the checkpoint: %s %r -> %r", key, old, new)
    if is_main:
        if not resuming and config.checkpoint.overwrite:
            move_earlier_run_aside(run_dir)
        save_config(config, saved_path)
        if not (run_dir / RUN_MARKER).is_file():
            write_atomic(run_dir / RUN_MARKER, json.dumps({"format": RUN_FORMAT}) + "\n")


def run_log_file(
    run_dir: Path, enabled: bool = True, earlier: Sequence[logging.LogRecord] = ()
) -> AbstractContextManager[None]:
    """selfsup's log lines copied into ``<run_dir>/train.log`` while the block runs.

    ``earlier``: lines logged before the run directory could be written to.
    """
    return log_to_file(run_dir / LOG_FILE, enabled=enabled, earlier=earlier)


# summary.json's fields, each with the types a reader accepts (None: not recorded).
SUMMARY_TYPES: dict[str, tuple[type, ...]] = {
    "step": (int, type(None)),
    "total_steps": (int, type(None)),
    "final_loss": (int, float, type(None)),
}


def read_summary(run_dir: Path) -> dict[str, Any]:
    """A run's ``summary.json`` ({} before the run finished); one line when it is damaged."""
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} is not valid JSON ({type(exc).__name__}); it is damaged: delete it (the run "
            "rewrites it when it finishes)"
        ) from None
    wrong = [
        key
        for key, kinds in SUMMARY_TYPES.items()
        if isinstance(summary, dict)
        and (not isinstance(summary.get(key), kinds) or isinstance(summary.get(key), bool))
    ]
    if not isinstance(summary, dict) or wrong:
        raise ConfigError(
            f"{path} is not a run summary (wrong {', '.join(wrong) or 'shape'}); it is damaged: "
            "delete it (the run rewrites it when it finishes)"
        )
    return summary


def find_run_dir(path: Path) -> Path | None:
    """The run directory ``path`` is, or sits in (a checkpoint folder, a backbone file)."""
    for candidate in (path, path.parent, path.parent.parent):
        if is_run_dir(candidate):
            return candidate
    return None


def is_run_dir(path: Path) -> bool:
    """``path`` is a selfsup run directory: it holds the marker (or, from earlier versions,
    a config.yaml together with a train.log)."""
    if (path / RUN_MARKER).is_file():
        return True
    return (path / CONFIG_FILE).is_file() and (path / LOG_FILE).is_file()
