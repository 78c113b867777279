"""Typed run configuration: schema, loading and merging, validation, what components register.

- :mod:`.schema`: one dataclass per section, :class:`RunConfig` holding them;
- :mod:`.loading`: YAML recipes, ``key=value`` overrides, merging, saving;
- :mod:`.validation`: choices, ranges and sizes, each written once;
- :mod:`.registry`: where components register their sections, choices and checks.

This package imports no component; ``selfsup.pipelines`` imports them, so
their registrations are in place wherever a config is loaded.
"""

from selfsup.pipelines.config.loading import (
    BASE_KEY,
    closest_key,
    config_from_dict,
    load_config,
    load_saved_config,
    method_keys,
    save_config,
    to_dict,
    to_yaml,
    valid_keys,
    with_overrides,
    with_recipe,
    with_section_overrides,
)
from selfsup.pipelines.config.registry import register_check, register_choices, register_section
from selfsup.pipelines.config.schema import (
    AUTO,
    COMPILE_MODES,
    DEFAULT_METHOD,
    FINETUNE_CROPS,
    MAX_VIEW_SIDE,
    AugmentConfig,
    CheckpointConfig,
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    OptimConfig,
    ProbeConfig,
    RunConfig,
    TrainConfig,
)
from selfsup.pipelines.config.validation import (
    ARGUMENT_KEYS,
    choices,
    config_keys_in_errors,
    not_a_choice,
    validate,
)

__all__ = [
    "ARGUMENT_KEYS",
    "AUTO",
    "BASE_KEY",
    "COMPILE_MODES",
    "DEFAULT_METHOD",
    "FINETUNE_CROPS",
    "MAX_VIEW_SIDE",
    "AugmentConfig",
    "CheckpointConfig",
    "DataConfig",
    "FinetuneConfig",
    "ModelConfig",
    "OptimConfig",
    "ProbeConfig",
    "RunConfig",
    "TrainConfig",
    "choices",
    "closest_key",
    "config_from_dict",
    "config_keys_in_errors",
    "load_config",
    "load_saved_config",
    "method_keys",
    "not_a_choice",
    "register_check",
    "register_choices",
    "register_section",
    "save_config",
    "to_dict",
    "to_yaml",
    "valid_keys",
    "validate",
    "with_overrides",
    "with_recipe",
    "with_section_overrides",
]
