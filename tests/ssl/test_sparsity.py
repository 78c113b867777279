"""Mask rules, the cubic ramp and the mask parametrization, on small hand-made weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.arguments import ArgumentError
from selfsup.ssl.sparsity import (
    MagnitudePruner,
    SparsityConfig,
    covered_layers,
    cubic_level,
    fold_mask_keys,
    fold_masks,
    magnitude_mask,
    overall_sparsity,
)


def keep_all(weight: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(weight, dtype=torch.bool)


def test_unstructured_prunes_exactly_the_smallest_magnitudes():
    weight = torch.tensor([[0.5, -0.1, 0.3, -0.7], [0.2, 0.9, -0.05, 0.4]])
    mask = magnitude_mask(weight, keep_all(weight), 0.5, "unstructured", (1, 1))
    assert mask.tolist() == [[True, False, False, True], [False, True, False, True]]


def test_ties_go_to_the_lower_index_and_pruned_weights_stay_pruned():
    weight = torch.ones(2, 4)
    first = magnitude_mask(weight, keep_all(weight), 0.25, "unstructured", (1, 1))
    assert first.flatten().tolist() == [False, False] + [True] * 6
    # The pruned weights grew large meanwhile (the dense originals still train): still pruned.
    grown = weight.clone()
    grown[0, :2] = 10.0
    second = magnitude_mask(grown, first, 0.5, "unstructured", (1, 1))
    assert not second[0, :2].any() and int((~second).sum()) == 4


def test_two_of_four_prunes_the_two_smallest_of_each_group_and_ramps_over_groups():
    weight = torch.tensor([[4.0, -1.0, 3.0, 2.0, 0.1, 0.2, 0.3, 0.4]])
    full = magnitude_mask(weight, keep_all(weight), 1.0, "2:4", (1, 1))
    assert full.tolist() == [[True, False, True, False, False, False, True, True]]
    half = magnitude_mask(weight, keep_all(weight), 0.5, "2:4", (1, 1))
    # Only the lower-norm group is pruned at level 0.5.
    assert half.tolist() == [[True, True, True, True, False, False, True, True]]


def test_a_convolution_is_pruned_over_its_flattened_inputs():
    conv = torch.randn(8, 4, 3, 3)
    mask = magnitude_mask(conv, keep_all(conv), 1.0, "2:4", (1, 1))
    groups = mask.reshape(8, -1, 4)
    assert (groups.sum(-1) == 2).all()


def test_blocks_are_pruned_whole_by_norm():
    weight = torch.ones(4, 4)
    weight[:2, :2] = 0.1  # the weakest 2x2 block
    mask = magnitude_mask(weight, keep_all(weight), 0.25, "block", (2, 2))
    assert not mask[:2, :2].any() and mask.sum() == 12


@pytest.mark.parametrize("step", range(0, 13))
def test_cubic_level_is_zhu_and_gupta_ramp(step):
    # s_t = s_f + (s_0 - s_f)(1 - (t - t0) / (n dt))^3, updated every dt steps.
    start, end, every, target = 2, 10, 2, 0.8
    expected = 0.0
    if step >= start:
        at = min(start + (step - start) // every * every, end)
        expected = target * (1 - (1 - (at - start) / (end - start)) ** 3)
    assert cubic_level(step, target, start, end, every) == pytest.approx(expected)


def test_masks_are_in_the_state_dict_and_fold_into_plain_weights():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    pruner = MagnitudePruner("unstructured")
    pruner.attach(net, ["0", "2"])
    pruner.set_level(0.5)
    assert overall_sparsity(net) == 0.5
    state = net.state_dict()
    assert "0.parametrizations.weight.0.mask" in state
    plain = fold_mask_keys(state)
    assert set(plain) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert int((plain["0.weight"] == 0).sum()) == 32
    fold_masks(net)
    assert torch.equal(net.state_dict()["0.weight"], plain["0.weight"])


def test_pruned_weights_get_no_gradient():
    net = nn.Sequential(nn.Linear(8, 8))
    pruner = MagnitudePruner("unstructured")
    pruner.attach(net, ["0"])
    pruner.set_level(0.5)
    net(torch.randn(4, 8)).sum().backward()
    mask = net[0].parametrizations.weight[0].mask
    grad = net[0].parametrizations.weight.original.grad
    assert (grad[~mask] == 0).all() and (grad[mask] != 0).any()


def test_default_layers_leave_the_stem_and_classifier_dense():
    import torchvision

    net = torchvision.models.resnet18()
    layers = covered_layers(net, SparsityConfig(target=0.5))
    assert "conv1" not in layers and "fc" not in layers and len(layers) == 19
    named = covered_layers(net, SparsityConfig(target=0.5, layers=["conv1", "fc"]))
    assert named == ["conv1", "fc"]


@pytest.mark.parametrize(
    "config, message",
    [
        (SparsityConfig(target=-0.1), r"outside \[0, 1\)"),
        (SparsityConfig(target=0.7, pattern="2:4"), "set sparsity.target=0.5"),
        (SparsityConfig(target=0.5, pattern="2-4"), "did you mean '2:4'"),
        (SparsityConfig(target=0.5, pattern="124"), 'write "2:4"'),
        (SparsityConfig(target=0.5, block_shape=[4]), "block_shape must be two positive"),
    ],
)
def test_bad_settings_name_the_key(config, message):
    with pytest.raises(ArgumentError, match=message):
        config.check()


def test_2_4_skips_a_layer_whose_input_width_is_not_a_multiple_of_4(caplog):
    import torchvision

    net = torchvision.models.resnet18()
    config = SparsityConfig(target=0.5, pattern="2:4", layers=["conv1", "layer1.0.conv1"])
    with caplog.at_level("INFO", logger="selfsup.ssl.sparsity"):
        assert covered_layers(net, config) == ["layer1.0.conv1"]
    assert "conv1 skipped (2:4 needs an input width that is a multiple of 4)" in caplog.text


def test_masks_work_under_torch_compile_and_a_new_mask_is_seen_without_recompiling():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    pruner = MagnitudePruner("unstructured")
    pruner.attach(net, ["0", "2"])
    pruner.set_level(0.25)
    compiled = torch.compile(net, backend="inductor")
    x = torch.randn(4, 16)
    assert torch.allclose(compiled(x), net(x), atol=1e-6)
    compiled(x).sum().backward()
    mask = net[0].parametrizations.weight[0].mask
    assert (net[0].parametrizations.weight.original.grad[~mask] == 0).all()
    pruner.set_level(0.75)  # in place: the compiled graph reads the same buffers
    assert torch.allclose(compiled(x), net(x), atol=1e-6)
    assert overall_sparsity(net) == 0.75
