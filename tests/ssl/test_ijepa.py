"""I-JEPA's step: what it predicts and against what, and where gradients go."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from selfsup.arguments import ArgumentError
from selfsup.ssl.backbones import build_backbone
from selfsup.ssl.ijepa import IJEPAConfig
from selfsup.ssl.ijepa_masks import batch_masks
from selfsup.ssl.method import BuildContext, KeyedViews
from selfsup.ssl.methods import build_method, method_spec

CONTEXT = BuildContext(image_size=32, num_views=1)


def tiny_ijepa(**options):
    torch.manual_seed(0)
    backbone = build_backbone("vit_tiny", image_size=32, patch_size=4, pool="avg")
    config = IJEPAConfig(**{"pred_depth": 1, "pred_emb_dim": 48, **options})
    return build_method(backbone, config, CONTEXT)


def test_the_loss_compares_predictions_with_the_targets_normalised_features_at_the_targets():
    model = tiny_ijepa()
    images = torch.randn(4, 3, 32, 32)
    batch = KeyedViews([images], seed=0, step=3, positions=torch.arange(4))
    output = model(batch)
    # The target by hand, through timm's own forward (not lightly's wrapper): the target
    # ViT's tokens, its final norm, a layer norm without weights, gathered at each block.
    target_vit = model.target.encoder.trunk
    tokens = target_vit.fc_norm(target_vit.forward_features(images)[:, 1:])
    tokens = F.layer_norm(tokens, tokens.shape[-1:])
    context, targets = batch_masks(model.grid, 0, 3, torch.arange(4))
    wanted = torch.cat([tokens[torch.arange(4)[:, None], t] for t in targets])
    predicted, _, _ = model.predict(images, context, targets)
    assert torch.allclose(output.loss, F.smooth_l1_loss(predicted, wanted), atol=1e-6)
    # The online classifier's features: the target encoder's, as evaluation computes them.
    model.eval()
    assert torch.allclose(output.features, model.target.encoder(images), atol=1e-5)
    assert not output.features.requires_grad


def test_gradients_reach_the_encoder_and_predictor_never_the_target():
    model = tiny_ijepa()
    output = model(KeyedViews([torch.randn(4, 3, 32, 32)], 0, 0, torch.arange(4)))
    output.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.target.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters() if p.requires_grad)
    assert model.backbone.trunk.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    # The target starts as the encoder's exact copy, initialisation included.
    student, target = model.backbone.state_dict(), model.target.encoder.state_dict()
    assert all(torch.equal(student[k], target[k]) for k in student)


def test_the_l2_loss_and_the_registry_entry():
    model = tiny_ijepa(loss="l2")
    output = model(KeyedViews([torch.randn(2, 3, 32, 32)], 0, 0, torch.arange(2)))
    assert torch.isfinite(output.loss)
    spec = method_spec("ijepa")
    assert spec.momentum and spec.keyed and spec.evaluates == "target.encoder."


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pred_emb_dim": 50}, "pred_emb_dim=50 must be a multiple of the encoder's 3"),
        ({"target_scale": [0.3, 0.2]}, "target_scale must be [low, high] with low <= high"),
        ({"context_scale": [0.5, 1.5]}, "context_scale must lie within (0, 1]"),
        ({"loss": "l3"}, "unknown I-JEPA loss 'l3'"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options, message):
    with pytest.raises((ArgumentError, ValueError), match=re.escape(message)):
        tiny_ijepa(**options)
