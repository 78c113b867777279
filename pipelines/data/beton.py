"""FFCV ``.beton`` files: writing, verifying and opening them.

A selfsup ``.beton`` holds two fields, ``image`` (``RGBImageField``) and
``label`` (``IntField``), written from any dataset selfsup reads
(CIFAR-10 pickles or image folders, Fashion-MNIST IDX, ImageNet-style class
folders).

ffcv 1.0.2's ``DatasetWriter`` has sharp edges this module guards against:

- an invalid ``write_mode`` (say ``'jpeg'``) kills its worker processes and
  the writer then waits for them forever: arguments are validated first, and
  a watchdog thread ends the wait with an error as soon as a worker dies;
- a worker that hits a broken image dies the same way: the image's path and
  the reason reach the user instead of a hang;
- a crash half-way leaves a truncated file: the writer fills a temporary file
  that is renamed only once it is complete and verified.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import numpy as np

from selfsup.atomic import atomic_path
from selfsup.errors import DataError, DependencyError
from selfsup.pipelines.data.datasets import ImageDataset

log = logging.getLogger(__name__)

WRITE_MODES = ("raw", "jpg", "proportion", "smart")
IMAGE_FIELD = "image"
LABEL_FIELD = "label"
INSTALL_HINT = "install it with scripts/install-ffcv.sh (see README, 'FFCV')"


def require_ffcv() -> None:
    """Raise a one-line :class:`DependencyError` when ffcv cannot be imported."""
    try:
        import ffcv
        import ffcv.loader  # noqa: F401
    except ImportError as exc:
        raise DependencyError(f"ffcv is not installed ({exc}); {INSTALL_HINT}") from exc


def ffcv_available() -> bool:
    try:
        require_ffcv()
    except DependencyError:
        return False
    return True


@dataclass(frozen=True)
class WriteOptions:
    """How images are stored (``RGBImageField``'s arguments)."""

    mode: str = "jpg"  # raw | jpg | proportion | smart
    max_resolution: int | None = None  # longer side cap in pixels; None keeps the size
    jpeg_quality: int = 90
    compress_probability: float = 0.5  # share of images stored as JPEG in 'proportion' mode
    smart_threshold: int | None = None  # 'smart': JPEG when raw would exceed this many bytes
    workers: int = 0  # writer processes; 0: one per CPU core
    chunk_size: int = 100

    def validate(self) -> None:
        if self.mode not in WRITE_MODES:
            hint = " (ffcv calls JPEG mode 'jpg')" if self.mode.lower() == "jpeg" else ""
            raise DataError(
                f"unknown write mode '{self.mode}'{hint}; use one of {', '.join(WRITE_MODES)}"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise DataError(f"jpeg quality must be in 1..100, got {self.jpeg_quality}")
        if not 0.0 <= self.compress_probability <= 1.0:
            raise DataError(
                f"compress probability must be in [0, 1], got {self.compress_probability}"
            )
        if self.max_resolution is not None and self.max_resolution < 8:
            raise DataError(f"max resolution must be at least 8 px, got {self.max_resolution}")
        if self.workers < 0 or self.chunk_size < 1:
            raise DataError("workers must be >= 0 and chunk size >= 1")


@dataclass(frozen=True)
class BetonSummary:
    path: Path
    samples: int
    class_counts: list[int]
    bytes: int
    seconds: float
    options: WriteOptions

    def line(self) -> str:
        counts = [c for c in self.class_counts if c]
        spread = f"{min(counts):,}-{max(counts):,} per class" if counts else "no labels"
        res = f", max {self.options.max_resolution} px" if self.options.max_resolution else ""
        quality = f" q{self.options.jpeg_quality}" if self.options.mode != "raw" else ""
        return (
            f"wrote {self.path}: {self.samples:,} images, {len(counts)} classes ({spread}), "
            f"{self.bytes / 2**20:.1f} MiB, {self.options.mode}{quality}{res}, "
            f"{self.seconds:.1f}s"
        )


class _WriterFailed(Exception):
    pass


class _RecordingDataset:
    """Hands ffcv ``(HWC uint8 array, label)`` and records the first error for the parent.

    Runs inside ffcv's forked writer processes: an exception there only kills
    the worker, so its message is written to ``error_path`` first.
    """

    def __init__(self, dataset: ImageDataset, error_path: Path) -> None:
        self.dataset = dataset
        self.error_path = error_path
        self.parent_pid = os.getpid()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        try:
            image, label = self.dataset[index]
            return np.ascontiguousarray(image.permute(1, 2, 0).numpy()), int(label)
        except Exception as exc:
            if os.getpid() == self.parent_pid:
                raise
            if not self.error_path.exists():
                self.error_path.write_text(f"sample {index}: {exc}")
            # Leave without a traceback on stderr: the parent reports the error.
            os._exit(1)


@contextmanager
def _worker_watchdog(poll_s: float = 0.2) -> Iterator[None]:
    """Interrupt the main thread (SIGUSR1) when one of ffcv's writer processes fails.

    ffcv starts its workers with ``multiprocessing.Process`` and never joins
    them; the class it uses is swapped here for one that records each
    instance, so their exit codes can be watched.
    """
    import ffcv.writer

    started: list = []

    class RecordedProcess(ffcv.writer.Process):
        def start(self) -> None:
            super().start()
            started.append(self)

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(poll_s):
            if any(p.exitcode not in (None, 0) for p in list(started)):
                os.kill(os.getpid(), signal.SIGUSR1)
                return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _WriterFailed

    original = ffcv.writer.Process
    ffcv.writer.Process = RecordedProcess
    previous = signal.signal(signal.SIGUSR1, on_signal)
    thread = threading.Thread(target=watch, name="beton-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        signal.signal(signal.SIGUSR1, previous)
        ffcv.writer.Process = original
        for process in started:
            if process.exitcode is None:
                process.terminate()
            process.join(timeout=10)


def write_beton(dataset: ImageDataset, out: Path, options: WriteOptions) -> BetonSummary:
    """Write ``dataset`` to ``out`` (atomically) and verify the result."""
    options.validate()
    require_ffcv()
    if len(dataset) == 0:
        raise DataError("the dataset is empty; nothing to write")
    out = Path(out)
    if out.suffix != ".beton":
        raise DataError(f"output file {out} should end in .beton")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Written beside OUT under a temporary name, verified, then renamed over it;
    # any failure on the way removes the temporary file.
    with atomic_path(out) as tmp:
        summary = _write_and_verify(dataset, tmp, out, options)
    return BetonSummary(
        path=out,
        samples=summary.samples,
        class_counts=summary.class_counts,
        bytes=out.stat().st_size,
        seconds=time.perf_counter() - started,
        options=options,
    )


def _write_and_verify(
    dataset: ImageDataset, tmp: Path, out: Path, options: WriteOptions
) -> BetonContents:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    error_path = tmp.with_suffix(".error")
    source = _RecordingDataset(dataset, error_path)
    source[0]  # a broken first sample fails here, in this process, with its own message
    fields = {
        IMAGE_FIELD: RGBImageField(
            write_mode=options.mode,
            max_resolution=options.max_resolution,
            jpeg_quality=options.jpeg_quality,
            compress_probability=options.compress_probability,
            smart_threshold=options.smart_threshold,
        ),
        LABEL_FIELD: IntField(),
    }
    workers = options.workers or os.cpu_count() or 1
    writer = DatasetWriter(str(tmp), fields, num_workers=workers)
    try:
        with _worker_watchdog():
            writer.from_indexed_dataset(source, chunksize=options.chunk_size)
    except _WriterFailed:
        reason = error_path.read_text() if error_path.exists() else "a writer process crashed"
        raise DataError(f"writing {out} failed: {reason}") from None
    finally:
        _release_writer(writer)
        error_path.unlink(missing_ok=True)
    return verify_beton(tmp, expected_samples=len(dataset))


def _release_writer(writer: object) -> None:
    """Free the writer's shared memory when it stopped before doing so itself."""
    shared = getattr(writer, "metadata_sm", None)
    if shared is not None and not isinstance(shared, int):
        try:
            shared.close()
            shared.unlink()
        except (FileNotFoundError, OSError):
            pass


@dataclass(frozen=True)
class BetonContents:
    samples: int
    class_counts: list[int]
    image_modes: dict[str, int]


def verify_beton(path: Path, expected_samples: int | None = None) -> BetonContents:
    """Open ``path``, check its fields (and sample count), count labels per class."""
    reader = open_beton(path)
    samples = int(reader.num_samples)
    if expected_samples is not None and samples != expected_samples:
        raise DataError(f"{path} holds {samples} samples, expected {expected_samples}")
    labels = np.asarray(field_metadata(reader, LABEL_FIELD), dtype=np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"{path} holds negative labels")
    counts = np.bincount(labels).tolist() if labels.size else []
    from ffcv.fields.rgb_image import IMAGE_MODES

    names = {v: k for k, v in IMAGE_MODES.items()}
    modes, freq = np.unique(field_metadata(reader, IMAGE_FIELD)["mode"], return_counts=True)
    return BetonContents(
        samples,
        counts,
        {names.get(int(m), str(m)): int(f) for m, f in zip(modes, freq, strict=True)},
    )


def field_metadata(reader, name: str) -> np.ndarray:
    """The per-sample metadata column of field ``name`` (ffcv stores them as f0, f1, ...)."""
    return reader.metadata[f"f{list(reader.handlers).index(name)}"]


def open_beton(path: str | Path):  # -> ffcv.reader.Reader
    """ffcv's reader for a selfsup ``.beton``; :class:`DataError` naming the file otherwise."""
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader

    path = Path(path)
    if not path.is_file():
        raise DataError(f".beton file {path} does not exist; write one with `selfsup data write`")
    try:
        reader = Reader(str(path))
    except Exception as exc:  # numpy/ffcv raise many types for a bad file
        raise DataError(
            f"{path} is not a readable .beton file ({type(exc).__name__}: {exc}); it is truncated "
            "or was not written by ffcv: write it again with `selfsup data write`"
        ) from exc
    fields = dict(reader.handlers)
    image, label = fields.get(IMAGE_FIELD), fields.get(LABEL_FIELD)
    if not isinstance(image, RGBImageField) or not isinstance(label, IntField):
        found = ", ".join(f"{k} ({type(v).__name__})" for k, v in fields.items())
        raise DataError(
            f"{path} has fields {found}; selfsup needs '{IMAGE_FIELD}' (RGBImageField) and "
            f"'{LABEL_FIELD}' (IntField): write it with `selfsup data write`"
        )
    return reader
