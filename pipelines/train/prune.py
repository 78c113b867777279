"""One-shot magnitude pruning of trained weights (``selfsup prune``) and its recovery.

Pruning reads a backbone (run directory, checkpoint or ``.pt``), masks the
layers ``sparsity.*`` covers by magnitude (the same rule and layers as sparse
training) and writes a ``backbone.pt`` with the masks folded in: real zeros,
the library's own keys, loadable with ``torch.load(weights_only=True)``.

Recovery is a short distillation run from the dense model into the pruned one
(``method.name=distill``, the dense backbone as the frozen teacher, the pruned
weights as the student's start and its masks held fixed): the pairing of the
two features this package has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from selfsup.errors import ConfigError
from selfsup.pipelines.checkpoint.run_dir import BACKBONE_FILE, CONFIG_FILE
from selfsup.pipelines.checkpoint.weights import BackboneInfo, load_backbone, save_backbone
from selfsup.pipelines.config import (
    config_from_dict,
    config_keys_in_errors,
    load_saved_config,
    to_dict,
    with_overrides,
)
from selfsup.ssl.sparsity import (
    SparsityConfig,
    fold_masks,
    layer_sparsity,
    masked_pruner,
    overall_sparsity,
)

log = logging.getLogger(__name__)


@dataclass
class Pruned:
    path: Path
    info: BackboneInfo
    overall: float  # share of zeros over the covered layers
    layers: dict[str, float]  # each covered layer's share of zeros
    dense: Path  # the dense model's weights: the recovery's teacher


def sparsity_settings(target: float, pattern: str, **options: Any) -> SparsityConfig:
    """A checked ``sparsity:`` section for a one-shot prune at step 0."""
    config = SparsityConfig(target=target, pattern=pattern, schedule="one_shot", start=0, **options)
    with config_keys_in_errors():
        config.check()
    return config


def prune_backbone(source: str | Path, settings: SparsityConfig, out: Path) -> Pruned:
    """Prune ``source`` one-shot to ``settings`` and write the result to ``out`` (atomically)."""
    backbone, info = load_backbone(source)
    pruner, layers = masked_pruner(backbone.trunk, settings)
    pruner.set_level(settings.final_level)
    shares, overall = layer_sparsity(backbone.trunk), overall_sparsity(backbone.trunk)
    fold_masks(backbone.trunk)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = replace(info, origin=str(out))
    save_backbone(out, backbone.trunk.state_dict(), written)
    log.info(
        "pruned %s to %.1f%% zeros (%s) in %d layers: %s",
        source,
        100 * overall,
        settings.pattern,
        len(layers),
        out,
    )
    return Pruned(out, written, overall, shares, dense_weights(info))


def dense_weights(info: BackboneInfo) -> Path:
    """The dense model's weights file (the recovery's teacher)."""
    origin = Path(info.origin)
    if origin.is_file():
        return origin
    if info.run_dir is not None and (info.run_dir / BACKBONE_FILE).is_file():
        return info.run_dir / BACKBONE_FILE
    return origin  # a checkpoint folder: the teacher loader reads it too


def recovery_overrides(
    pruned: Pruned, teacher: Path, settings: SparsityConfig, steps: int, run_dir: Path
) -> list[str]:
    """The distillation run that recovers ``pruned`` from its dense ``teacher``."""
    return [
        f"run_dir={run_dir}",
        f"model.init_weights={pruned.path}",
        f"method.teacher={teacher}",
        f"sparsity.target={settings.target}",
        f"sparsity.pattern={settings.pattern}",
        f"sparsity.block_shape=[{settings.block_shape[0]},{settings.block_shape[1]}]",
        "sparsity.schedule=one_shot",
        "sparsity.start=0",
        f"train.max_steps={steps}",
        "optim.warmup_epochs=0",
        f"checkpoint.every_steps={max(1, steps // 2)}",
    ]


def recover(
    pruned: Pruned, settings: SparsityConfig, steps: int, run_dir: Path, extra: list[str]
) -> Path:
    """Distil the dense model into ``pruned`` for ``steps`` steps; the recovered ``backbone.pt``.

    The run starts from the dense run's own config (data, augmentation,
    optimiser, at a hundredth of its learning rate: the weights are trained
    already, and a tenth was measured to undo more than it recovers) with
    ``method`` switched to distillation; ``extra`` overrides come last.
    """
    from selfsup.pipelines.train.trainer import train  # the training stack, only when used

    if pruned.info.run_dir is None or not (pruned.info.run_dir / CONFIG_FILE).is_file():
        raise ConfigError(
            f"recovery needs the dense run's config.yaml next to its weights; pass the run "
            f"directory rather than {pruned.info.origin}"
        )
    values = to_dict(load_saved_config(pruned.info.run_dir / CONFIG_FILE))
    kept = {k: v for k, v in values["method"].items() if k in ("temperature",)}
    values["method"] = {"name": "distill", "teacher": str(pruned.dense), **kept}
    values["checkpoint"]["resume"] = True
    config = config_from_dict(values, source="the dense run's config")
    overrides = recovery_overrides(pruned, pruned.dense, settings, steps, run_dir)
    overrides.append(f"optim.base_lr={config.optim.base_lr / 100}")
    config = with_overrides(config, [*overrides, *extra])
    train(config)
    return run_dir / BACKBONE_FILE
