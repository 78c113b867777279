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
from collections.abc import Iterable, Sequence
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

from selfsup.errors import ConfigError, did_you_mean

BASE_KEY = "_base_"


@dataclass
class DataConfig:
    """Where pretraining images come from and how they are batched."""

    dataset: str = "cifar10"  # cifar10 | fashion_mnist | imagefolder
    path: str | None = None  # dataset folder or a root holding it; None: search default places
    loader: str = "torchvision"  # torchvision | ffcv | auto (ffcv when installed and beton set)
    beton: str | None = None  # training images as an FFCV .beton (selfsup data write)
    ffcv_order: str = "random"  # random | quasi_random (less disk traffic, single process only)
    os_cache: bool = True  # ffcv: let the OS page cache hold the file (False: ffcv's own cache)
    batches_ahead: int = 3  # ffcv: batches prepared ahead of the training step
    image_size: int = 32  # side of each training view, in pixels
    batch_size: int = 256  # per process
    num_workers: int = 2
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


@dataclass
class MethodConfig:
    """Self-supervised objective."""

    name: str = "simclr"  # simclr | mae (ViTs) | simmim (ResNets)
    temperature: float = 0.5  # simclr: NT-Xent temperature
    proj_hidden_dim: int | None = None  # simclr: None -> the backbone's feature dimension
    proj_output_dim: int = 128  # simclr
    mask_ratio: float | None = None  # mae/simmim: share of patches hidden (None: 0.75 / 0.6)
    mask_patch_size: int | None = None  # simmim: masked square side (None: image_size / 8)
    decoder_dim: int = 512  # mae
    decoder_depth: int = 8  # mae
    decoder_heads: int = 16  # mae
    norm_pix_loss: bool = True  # mae: predict per-patch normalised pixels


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
    compile: bool = False  # torch.compile the model (single and ddp engines)
    peak_tflops: float | None = None  # per device, for MFU where selfsup has no table entry
    engine: str = "single"  # single | ddp | deepspeed (ddp/deepspeed under torchrun or srun)
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    sync_batchnorm: bool = False  # ddp: BatchNorm statistics over all processes
    zero_stage: int = 2  # deepspeed: ZeRO stage 0-3
    deepspeed_config: str | None = None  # deepspeed: JSON file merged over the generated config


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept."""

    every_steps: int = 500
    keep_last: int = 2
    keep_every: int | None = None  # also keep every checkpoint whose step is a multiple of this
    resume: bool = True  # resume automatically when the run directory holds a checkpoint


@dataclass
class ProbeConfig:
    """Frozen-feature evaluation: linear classifier and kNN."""

    datasets: list[str] = field(default_factory=lambda: ["cifar10", "fashion_mnist"])
    data_path: str | None = None  # root holding the datasets; None: search default places
    image_size: int | None = None  # None: data.image_size
    batch_size: int = 512
    num_workers: int = 2
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
class RunConfig:
    """Everything a pretraining run needs; saved as ``config.yaml`` in its run directory."""

    name: str = "run"
    output_dir: str = "runs"
    run_dir: str | None = None  # None: <output_dir>/<name>
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(self.output_dir) / self.name


# Values with a fixed set of choices, checked after every merge.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("cifar10", "fashion_mnist", "imagenette", "imagefolder"),
    "data.loader": ("torchvision", "ffcv", "auto"),
    "data.ffcv_order": ("random", "quasi_random"),
    "probe.loader": ("torchvision", "ffcv", "auto"),
    "model.source": ("auto", "torchvision", "timm"),
    "model.pool": ("token", "avg"),
    "method.name": ("simclr", "mae", "simmim"),
    "optim.name": ("sgd", "lars", "adamw"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.engine": ("single", "ddp", "deepspeed"),
    "probe.precision": ("fp32", "bf16"),
}


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Build a :class:`RunConfig` from a YAML recipe (optional) and ``key=value`` overrides.

    Raises :class:`ConfigError` naming the key and the closest valid one for an
    unknown key, a wrong type, or a value outside its choices.
    """
    merged: DictConfig = OmegaConf.structured(RunConfig)
    if path is not None:
        merged = _merge(merged, _read_recipe(Path(path)), source=str(path))
    if overrides:
        merged = _merge(merged, _parse_overrides(overrides), source="command line")
    config = OmegaConf.to_object(merged)
    assert isinstance(config, RunConfig)
    validate(config)
    return config


def with_section_overrides(config: RunConfig, section: str, overrides: Sequence[str]) -> RunConfig:
    """Apply overrides to one section; keys may omit the section prefix (``epochs=50``)."""
    prefixed = [o if o.startswith(f"{section}.") else f"{section}.{o}" for o in overrides]
    merged = _merge(OmegaConf.structured(config), _parse_overrides(prefixed), "command line")
    result = OmegaConf.to_object(merged)
    assert isinstance(result, RunConfig)
    validate(result)
    return result


def config_from_dict(values: dict[str, Any], source: str = "saved config") -> RunConfig:
    """Rebuild a :class:`RunConfig` from a plain dict (for example a run's ``config.yaml``)."""
    merged = _merge(OmegaConf.structured(RunConfig), OmegaConf.create(values), source=source)
    config = OmegaConf.to_object(merged)
    assert isinstance(config, RunConfig)
    validate(config)
    return config


def to_yaml(config: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: RunConfig, path: Path) -> None:
    """Write the resolved config atomically (a crash never leaves half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_yaml(config))
    tmp.replace(path)


def load_saved_config(path: Path) -> RunConfig:
    """Read a run directory's ``config.yaml``."""
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: is this a selfsup run directory?")
    return config_from_dict(_load_yaml(path), source=str(path))


def valid_keys(node: Any = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, for suggestions and docs."""
    keys: list[str] = []
    for f in dataclasses.fields(node):
        key = f"{prefix}{f.name}"
        keys.append(key)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys.extend(valid_keys(type(default), prefix=f"{key}."))
    return keys


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
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in choices:
            raise ConfigError(
                f"config key '{key}' is '{value}'{did_you_mean(str(value), choices)}; "
                f"valid values: {', '.join(choices)}"
            )
    positive = {
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
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {value}")
    if config.train.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(
            f"config key 'train.zero_stage' must be 0-3, got {config.train.zero_stage}"
        )
    if config.train.max_steps is not None and config.train.max_steps <= 0:
        raise ConfigError(
            f"config key 'train.max_steps' must be positive, got {config.train.max_steps}"
        )
    if config.data.num_workers < 0:
        raise ConfigError("config key 'data.num_workers' must be >= 0")
    if config.data.batches_ahead < 1:
        raise ConfigError("config key 'data.batches_ahead' must be >= 1")
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
    known_datasets = CHOICES["data.dataset"]
    for name in config.probe.datasets:
        betons = {f"{name}_train", f"{name}_test"} <= set(config.probe.betons)
        located = bool(config.probe.data_path) or betons
        if name not in known_datasets or (name == "imagefolder" and not located):
            raise ConfigError(
                f"config key 'probe.datasets' holds '{name}'; valid datasets: "
                f"{', '.join(d for d in known_datasets if d != 'imagefolder')} "
                "(imagefolder needs probe.data_path or probe.betons)"
            )
    ratio = config.method.mask_ratio
    if ratio is not None and not 0 < ratio < 1:
        raise ConfigError(
            f"config key 'method.mask_ratio' must be strictly between 0 and 1, got {ratio}"
        )
    if config.augment.num_views < 2 and config.method.name == "simclr":
        raise ConfigError("config key 'augment.num_views' must be >= 2 for SimCLR")


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
    base_cfg = _read_recipe(path.parent / str(base), (*seen, path))
    return OmegaConf.merge(base_cfg, recipe)  # type: ignore[return-value]


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (recipes are in configs/)")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends, reported as one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from exc
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
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {exc.msg}") from exc


def _merge(base: DictConfig, update: DictConfig, source: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(base, update)
    except (ConfigKeyError, ConfigAttributeError) as exc:
        key = exc.full_key or str(exc.key)
        hint = closest_key(key, valid_keys())
        suggestion = f"; did you mean '{hint}'?" if hint else ""
        raise ConfigError(f"unknown config key '{key}' (from {source}){suggestion}") from exc
    except ValidationError as exc:
        if not exc.full_key:  # a whole section replaced by a scalar, e.g. ``data=3``
            raise ConfigError(f"cannot apply {source}: {_first_line(exc.msg)}") from exc
        expected = _expected_type(exc.full_key)
        if expected is None or not hasattr(exc, "value"):
            raise ConfigError(
                f"config key '{exc.full_key}' (from {source}): {_first_line(exc.msg)}"
            ) from exc
        raise ConfigError(
            f"config key '{exc.full_key}' expects {expected}, got {exc.value!r} (from {source})"
        ) from exc
    assert isinstance(merged, DictConfig)
    return merged


def _expected_type(full_key: str) -> str | None:
    node: Any = RunConfig
    for part in full_key.split("."):
        if not dataclasses.is_dataclass(node):
            return None
        hints = {f.name: f for f in dataclasses.fields(node)}
        if part not in hints:
            return None
        f = hints[part]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        node = type(default) if dataclasses.is_dataclass(default) else f.type
    name = str(node).replace("typing.", "")
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
}


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "invalid value"
