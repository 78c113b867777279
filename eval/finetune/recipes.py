"""Fine-tune recipes: a registry, one entry per recipe (``finetune.recipe`` names one).

A recipe is its phases (each a Trainer run: epochs, a learning-rate factor,
whether the base is frozen) and the sentence its report opens with. A new
recipe is one registration, from any module (``selfsup.plugins`` imports
modules named by ``SELFSUP_PLUGINS``)::

    RECIPES.register("probe_then_full", FinetuneRecipe("probe_then_full", phases, sentence))

``linear`` has no phases: it is the frozen-feature probe with the fine-tune's data sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from selfsup.errors import ConfigError, did_you_mean
from selfsup.pipelines.config import FinetuneConfig
from selfsup.registry import Registry

LINEAR = "linear"


@dataclass(frozen=True)
class Phase:
    name: str  # the phase's folder
    epochs: int
    lr_factor: float  # x finetune.optim.base_lr
    frozen_base: bool


@dataclass(frozen=True)
class FinetuneRecipe:
    """``phases(finetune settings)``; ``sentence(settings as saved in report.json)``."""

    name: str
    phases: Callable[[FinetuneConfig], list[Phase]] | None  # None: the linear probe
    sentence: Callable[[dict[str, Any]], str]


RECIPES: Registry[FinetuneRecipe] = Registry("fine-tune recipe")


def recipe(name: str) -> FinetuneRecipe:
    """The registered recipe ``name``; one line naming the registered ones otherwise."""
    if name not in RECIPES:
        raise ConfigError(
            f"config key 'finetune.recipe' is '{name}'{did_you_mean(name, RECIPES.names())}; "
            f"registered recipes: {', '.join(RECIPES.names())}"
        )
    return RECIPES.get(name)


def recipe_phases(ft: FinetuneConfig) -> list[Phase]:
    phases = recipe(ft.recipe).phases
    if phases is None:
        raise ConfigError(f"fine-tune recipe '{ft.recipe}' has no training phases")
    return phases(ft)


def optimisation_words(s: dict[str, Any]) -> str:
    """The optimiser, rate, schedule and smoothing of saved settings, as report prose."""
    optim = s["optim"]
    return (
        f"{optim['name']}, base lr {optim['base_lr']:g} per 256 images, {optim['schedule']} "
        f"schedule, label smoothing {s['label_smoothing']:g}"
    )


def head_words(s: dict[str, Any]) -> str:
    return f"MLP head {s['head_hidden']}" if s["head_hidden"] else "linear head"


def _head_then_unfreeze(ft: FinetuneConfig) -> list[Phase]:
    return [
        Phase("frozen_base", ft.epochs, 1.0, frozen_base=True),
        Phase("unfrozen", ft.unfreeze_epochs, ft.unfreeze_lr_factor, frozen_base=False),
    ]


def _head_then_unfreeze_sentence(s: dict[str, Any]) -> str:
    return (
        f"Phase 1: {head_words(s)} on the frozen base (weights and BatchNorm statistics) for "
        f"{s['epochs']} epochs; phase 2: everything for {s['unfreeze_epochs']} epochs at "
        f"{s['unfreeze_lr_factor']:g} x the rate; {optimisation_words(s)}."
    )


def _full(ft: FinetuneConfig) -> list[Phase]:
    return [Phase("full", ft.epochs, 1.0, frozen_base=False)]


def _full_sentence(s: dict[str, Any]) -> str:
    return (
        f"Every layer trained for {s['epochs']} epochs with a {head_words(s)}; "
        f"{optimisation_words(s)}."
    )


RECIPES.register(
    "head_then_unfreeze",
    FinetuneRecipe("head_then_unfreeze", _head_then_unfreeze, _head_then_unfreeze_sentence),
)
RECIPES.register("full", FinetuneRecipe("full", _full, _full_sentence))
RECIPES.register(
    LINEAR,
    FinetuneRecipe(
        LINEAR, None, lambda s: "Linear probe on frozen features (the `probe:` settings)."
    ),
)
