"""A method defined here, in the test alone, trains through load_config + train().

This is the contract for new methods: one config dataclass and one module,
registered together; the schema, the valid keys, the "did you mean" errors
and the trainer pick it up without an edit anywhere in the package.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.arguments import ArgumentError
from selfsup.errors import ConfigError
from selfsup.pipelines.config import choices, load_config, method_keys
from selfsup.pipelines.train.trainer import train
from selfsup.ssl.backbones import Backbone
from selfsup.ssl.method import METHODS, BuildContext, MethodConfig, register_method
from selfsup.ssl.outputs import StepOutput


@dataclass
class ToyConfig(MethodConfig):
    name: str = "toy"
    embed_dim: int = 8
    weight: float = 1.0

    def check(self, context: BuildContext) -> None:
        if self.weight <= 0:
            raise ArgumentError(f"weight must be positive, got {self.weight}", "weight")


class Toy(nn.Module):
    """Pulls the embeddings of two views of an image together."""

    def __init__(self, backbone: Backbone, embed_dim: int, weight: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, embed_dim)
        self.weight = weight

    @classmethod
    def from_config(cls, backbone: Backbone, config: MethodConfig, context: BuildContext) -> Toy:
        assert isinstance(config, ToyConfig)
        return cls(backbone, config.embed_dim, config.weight)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        first, second = self.head(self.backbone(torch.cat(views))).float().chunk(2)
        loss = self.weight * F.mse_loss(F.normalize(first), F.normalize(second))
        return StepOutput(loss=loss, metrics={"loss/toy": loss.detach()})


# Registered at import, as a plugin module would (and stays registered: registries
# have no removal, so what a test registers is named to stay out of others' way).
register_method("toy", ToyConfig)(Toy)


@pytest.fixture
def toy_method():
    assert "toy" in METHODS


@pytest.fixture
def overrides(tiny_overrides):
    # The tiny run's SimCLR options do not exist for the toy method.
    return [o for o in tiny_overrides if not o.startswith("method.")] + ["method.name=toy"]


def test_a_registered_method_trains_end_to_end(toy_method, overrides):
    config = load_config(None, [*overrides, "method.embed_dim=4"])
    assert isinstance(config.method, ToyConfig) and config.method.embed_dim == 4
    result = train(config)
    assert result.step == result.total_steps and result.final_loss is not None
    assert (result.run_dir / "backbone.pt").is_file()
    saved = (result.run_dir / "config.yaml").read_text()
    assert "name: toy" in saved and "embed_dim: 4" in saved
    # Run again: it resumes from the finished run's checkpoint, under the toy schema.
    assert train(load_config(None, [*overrides, "method.embed_dim=4"])).resumed_from_step == 6


def test_the_registry_feeds_choices_keys_and_errors(toy_method, overrides):
    assert "toy" in choices()["method.name"]
    assert method_keys()["toy"] == ["method.name", "method.embed_dim", "method.weight"]
    with pytest.raises(ConfigError, match="config key 'method.weight' must be positive"):
        load_config(None, [*overrides, "method.weight=0"])
    with pytest.raises(ConfigError, match="did you mean 'method.embed_dim'"):
        load_config(None, [*overrides, "method.embed_dm=3"])
    with pytest.raises(ConfigError, match="is an option of method simclr, not of method.name=toy"):
        load_config(None, [*overrides, "method.proj_num_layers=3"])


def test_a_name_is_registered_once_and_others_are_refused(overrides):
    with pytest.raises(ValueError, match="method 'toy' is registered already"):
        register_method("toy", ToyConfig)(Toy)
    with pytest.raises(ConfigError, match=r"config key 'method.name' is 'toyy' \(did you mean"):
        load_config(None, [*overrides[:-1], "method.name=toyy"])
