"""A run directory: resolved config, log file, checkpoints, TensorBoard events, reports.

Layout::

    <run_dir>/config.yaml      the resolved config (what ``selfsup train`` ran)
    <run_dir>/train.log        log lines of every start of the run
    <run_dir>/checkpoints/     see selfsup.pipelines.checkpoint.manager
    <run_dir>/tb/              TensorBoard event files
    <run_dir>/backbone.pt      final backbone weights (weights-only file)
    <run_dir>/summary.json     steps, time, throughput, final loss
    <run_dir>/report.{json,md} probe results (selfsup probe)
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from selfsup.errors import ConfigError
from selfsup.logs import log_to_file
from selfsup.pipelines.config import RunConfig, load_saved_config, save_config, to_dict

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
CHECKPOINT_DIR = "checkpoints"
BACKBONE_FILE = "backbone.pt"
SUMMARY_FILE = "summary.json"
TB_DIR = "tb"

# Sections that define the network: a checkpoint cannot be resumed under others.
STRUCTURAL_SECTIONS = ("model", "method")


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


def prepare_run_dir(config: RunConfig, resuming: bool, is_main: bool = True) -> Path:
    """Create the run directory and save the config; refuse structural changes on resume."""
    run_dir = config.resolved_run_dir()
    saved_path = run_dir / CONFIG_FILE
    if resuming and saved_path.is_file():
        changes = config_changes(load_saved_config(saved_path), config)
        structural = {k: v for k, v in changes.items() if k.split(".")[0] in STRUCTURAL_SECTIONS}
        if structural:
            listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in structural.items())
            raise ConfigError(
                f"{run_dir} holds checkpoints of another model ({listed}); "
                "use a new run directory (name=... or run_dir=...) or the original settings"
            )
        for key, (old, new) in changes.items():
            log.info("config changed since the checkpoint: %s %r -> %r", key, old, new)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, saved_path)
    return run_dir


def run_log_file(run_dir: Path, enabled: bool = True) -> AbstractContextManager[None]:
    """selfsup's log lines copied into ``<run_dir>/train.log`` while the block runs."""
    return log_to_file(run_dir / LOG_FILE, enabled=enabled)


def find_run_dir(path: Path) -> Path | None:
    """The run directory ``path`` is, or sits in (a checkpoint folder, a backbone file)."""
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    return None
