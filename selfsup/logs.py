"""Logging set-up for every entry point: stderr for people, ``train.log`` in the run directory.

All of selfsup logs under the ``selfsup`` logger. In a job of several
processes only rank 0 speaks at INFO; the others report problems only, and the
few INFO lines logged with ``extra=EVERY_RANK`` (where each rank runs).
No torch import here, so the CLI can set up logging before any command runs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

LOGGER = "selfsup"
CONSOLE_FORMAT = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
FILE_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
# torchrun sets RANK, srun SLURM_PROCID; the first one present wins.
RANK_VARIABLES = ("RANK", "SLURM_PROCID")
EVERY_RANK = {"every_rank": True}  # extra= of an INFO line that every rank's stderr shows


def process_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's global rank under torchrun or srun; 0 when launched alone."""
    environ = os.environ if environ is None else environ
    for variable in RANK_VARIABLES:
        value = environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 0


def log_to_stderr(quiet: bool = False, replace: bool = True) -> None:
    """selfsup's lines on stderr: INFO on rank 0 (WARNING with ``quiet`` or on other ranks).

    ``replace=False`` keeps handlers someone installed already (a SLURM task
    started from a CLI process that set them up).
    """
    logger = logging.getLogger(LOGGER)
    if logger.handlers and not replace:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CONSOLE_FORMAT)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    if process_rank() != 0:
        handler.addFilter(_problems_or_every_rank)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)  # the run's log file keeps INFO lines even when quiet
    logger.propagate = False


def _problems_or_every_rank(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or getattr(record, "every_rank", False)


class _HeldRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def held_log_records() -> Iterator[list[logging.LogRecord]]:
    """selfsup's INFO records of the block, kept for a log file opened after it.

    A run builds everything before its run directory is written to; the lines
    of that build reach ``train.log`` once it exists (``log_to_file(earlier=...)``).
    """
    handler = _HeldRecords()
    logger = logging.getLogger(LOGGER)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


@contextmanager
def log_to_file(
    path: Path, enabled: bool = True, earlier: Sequence[logging.LogRecord] = ()
) -> Iterator[None]:
    """Copy selfsup's INFO lines into ``path`` (appending across restarts) while the block runs.

    ``earlier`` records (from :func:`held_log_records`) are written first.
    """
    if not enabled:
        yield
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(FILE_FORMAT)
    handler.setLevel(logging.INFO)
    for record in earlier:
        handler.handle(record)
    logger = logging.getLogger(LOGGER)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
