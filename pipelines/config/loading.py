"""Loading a run config: YAML recipes (with ``_base_``), dotted overrides, merging, saving.

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
import re
from collections.abc import Iterable, Sequence
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
from selfsup.errors import ConfigError, one_line
from selfsup.pipelines.config.registry import CHOICES, section_default
from selfsup.pipelines.config.schema import RunConfig
from selfsup.pipelines.config.validation import not_a_choice, validate
from selfsup.registry import UnknownName

BASE_KEY = "_base_"
# Keys of earlier releases and where they live now (recipes written for those still say so).
MOVED_KEYS = {
    f"finetune.{old}": f"finetune.optim.{new}"
    for old, new in (
        ("optimizer", "name"),
        ("base_lr", "base_lr"),
        ("weight_decay", "weight_decay"),
        ("momentum", "momentum"),
        ("warmup_epochs", "warmup_epochs"),
        ("schedule", "schedule"),
        ("step_epochs", "step_epochs"),
        ("step_gamma", "step_gamma"),
    )
}


def _method_config(name: Any) -> Any:
    """The default ``method:`` section of method ``name`` (its registered dataclass)."""
    try:
        return section_default("method", str(name))
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
        for name in CHOICES.get("method.name")()
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
        hint = MOVED_KEYS.get(key) or closest_key(key, _dict_keys(base))
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
