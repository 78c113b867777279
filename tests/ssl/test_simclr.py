import pytest
import torch
from lightly.loss import NTXentLoss

from selfsup.ssl.backbones import build_backbone
from selfsup.ssl.method import BuildContext
from selfsup.ssl.methods import build_method, method_names, method_spec
from selfsup.ssl.simclr import SimCLR, SimCLRConfig


def small_simclr(**kwargs) -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(build_backbone("resnet18"), proj_hidden_dim=64, proj_output_dim=16, **kwargs)


def test_loss_is_lightly_ntxent_on_the_projections():
    model = small_simclr(temperature=0.3).eval()
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    out = model(views)
    with torch.no_grad():
        z = model.projection_head(model.backbone(torch.cat(views))).split(4)
        expected = NTXentLoss(temperature=0.3)(z[0], z[1])
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert "loss/ntxent" in out.metrics


def test_identical_views_give_lower_loss_than_unrelated_ones():
    model = small_simclr().eval()
    x = torch.randn(8, 3, 32, 32)
    same = model([x, x.clone()]).loss
    different = model([x, torch.randn(8, 3, 32, 32)]).loss
    assert same < different


def test_gradients_reach_backbone_and_head():
    model = small_simclr()
    model([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]).loss.backward()
    assert model.backbone.trunk.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.projection_head.parameters())


def test_more_than_two_views_average_every_pair():
    model = small_simclr().eval()
    views = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    with torch.no_grad():
        z = model.projection_head(model.backbone(torch.cat(views))).split(4)
        crit = NTXentLoss(temperature=0.5)
        expected = (crit(z[0], z[1]) + crit(z[0], z[2]) + crit(z[1], z[2])) / 3
    assert torch.allclose(model(views).loss, expected, atol=1e-5)


def test_single_view_is_refused():
    with pytest.raises(ValueError, match="at least 2 views"):
        small_simclr()([torch.randn(2, 3, 32, 32)])


def test_registry_builds_from_the_methods_own_config_and_suggests():
    assert "simclr" in method_names() and method_spec("simclr").config is SimCLRConfig
    model = build_method(build_backbone("resnet18"), SimCLRConfig(temperature=0.1))
    assert isinstance(model, SimCLR) and model.criterion.temperature == 0.1
    with pytest.raises(ValueError, match="did you mean 'simclr'"):
        method_spec("simclrr")


def test_the_config_checks_its_own_options():
    with pytest.raises(ValueError, match="temperature must be positive"):
        SimCLRConfig(temperature=0.0).check(BuildContext(image_size=32))
    with pytest.raises(ValueError, match="num_views must be >= 2"):
        SimCLRConfig().check(BuildContext(image_size=32, num_views=1))


def test_projection_head_depth_is_an_option():
    deep = build_method(build_backbone("resnet18"), SimCLRConfig(proj_num_layers=3))
    linear_layers = [m for m in deep.projection_head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear_layers) == 3
    with pytest.raises(ValueError, match="proj_num_layers must be positive"):
        SimCLRConfig(proj_num_layers=0).check(BuildContext(image_size=32))
