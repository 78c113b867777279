import pytest
import torch
import torchvision
from torch import nn

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
    with pytest.raises(ValueError, match="did you mean 'resnet50'"):
        build_backbone("resnet05")
    assert "resnet18" in backbone_names()


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="torchvision, timm"):
        build_backbone("resnet18", source="keras")


@pytest.mark.parametrize("name, dim", [("vit_tiny", 192), ("vit_small", 384), ("vit_base", 768)])
def test_vit_backbones_at_cifar_and_imagenet_sizes(name, dim):
    small = build_backbone(name, image_size=32)  # patch 4 by default below 128 px
    assert small.feature_dim == dim and small.trunk.patch_embed.patch_size == (4, 4)
    with torch.no_grad():
        assert small.eval()(torch.randn(2, 3, 32, 32)).shape == (2, dim)
    large = build_backbone(name, image_size=224)
    assert (
        large.trunk.patch_embed.patch_size == (16, 16)
        and large.trunk.patch_embed.num_patches == 196
    )


def test_vit_pooling_by_class_token_or_mean():
    torch.manual_seed(0)
    token = build_backbone("vit_tiny", image_size=32, pool="token").eval()
    torch.manual_seed(0)
    mean = build_backbone("vit_tiny", image_size=32, pool="avg").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(token(x), mean(x))


def test_image_size_must_be_divisible_by_the_patch_size():
    with pytest.raises(ValueError, match="image_size=30 is not divisible by patch_size=4"):
        build_backbone("vit_tiny", image_size=30)


def test_unknown_vit_name_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'vit_small'"):
        build_backbone("vit_smal")


def test_vits_come_from_timm():
    with pytest.raises(ValueError, match="comes from timm, not torchvision"):
        build_backbone("vit_tiny", source="torchvision", image_size=32)
