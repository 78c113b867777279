"""The ``monitor:`` section: online evaluation of a pretraining run, and its checks."""

from __future__ import annotations

from dataclasses import dataclass

from selfsup.errors import ConfigError
from selfsup.pipelines.config import RunConfig, register_check, register_section
from selfsup.ssl.method import METHODS

MONITOR = "monitor"  # the config section, the training hook and the meta.json entry


@dataclass
class MonitorConfig:
    """Online kNN / linear accuracy and collapse metrics while pretraining runs.

    Off by default (tiny test runs); the recipes turn it on. ``None`` for
    ``knn_k``, ``knn_temperature``, ``image_size`` and ``precision`` takes the
    ``probe:`` section's value (``image_size``: ``data.image_size``), so the
    online kNN and ``selfsup probe`` score the same features the same way.
    """

    enabled: bool = False
    every_steps: int | None = None  # None: at the end of every epoch (and the last step)
    bank_size: int = 5000  # labelled training-split images the kNN votes with
    test_size: int = 1000  # held-out (test-split) images scored
    batch_size: int = 256  # images per forward pass when embedding them
    knn_k: int | None = None
    knn_temperature: float | None = None
    image_size: int | None = None
    precision: str | None = None  # fp32 | bf16 autocast while embedding
    # An online linear classifier on the training batches' detached features and labels,
    # with its own SGD (solo-learn's and lightly's online classifier), scored on the
    # held-out images at each monitor step.
    linear: bool = False
    linear_lr: float = 0.1
    linear_momentum: float = 0.9
    # The collapse alarm: normalised std x sqrt(dim) (1 when healthy, 0 when collapsed)
    # or RankMe (effective rank) below these.
    collapse_std: float = 0.1
    collapse_rank: float = 2.0
    stop_on_collapse: bool = False  # stop with a checkpoint when the alarm goes off


def check_monitor(config: RunConfig) -> None:
    """Sizes and rates that cannot work, each named by its key."""
    monitor: MonitorConfig = config.monitor
    if not monitor.enabled:
        return
    positive = {
        "bank_size": monitor.bank_size,
        "test_size": monitor.test_size,
        "batch_size": monitor.batch_size,
        "every_steps": monitor.every_steps if monitor.every_steps is not None else 1,
        "knn_k": monitor.knn_k if monitor.knn_k is not None else 1,
        "linear_lr": monitor.linear_lr,
    }
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"config key 'monitor.{key}' must be positive, got {value}")
    if monitor.test_size < 2:
        raise ConfigError("config key 'monitor.test_size' must be at least 2 (RankMe, std)")
    if monitor.linear and not METHODS.get(config.method.name).features:
        givers = ", ".join(spec.name for spec in METHODS.values() if spec.features)
        raise ConfigError(
            f"monitor.linear learns from the features of the training forward, which "
            f"method.name={config.method.name} does not give ({givers} do): set "
            "monitor.linear=false (the online kNN and collapse metrics still run)"
        )
    if monitor.precision is not None and monitor.precision not in ("fp32", "bf16"):
        raise ConfigError(
            f"config key 'monitor.precision' must be fp32 or bf16 (or null: probe.precision), "
            f"got {monitor.precision!r}"
        )


register_section(MONITOR, MonitorConfig)
register_check(MONITOR, check_monitor)
