"""Typed run configuration: dataclass schema, YAML recipes and dotted overrides.

OmegaConf is used rather than pydantic because it merges YAML files and
``key=value`` command-line overrides against a dataclass schema natively (the
convention of Hydra, DINOv2 and torchtitan users), type-checks every merge,
and round-trips the resolved config to YAML for the run directory.

A recipe may start from another one with ``_base_: other.yaml`` (a path
relative to the recipe); keys in the recipe override the base.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from selfsup.atomic import write_atomic
from selfsup.errors import ConfigError, did_you_mean, one_line
from selfsup.pipelines.data.ffcv_loader import ORDERS as FFCV_ORDERS
from selfsup.pipelines.data.sources import DATASETS
from selfsup.pipelines.data.train_loader import DECODES, LOADERS
from selfsup.pipelines.runtime.cpus import AUTO
from selfsup.pipelines.runtime.engines import ENGINES
from selfsup.pipelines.runtime.engines.base import DEVICES, EVAL_PRECISIONS, PRECISIONS
from selfsup.pipelines.train.optim import OPTIMIZERS, SCHEDULES
from selfsup.registry import UnknownName
from selfsup.ssl.arguments import ArgumentError
from selfsup.ssl.backbones import SOURCES, VIT_POOLS
from selfsup.ssl.classifier import check_head, check_label_smoothing, check_logit_distillation
from selfsup.ssl.method import METHODS, BuildContext, MethodConfig
from selfsup.ssl.methods import default_method_config
from selfsup.ssl.sparsity import SparsityConfig

BASE_KEY = "_base_"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
FINETUNE_CROPS = ("pad", "resized")


@dataclass
class DataConfig:
    """Where pretraining images come from and how they are batched."""

    dataset: str = "cifar10"  # cifar10 | fashion_mnist | imagefolder
    path: str | None = None  # dataset folder or a root holding it; None: search default places
    # torchvision | ffcv | memory (the dataset held on the device) | auto (ffcv when installed
    # and beton set, else torchvision)
    loader: str = "torchvision"
    decode: str = "auto"  # JPEGs decoded by loader workers (cpu) or on the device (gpu); auto:
    # gpu on CUDA when the images are JPEGs (torchvision and ffcv loaders)
    memory_side: int | None = None  # memory loader: images held as side x side squares;
    # None: the dataset's own side (CIFAR-10, Fashion-MNIST), else data.image_size
    beton: str | None = None  # training images as an FFCV .beton (selfsup data write)
    ffcv_order: str = "random"  # random | quasi_random (less disk traffic, single process only)
    os_cache: bool = True  # ffcv: let the OS page cache hold the file (False: ffcv's own cache)
    batches_ahead: int = 3  # ffcv: batches prepared ahead of the training step
    image_size: int = 32  # side of each training view, in pixels
    batch_size: int = 256  # per process
    num_workers: int | str = "auto"  # DataLoader workers; auto: the CPUs of this process
    train_samples: int | None = None  # use the first N samples (quick runs)
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class AugmentConfig:
    """Multi-view SimCLR augmentation (Chen et al. 2020, appendix A)."""

    num_views: int = 2
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    hflip_prob: float = 0.5
    color_jitter_prob: float = 0.8
    color_jitter_strength: float = 1.0  # SimCLR's s: 1.0 on ImageNet, 0.5 on CIFAR
    grayscale_prob: float = 0.2
    blur_prob: float | None = None  # None: 0.5 from 64 px up, off below (as SimCLR on CIFAR)
    solarize_prob: float = 0.0


@dataclass
class ModelConfig:
    """Backbone architecture."""

    backbone: str = "resnet18"  # resnet18 | resnet50 | vit_tiny | vit_small | vit_base
    source: str = "auto"  # auto (torchvision ResNets, timm ViTs) | torchvision | timm
    cifar_stem: bool = False  # ResNets: 3x3 stride-1 first conv and no max-pool, for 32 px images
    patch_size: int | None = None  # ViTs: None -> 16 from 128 px up, else 4
    pool: str = "token"  # ViTs: features from the class token, or avg of the patch tokens
    channels_last: bool = True
    # Start from trained weights (a run directory, checkpoints/step_* folder or backbone .pt)
    # instead of a random initialisation: continued pretraining, or a pruned model's recovery.
    init_weights: str | None = None


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (linear warmup, then cosine)."""

    name: str = "lars"  # sgd | lars | adamw
    base_lr: float = 0.3  # per 256 images; lr = base_lr * global_batch / 256
    weight_decay: float = 1e-6
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 10.0
    min_lr_ratio: float = 0.0  # final lr as a fraction of the peak lr
    clip_grad_norm: float | None = None
    schedule: str = "cosine"  # cosine | step | onecycle (each after warmup_epochs)
    step_epochs: list[int] = field(default_factory=list)  # step: epochs where lr x step_gamma
    step_gamma: float = 0.1
    exclude_bias_and_norm: bool = True  # no weight decay (and no LARS scaling) on biases and norms


@dataclass
class TrainConfig:
    """Length, precision and logging of a pretraining run."""

    epochs: int = 100
    max_steps: int | None = None  # stop after this many optimizer steps; the schedule ends there
    precision: str = "bf16"  # fp32 | bf16 | fp16 (fp16 needs a GPU)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    log_every: int = 10  # steps between TensorBoard scalars
    image_every: int = 500  # steps between reconstruction images (mae, simmim) in TensorBoard
    # torch.compile the model (single and ddp engines); auto: on CUDA, off on the CPU
    compile: bool | str = "auto"
    compile_mode: str = "default"  # default | reduce-overhead | max-autotune-no-cudagraphs
    peak_tflops: float | None = None  # per device, for MFU where selfsup has no table entry
    engine: str = "single"  # single | ddp | deepspeed (ddp/deepspeed under torchrun or srun)
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    sync_batchnorm: bool = False  # ddp: BatchNorm statistics over all processes
    zero_stage: int = 2  # deepspeed: ZeRO stage 0-3
    deepspeed_config: str | None = None  # deepspeed: JSON file merged over the generated config
    # Training hooks to run beyond those their own section turns on (sparsity):
    # names registered in selfsup.pipelines.train.hooks.HOOKS.
    hooks: list[str] = field(default_factory=list)


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept."""

    every_steps: int = 500
    keep_last: int = 2
    keep_every: int | None = None  # also keep every checkpoint whose step is a multiple of this
    resume: bool = True  # resume automatically when the run directory holds a checkpoint
    # resume=false in a run directory with checkpoints: move the old run aside
    # (into replaced-<time>/) instead of refusing (`selfsup train --overwrite`).
    overwrite: bool = False
    # The run directory's lock (selfsup.pipelines.checkpoint.run_lock): wait for a
    # live holder instead of refusing (`--wait-for-lock`), and how long a holder
    # may go without renewing before its lock counts as stale (a dead node).
    wait_for_lock: bool = False
    lock_lease_s: float = 120.0


@dataclass
class ProbeConfig:
    """Frozen-feature evaluation: linear classifier and kNN."""

    datasets: list[str] = field(default_factory=lambda: ["cifar10", "fashion_mnist"])
    data_path: str | None = None  # root holding the datasets; None: search default places
    image_size: int | None = None  # None: data.image_size
    batch_size: int = 512
    num_workers: int | str = "auto"  # auto: the CPUs of this process
    train_samples: int | None = None  # None: the whole training split
    test_samples: int | None = None  # None: the whole test split
    epochs: int = 100  # linear classifier epochs over cached features
    lr: float = 1e-3
    weight_decay: float = 1e-4
    knn_k: int = 200
    knn_temperature: float = 0.1
    baseline: bool = True  # also probe the same backbone at random initialisation
    precision: str = "bf16"  # autocast for feature extraction: fp32 | bf16
    loader: str = "torchvision"  # torchvision | ffcv | auto (ffcv where betons are given)
    betons: dict[str, str] = field(default_factory=dict)  # "<dataset>_<train|test>" -> .beton


@dataclass
class FinetuneConfig:
    """Full fine-tune transfer (``selfsup finetune``); recipes in configs/finetune/ set these.

    ``recipe``: ``head_then_unfreeze`` (frozen base + MLP head for ``epochs``,
    then everything for ``unfreeze_epochs`` at ``unfreeze_lr_factor`` x the
    rate), ``full`` (every layer from the start for ``epochs``) or ``linear``
    (the frozen-feature probe of the ``probe:`` section).
    """

    # head_then_unfreeze | full | linear, or any recipe registered in selfsup.eval.finetune.recipes
    recipe: str = "full"
    datasets: list[str] = field(default_factory=lambda: ["cifar10", "fashion_mnist"])
    data_path: str | None = None  # root holding the datasets; None: search default places
    image_size: int | None = None  # None: the backbone's training resolution
    train_samples: int | None = 10000  # training images (None: the split less validation)
    val_fraction: float = 0.1  # validation images, as a share of the training images
    test_samples: int | None = None  # None: the whole test split, scored once
    batch_size: int = 128
    num_workers: int | str = "auto"
    epochs: int = 10  # full: all epochs; head_then_unfreeze: phase 1 (frozen base)
    unfreeze_epochs: int = 10  # head_then_unfreeze: phase 2 (everything trained)
    unfreeze_lr_factor: float = 0.1  # phase 2's rate as a share of phase 1's
    head_hidden: list[int] = field(default_factory=list)  # [] linear head; [256, 128] MLP
    head_dropout: float = 0.0
    optimizer: str = "adamw"  # sgd | lars | adamw
    base_lr: float = 1e-3  # per 256 images, as optim.base_lr
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # cosine | step | onecycle
    step_epochs: list[int] = field(default_factory=list)  # step: epochs where lr x step_gamma
    step_gamma: float = 0.1
    label_smoothing: float = 0.1
    layer_decay: float | None = None  # ViTs: None -> 0.65 (0.75 above vit_base); 1.0: off
    drop_path: float = 0.1  # ViTs: stochastic depth rate
    crop: str = "pad"  # pad (random crop of the padded image) | resized (random-resized crop)
    crop_padding: int = 4
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])  # crop=resized
    hflip_prob: float = 0.5
    randaugment: int = 0  # RandAugment magnitude (2 ops per image, e.g. 9); 0: off
    mixup: float = 0.0  # timm's Mixup alpha (0: off)
    cutmix: float = 0.0  # timm's CutMix alpha (0: off)
    baseline: bool = True  # also fine-tune the same architecture from random init (scratch)
    log_every: int = 10  # steps between TensorBoard scalars
    # Logit distillation (Hinton et al.): a fine-tuned teacher classifier (its classifier.pt,
    # or a folder holding <dataset>/<recipe>/pretrained/classifier.pt). When set, a third
    # fine-tune, "distilled", starts from the same weights as "pretrained" and learns from
    # (1 - distill_alpha) x label loss + distill_alpha x T^2 x KL(teacher || student).
    teacher: str = ""
    distill_temperature: float = 4.0
    distill_alpha: float = 0.5


@dataclass
class RunConfig:
    """Everything a pretraining run needs; saved as ``config.yaml`` in its run directory."""

    name: str = "run"
    output_dir: str = "runs"
    run_dir: str | None = None  # None: <output_dir>/<name>
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # The chosen method's own dataclass (selfsup.ssl.method): its fields are
    # the valid ``method.*`` keys, so the schema follows ``method.name``.
    method: MethodConfig = field(default_factory=lambda: default_method_config(DEFAULT_METHOD))
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # Weight sparsity of the backbone (selfsup.ssl.sparsity): off while target is 0.
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(self.output_dir) / self.name


DEFAULT_METHOD = "simclr"

# Arguments that ssl's errors name, and the config keys they come from.
ARGUMENT_KEYS = {
    "image_size": "data.image_size",
    "num_views": "augment.num_views",
    "backbone": "model.backbone",
    "source": "model.source",
    "patch_size": "model.patch_size",
    "pool": "model.pool",
    "method": "method.name",
}


def choices() -> dict[str, tuple[Any, ...]]:
    """Keys with a fixed set of values, each read from the registry that owns it."""
    return {
        "data.dataset": DATASETS.names(),
        "data.loader": (*LOADERS.names(), "auto"),
        "data.decode": DECODES,
        "data.ffcv_order": FFCV_ORDERS,
        "probe.loader": ("torchvision", "ffcv", "auto"),
        "model.source": SOURCES,
        "model.pool": VIT_POOLS,
        "method.name": METHODS.names(),
        "optim.name": OPTIMIZERS.names(),
        "optim.schedule": SCHEDULES.names(),
        "finetune.optimizer": OPTIMIZERS.names(),
        "finetune.schedule": SCHEDULES.names(),
        "finetune.crop": FINETUNE_CROPS,
        "train.precision": tuple(PRECISIONS),
        "train.device": DEVICES,
        "train.engine": ENGINES.names(),
        "train.compile": (True, False, AUTO),
        "train.compile_mode": COMPILE_MODES,
        "probe.precision": EVAL_PRECISIONS,
    }


@contextmanager
def config_keys_in_errors(
    method: MethodConfig | None = None, section: str | None = None
) -> Iterator[None]:
    """Turn ssl's errors (which name its arguments) into ConfigErrors naming config keys.

    An argument is a ``method.*`` field of ``method``, an option of ``section``
    (``finetune.head_hidden``), or one of :data:`ARGUMENT_KEYS`.
    """
    try:
        yield
    except UnknownName as exc:
        raise ConfigError(str(exc)) from exc
    except ArgumentError as exc:
        message = str(exc)
        method_fields = {f.name for f in dataclasses.fields(method)} if method else set()
        for argument in exc.arguments:
            if argument in method_fields:
                key = f"method.{argument}"
            else:
                key = f"{section}.{argument}" if section else ARGUMENT_KEYS[argument]
            if message.startswith(f"{argument} "):
                message = f"config key '{key}' " + message[len(argument) + 1 :]
            message = re.sub(rf"(?<![\w.']){re.escape(argument)}(?==)", key, message)
        raise ConfigError(message) from exc


def not_a_choice(key: str, value: Any, allowed: tuple[str, ...]) -> ConfigError:
    """The error for a config value outside its registry's names."""
    return ConfigError(
        f"config key '{key}' is '{value}'{did_you_mean(str(value), allowed)}; "
        f"valid values: {', '.join(allowed)}"
    )


def _method_config(name: Any) -> MethodConfig:
    try:
        return default_method_config(str(name))
    except UnknownName as exc:
        raise not_a_choice("method.name", name, exc.choices) from None


Layer = tuple[DictConfig, str]  # parsed YAML or overrides, and where they came from


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Build a :class:`RunConfig` from a YAML recipe (optional) and ``key=value`` overrides.

    Raises :class:`ConfigError` naming the key and the closest valid one for an
    unknown key, a wrong type, or a value outside its choices.
    """
    layers: list[Layer] = []
    if path is not None:
        layers.append((_read_recipe(Path(path)), str(path)))
    if overrides:
        layers.append((_parse_overrides(overrides), "command line"))
    return _build(layers)


def with_section_overrides(config: RunConfig, section: str, overrides: Sequence[str]) -> RunConfig:
    """Apply overrides to one section; keys may omit the section prefix (``epochs=50``)."""
    prefixed = [o if o.startswith(f"{section}.") else f"{section}.{o}" for o in overrides]
    return with_overrides(config, prefixed)


def with_overrides(config: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """Apply ``key=value`` overrides (full dotted keys) over ``config``."""
    if not overrides:
        return config
    return _build([(_parse_overrides(overrides), "command line")], base=config)


def with_recipe(config: RunConfig, path: Path) -> RunConfig:
    """Merge a recipe file (e.g. ``configs/finetune/full.yaml``) over ``config``."""
    return _build([(_read_recipe(path), str(path))], base=config)


def config_from_dict(values: dict[str, Any], source: str = "saved config") -> RunConfig:
    """Rebuild a :class:`RunConfig` from a plain dict (for example a run's ``config.yaml``)."""
    return _build([(OmegaConf.create(values), source)])


def _build(layers: Sequence[Layer], base: RunConfig | None = None) -> RunConfig:
    """Merge ``layers`` over ``base`` against the schema of the method they choose."""
    base = base or RunConfig()
    name = _chosen_method(layers, base.method.name)
    if name != base.method.name:
        base = dataclasses.replace(base, method=_method_config(name))
    merged: DictConfig = OmegaConf.structured(base)
    for layer, source in layers:
        merged = _merge(merged, layer, source)
    try:
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:  # an interpolation ${...} that does not resolve
        sources = ", ".join(source for _, source in layers) or "defaults"
        raise ConfigError(
            f"config key '{exc.full_key}' (from {sources}) cannot be resolved: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0]}; an interpolation ${{...}} must "
            "name an existing key, without cycles"
        ) from None
    assert isinstance(config, RunConfig)
    validate(config)
    return config


def _chosen_method(layers: Sequence[Layer], default: Any) -> Any:
    """The last ``method.name`` the layers set (the schema of ``method.*`` depends on it)."""
    name: Any = default
    for layer, _ in layers:
        section = layer.get("method") if isinstance(layer, DictConfig) else None
        if isinstance(section, DictConfig) and "name" in section:
            name = section["name"]
    return name


def to_yaml(config: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: RunConfig, path: Path) -> None:
    """Write the resolved config atomically (a crash never leaves half a file)."""
    write_atomic(path, to_yaml(config))


def load_saved_config(path: Path) -> RunConfig:
    """Read a run directory's ``config.yaml``."""
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: is this a selfsup run directory?")
    return config_from_dict(_load_yaml(path), source=str(path))


def valid_keys(config: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key of a config's schema (the default config's when None)."""
    node = RunConfig() if config is None else config
    keys: list[str] = []
    for f in dataclasses.fields(node):
        key = f"{prefix}{f.name}"
        keys.append(key)
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(valid_keys(value, prefix=f"{key}."))
    return keys


def method_keys() -> dict[str, list[str]]:
    """``method.*`` keys of every registered method, by method name."""
    return {
        name: [f"method.{f.name}" for f in dataclasses.fields(_method_config(name))]
        for name in METHODS.names()
    }


def closest_key(key: str, candidates: Iterable[str]) -> str | None:
    candidates = list(candidates)
    leaf = key.rsplit(".", 1)[-1]
    matches = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if matches:
        return matches[0]
    # A right leaf under the wrong section ("lr" for "optim.base_lr"): match on the leaf.
    by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
    matches = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
    return by_leaf[matches[0]] if matches else None


def validate(config: RunConfig) -> None:
    """Semantic checks the type system cannot express."""
    for key, allowed in choices().items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise not_a_choice(key, value, allowed)
    positive: dict[str, float] = {
        "data.image_size": config.data.image_size,
        "data.batch_size": config.data.batch_size,
        "augment.num_views": config.augment.num_views,
        "train.epochs": config.train.epochs,
        "checkpoint.every_steps": config.checkpoint.every_steps,
        "checkpoint.keep_last": config.checkpoint.keep_last,
        "train.log_every": config.train.log_every,
        "train.image_every": config.train.image_every,
        "train.grad_accum_steps": config.train.grad_accum_steps,
        "probe.knn_k": config.probe.knn_k,
        "probe.lr": config.probe.lr,
        "probe.knn_temperature": config.probe.knn_temperature,
    }
    for key, value in positive.items():
        if not 0 < value < math.inf:  # NaN fails every comparison: refused too
            raise ConfigError(f"config key '{key}' must be positive, got {value}")
    # A learning rate of 0 is allowed (a frozen run, to check a pipeline), never below.
    if not 0 <= config.optim.base_lr < math.inf:
        raise ConfigError(
            f"config key 'optim.base_lr' must be a finite number >= 0, got {config.optim.base_lr}"
        )
    if config.train.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(
            f"config key 'train.zero_stage' must be 0-3, got {config.train.zero_stage}"
        )
    if config.train.max_steps is not None and config.train.max_steps <= 0:
        raise ConfigError(
            f"config key 'train.max_steps' must be positive, got {config.train.max_steps}"
        )
    _validate_loading(config)
    _validate_image_sides(config)
    for key in config.probe.betons:
        dataset, _, split = key.rpartition("_")
        if split not in ("train", "test") or not dataset:
            raise ConfigError(
                f"config key 'probe.betons.{key}' must be named <dataset>_train or <dataset>_test"
            )
    low, high = _pair(config.augment.crop_scale, "augment.crop_scale")
    if not 0 < low <= high <= 1:
        raise ConfigError(
            f"config key 'augment.crop_scale' must satisfy 0 < min <= max <= 1, got {[low, high]}"
        )
    for key in ("data.mean", "data.std"):
        section, name = key.split(".")
        if len(getattr(getattr(config, section), name)) != 3:
            raise ConfigError(f"config key '{key}' needs 3 values (one per RGB channel)")
    known_datasets = DATASETS.names()
    for name in config.probe.datasets:
        betons = {f"{name}_train", f"{name}_test"} <= set(config.probe.betons)
        located = bool(config.probe.data_path) or betons
        if name not in known_datasets or (name == "imagefolder" and not located):
            raise ConfigError(
                f"config key 'probe.datasets' holds '{name}'; valid datasets: "
                f"{', '.join(d for d in known_datasets if d != 'imagefolder')} "
                "(imagefolder needs probe.data_path or probe.betons)"
            )
    _validate_finetune(config.finetune, known_datasets)
    _validate_sparsity(config)
    context = BuildContext(image_size=config.data.image_size, num_views=config.augment.num_views)
    with config_keys_in_errors(config.method):
        config.method.check(context)


# The largest side of an image a network is fed (views, probe/fine-tune inputs,
# a teacher's input, images held by the memory loader): far above any recipe
# (224-518 px), far below what exhausts memory on the first batch.
MAX_VIEW_SIDE = 1024


def _validate_image_sides(config: RunConfig) -> None:
    sides = {
        "data.image_size": config.data.image_size,
        "data.memory_side": config.data.memory_side,
        "probe.image_size": config.probe.image_size,
        "finetune.image_size": config.finetune.image_size,
        "method.teacher_image_size": getattr(config.method, "teacher_image_size", None),
    }
    for key, side in sides.items():
        if side is not None and not 1 <= side <= MAX_VIEW_SIDE:
            raise ConfigError(
                f"config key '{key}' is {side}; image sides must be between 1 and "
                f"{MAX_VIEW_SIDE} pixels"
            )


def _validate_loading(config: RunConfig) -> None:
    """Worker counts and the loaders' own sizes."""
    for key, workers in (
        ("data.num_workers", config.data.num_workers),
        ("probe.num_workers", config.probe.num_workers),
    ):
        if workers != AUTO and not (isinstance(workers, int) and workers >= 0):
            raise ConfigError(
                f"config key '{key}' must be auto or an integer >= 0, got {workers!r}"
            )
    if config.data.batches_ahead < 1:
        raise ConfigError("config key 'data.batches_ahead' must be >= 1")
    side = config.data.memory_side
    if side is not None and side < 8:
        raise ConfigError(f"config key 'data.memory_side' must be at least 8 pixels, got {side}")


def _validate_sparsity(config: RunConfig) -> None:
    """The ``sparsity:`` section's own checks, and what the engine must allow."""
    with config_keys_in_errors():
        config.sparsity.check()
    if (
        config.sparsity.enabled
        and config.train.engine == "deepspeed"
        and config.train.zero_stage == 3
    ):
        raise ConfigError(
            "sparsity masks are computed from whole weights, which ZeRO-3 partitions: use "
            "train.zero_stage=2 (or 0/1) with sparsity"
        )


def _validate_finetune(ft: FinetuneConfig, known_datasets: tuple[str, ...]) -> None:
    """The ``finetune:`` section's ranges (its choices are checked with the others)."""
    if not 0.0 < ft.val_fraction < 1.0:  # NaN fails too
        raise ConfigError(
            f"config key 'finetune.val_fraction' must be strictly between 0 and 1 (the share "
            f"of training images held out for validation), got {ft.val_fraction}"
        )
    positive: dict[str, float] = {
        "finetune.batch_size": ft.batch_size,
        "finetune.epochs": ft.epochs,
        "finetune.unfreeze_epochs": ft.unfreeze_epochs,
        "finetune.base_lr": ft.base_lr,
        "finetune.unfreeze_lr_factor": ft.unfreeze_lr_factor,
        "finetune.log_every": ft.log_every,
    }
    for key, value in positive.items():
        if not 0 < value < math.inf:
            raise ConfigError(f"config key '{key}' must be positive, got {value}")
    if not 0 <= ft.randaugment <= 30:  # torchvision's magnitude bins
        raise ConfigError(
            f"config key 'finetune.randaugment' is a magnitude in 0-30 (0: off), got "
            f"{ft.randaugment}"
        )
    for key, count in (
        ("finetune.train_samples", ft.train_samples),
        ("finetune.test_samples", ft.test_samples),
    ):
        if count is not None and count <= 0:
            raise ConfigError(f"config key '{key}' must be positive or null, got {count}")
    if ft.layer_decay is not None and not 0 < ft.layer_decay <= 1:
        raise ConfigError(
            f"config key 'finetune.layer_decay' must be in (0, 1] (1: no decay), got "
            f"{ft.layer_decay}"
        )
    for name in ft.datasets:
        if name not in known_datasets or name == "imagefolder":
            raise ConfigError(
                f"config key 'finetune.datasets' holds '{name}'"
                f"{did_you_mean(name, known_datasets)}; valid datasets: "
                f"{', '.join(d for d in known_datasets if d != 'imagefolder')}"
            )
    _pair(ft.crop_scale, "finetune.crop_scale")
    with config_keys_in_errors(section="finetune"):
        check_head(ft.head_hidden, ft.head_dropout)
        check_label_smoothing(ft.label_smoothing)
        check_logit_distillation(ft.distill_temperature, ft.distill_alpha)


def _pair(values: list[float], key: str) -> tuple[float, float]:
    if len(values) != 2:
        raise ConfigError(f"config key '{key}' needs 2 values [min, max], got {values}")
    return float(values[0]), float(values[1])


def _read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"config files include each other in a loop: {chain}")
    raw = _load_yaml(path)
    base = raw.pop(BASE_KEY, None)
    recipe = OmegaConf.create(raw)
    if base is None:
        return recipe
    if not str(base).endswith((".yaml", ".yml")):
        raise ConfigError(
            f"{BASE_KEY} in {path} is {str(base)[:80]!r}; it names another recipe, a .yaml file "
            "(for example _base_: simclr_resnet18_cifar10.yaml)"
        )
    base_cfg = _read_recipe(path.parent / str(base), (*seen, path))
    if _chosen_method([(recipe, "")], None) not in (None, _chosen_method([(base_cfg, "")], None)):
        # Another method than the base's: the base's method options do not apply.
        base_cfg.pop("method", None)
    merged = OmegaConf.merge(base_cfg, recipe)
    assert isinstance(merged, DictConfig)
    return merged


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (recipes are in configs/)")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends, reported as one line
        raise ConfigError(f"config file {path} is not valid YAML: {one_line(exc)}") from exc
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not a list")
    container = OmegaConf.to_container(loaded, resolve=False)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(
                f"override '{item}' is not of the form key=value (for example optim.base_lr=0.5)"
            )
    # YAML 1.1 reads an N:M ratio (sparsity.pattern=2:4) as a base-60 number (124).
    quoted = [re.sub(r"^([^=]+)=(\d+:\d+)$", r'\1="\2"', item) for item in overrides]
    try:
        return OmegaConf.from_dotlist(quoted)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {exc.msg}") from exc


def _merge(base: DictConfig, update: DictConfig, source: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(base, update)
    except (ConfigKeyError, ConfigAttributeError) as exc:
        key = exc.full_key or str(exc.key)
        owners = [name for name, keys in method_keys().items() if key in keys]
        if owners:  # an option of another method than the chosen one
            chosen = base.method.name
            options = ", ".join(k for k in _dict_keys(base) if k.startswith("method."))
            raise ConfigError(
                f"config key '{key}' (from {source}) is an option of method "
                f"{' and '.join(owners)}, not of method.name={chosen} (its keys: {options})"
            ) from exc
        hint = closest_key(key, _dict_keys(base))
        suggestion = f"; did you mean '{hint}'?" if hint else ""
        shown = key if len(key) <= 80 else key[:77] + "..."
        raise ConfigError(f"unknown config key '{shown}' (from {source}){suggestion}") from exc
    except ValidationError as exc:
        if not exc.full_key:  # a whole section replaced by a scalar, e.g. ``data=3``
            raise ConfigError(f"cannot apply {source}: {one_line(exc)}") from exc
        expected = _expected_type(exc.full_key, base)
        if expected is None or not hasattr(exc, "value"):
            raise ConfigError(
                f"config key '{exc.full_key}' (from {source}): {one_line(exc)}"
            ) from exc
        raise ConfigError(
            f"config key '{exc.full_key}' expects {expected}, got {exc.value!r} (from {source})"
        ) from exc
    assert isinstance(merged, DictConfig)
    return merged


def _dict_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key in map(str, node):
        keys.append(f"{prefix}{key}")
        child = node._get_node(key)  # the node itself: never resolves or converts the value
        if isinstance(child, DictConfig):
            keys.extend(_dict_keys(child, f"{prefix}{key}."))
    return keys


def _expected_type(full_key: str, schema: DictConfig) -> str | None:
    node: Any = OmegaConf.to_object(schema)
    field_type: Any = None
    for part in full_key.split("."):
        if not dataclasses.is_dataclass(node):
            return None
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return None
        field_type, node = fields[part].type, getattr(node, part)
    name = str(field_type).replace("typing.", "")
    return _TYPE_WORDS.get(name, name)


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "int | None": "an integer or null",
    "float | None": "a number or null",
    "str | None": "a string or null",
    "list[float]": "a list of numbers",
    "list[str]": "a list of strings",
    "int | str": "an integer or auto",
    "bool | str": "true, false or auto",
}
