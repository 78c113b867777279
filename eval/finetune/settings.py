"""Fine-tune settings: the run's ``finetune:`` section, a recipe file, command-line overrides."""

from __future__ import annotations

from pathlib import Path

from selfsup.errors import ConfigError, did_you_mean
from selfsup.eval.finetune.recipes import RECIPES
from selfsup.eval.finetune.recipes import recipe as recipe_of
from selfsup.paths import checkout_root
from selfsup.pipelines.checkpoint.run_dir import CONFIG_FILE, find_run_dir
from selfsup.pipelines.config import (
    RunConfig,
    load_saved_config,
    with_overrides,
    with_recipe,
    with_section_overrides,
)

RECIPE_DIR = Path("configs") / "finetune"
# Sections a fine-tune override may name in full (train.precision=fp32, sparsity.target=0.5);
# any other key belongs to finetune: (epochs=5 means finetune.epochs=5).
FULL_KEY_SECTIONS = ("train.", "probe.", "model.channels_last", "sparsity.")


def recipe_path(name: str) -> Path | None:
    """``configs/finetune/NAME.yaml`` (the working directory's, then the checkout's), or a path.

    None for a registered recipe without a settings file (its defaults are the section's).
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"fine-tune recipe {path} does not exist")
        return path
    for root in (Path.cwd(), checkout_root()):
        candidate = root / RECIPE_DIR / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    if name in RECIPES:
        return None
    raise ConfigError(
        f"unknown fine-tune recipe '{name}'{did_you_mean(name, RECIPES.names())}; recipes: "
        f"{', '.join(RECIPES.names())} (configs/finetune/NAME.yaml, or registered with "
        "selfsup.eval.finetune.recipes.RECIPES) or a .yaml path"
    )


def finetune_settings(source: Path, recipe: str | None, overrides: list[str]) -> RunConfig:
    """The source run's config with the recipe and the overrides merged into it."""
    run_dir = find_run_dir(source)
    config = load_saved_config(run_dir / CONFIG_FILE) if run_dir else RunConfig()
    if recipe is not None:
        path = recipe_path(recipe)
        config = (
            with_recipe(config, path)
            if path is not None
            else with_section_overrides(config, "finetune", [f"recipe={recipe}"])
        )
    config = with_overrides(config, [o for o in overrides if o.startswith(FULL_KEY_SECTIONS)])
    rest = [o for o in overrides if not o.startswith(FULL_KEY_SECTIONS)]
    config = with_section_overrides(config, "finetune", rest)
    recipe_of(config.finetune.recipe)  # registered: refused in one line otherwise
    return config
