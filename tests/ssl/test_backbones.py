import pytest
import torch
import torchvision
from torch import nn

from selfsup.errors import ConfigError
from selfsup.ssl.backbones import backbone_names, build_backbone


@pytest.mark.parametrize("source", ["torchvision", "timm"])
@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet50", 2048)])
def test_backbone_features_have_the_registered_dimension(source, name, dim):
    backbone = build_backbone(name, source=source)
    assert backbone.feature_dim == dim
    with torch.no_grad():
        out = backbone.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, dim)


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_cifar_stem_keeps_more_resolution(source):
    cifar = build_backbone("resnet18", source=source, cifar_stem=True)
    assert cifar.trunk.conv1.kernel_size == (3, 3) and cifar.trunk.conv1.stride == (1, 1)
    assert isinstance(cifar.trunk.maxpool, nn.Identity)
    sides = {}
    for stem, backbone in (("plain", build_backbone("resnet18", source=source)), ("cifar", cifar)):
        hook = backbone.trunk.layer4.register_forward_hook(
            lambda module, inputs, output, stem=stem: sides.__setitem__(stem, output.shape[-1])
        )
        with torch.no_grad():
            backbone.eval()(torch.randn(1, 3, 32, 32))
        hook.remove()
    assert sides == {"plain": 1, "cifar": 4}


def test_exported_trunk_weights_load_into_plain_torchvision():
    backbone = build_backbone("resnet18")
    plain = torchvision.models.resnet18()
    plain.fc = nn.Identity()
    plain.load_state_dict(backbone.trunk.state_dict())


def test_unknown_backbone_suggests_the_closest_name():
    with pytest.raises(ConfigError, match="did you mean 'resnet50'"):
        build_backbone("resnet05")
    assert "resnet18" in backbone_names()


def test_unknown_source_is_refused():
    with pytest.raises(ConfigError, match="torchvision, timm"):
        build_backbone("resnet18", source="keras")
