"""Backbone registry: name -> network that maps images to pooled feature vectors.

Every backbone is a torchvision or timm model with its classifier removed,
wrapped in :class:`Backbone`, which records its feature dimension. The wrapped
network (``Backbone.trunk``) keeps its library's parameter names, so exported
weights load straight into ``torchvision.models.resnet18()`` (with
``fc = nn.Identity()``) or ``timm.create_model(name, num_classes=0, ...)``.

======================  ===========  ====================================
name                    feature dim  library
======================  ===========  ====================================
resnet18 / resnet50     512 / 2048   torchvision (default) or timm
vit_tiny / small / base 192/384/768  timm; ``patch_size`` and ``image_size``
                                     free (patch 16 at 224 px, 4 at 32 px)
timm/<model>            read from    any model of timm's registry
                        the model    (``timm.list_models()``)
torchvision/<model>     read from    any classification model of torchvision
                        the model    (``torchvision.models.list_models()``)
======================  ===========  ====================================

A library model is built as its library defines it, its classifier removed
(timm: ``num_classes=0``; torchvision: the last ``nn.Linear`` becomes an
identity, its input width the feature dimension); ``cifar_stem`` applies to
those with a ResNet stem. ViT options (patch size, pooling, any resolution)
belong to the registered ``vit_*`` names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selfsup.arguments import ArgumentError
from selfsup.registry import Registry, UnknownName, did_you_mean

SOURCES = ("auto", "torchvision", "timm")
VIT_POOLS = ("token", "avg")  # class token, or the mean of the patch tokens


class Backbone(nn.Module):
    """A feature extractor: ``(B, 3, H, W)`` images to ``(B, feature_dim)`` features."""

    def __init__(self, trunk: nn.Module, feature_dim: int, name: str) -> None:
        super().__init__()
        self.trunk = trunk
        self.feature_dim = feature_dim
        self.name = name

    @property
    def is_vit(self) -> bool:
        return is_vit_backbone(self.name)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)


@dataclass(frozen=True)
class BackboneOptions:
    """How to build a registered backbone (the parts of ``model.*`` that shape it)."""

    source: str = "auto"
    cifar_stem: bool = False  # ResNets: 3x3/1 first conv, no max-pool (32 px images)
    image_size: int = 224  # ViTs: the position embedding's grid
    patch_size: int | None = None  # ViTs: None -> 16 from 128 px up, else 4
    pool: str = "token"  # ViTs: token | avg
    drop_path: float = 0.0  # ViTs: stochastic depth rate (fine-tuning); no parameters change


@dataclass(frozen=True)
class BackboneSpec:
    feature_dim: int
    build: Callable[[BackboneOptions], nn.Module]
    sources: tuple[str, ...]
    is_vit: bool = False  # patch tokens on a fixed grid: patch_size, pool, layer decay apply


def _resnet(name: str) -> Callable[[BackboneOptions], nn.Module]:
    def build(options: BackboneOptions) -> nn.Module:
        if options.source in ("auto", "torchvision"):
            import torchvision

            trunk = getattr(torchvision.models, name)(weights=None)
            trunk.fc = nn.Identity()
        else:
            import timm

            trunk = timm.create_model(name, pretrained=False, num_classes=0)
        if options.cifar_stem:
            replace_with_cifar_stem(trunk)
        return trunk

    return build


def default_patch_size(image_size: int) -> int:
    return 16 if image_size >= 128 else 4


def _vit(timm_name: str) -> Callable[[BackboneOptions], nn.Module]:
    def build(options: BackboneOptions) -> nn.Module:
        import timm

        patch = options.patch_size or default_patch_size(options.image_size)
        if options.image_size % patch:
            raise ArgumentError(
                f"image_size={options.image_size} is not divisible by patch_size={patch}; "
                "ViT patches must tile the image (e.g. patch 16 at 224 px, 4 at 32 px)",
                "image_size",
                "patch_size",
            )
        if options.pool not in VIT_POOLS:
            raise UnknownName("ViT pooling", options.pool, VIT_POOLS)
        return timm.create_model(
            timm_name,
            pretrained=False,
            num_classes=0,
            img_size=options.image_size,
            patch_size=patch,
            global_pool=options.pool,
            dynamic_img_size=False,
            drop_path_rate=options.drop_path,
        )

    return build


BACKBONES: Registry[BackboneSpec] = Registry("backbone")
BACKBONES.register("resnet18", BackboneSpec(512, _resnet("resnet18"), ("torchvision", "timm")))
BACKBONES.register("resnet50", BackboneSpec(2048, _resnet("resnet50"), ("torchvision", "timm")))
for _name, _dim in (("vit_tiny", 192), ("vit_small", 384), ("vit_base", 768)):
    BACKBONES.register(_name, BackboneSpec(_dim, _vit(f"{_name}_patch16_224"), ("timm",), True))


def backbone_names() -> list[str]:
    return sorted(BACKBONES.names())


def is_vit_backbone(name: str) -> bool:
    """Whether the registered backbone ``name`` is a ViT (False for a library model)."""
    return name in BACKBONES and BACKBONES.get(name).is_vit


LIBRARIES = ("timm", "torchvision")


def is_library_backbone(name: str) -> bool:
    """``timm/<model>`` or ``torchvision/<model>``: a model of the library's own registry."""
    return name.partition("/")[0] in LIBRARIES and "/" in name


def _library_trunk(name: str, options: BackboneOptions) -> tuple[nn.Module, int]:
    """A library model without its classifier, and its feature dimension."""
    library, _, model = name.partition("/")
    if options.source not in ("auto", library):
        raise ArgumentError(
            f"backbone '{name}' comes from {library}, not {options.source}; set source=auto",
            "source",
        )
    trunk, dim = _timm_trunk(model, options) if library == "timm" else _torchvision_trunk(model)
    if options.cifar_stem:
        if not (hasattr(trunk, "conv1") and hasattr(trunk, "maxpool")):
            raise ArgumentError(
                f"cifar_stem replaces a ResNet's stem (conv1 and max-pool), which backbone "
                f"'{name}' does not have; set cifar_stem=false",
                "cifar_stem",
            )
        replace_with_cifar_stem(trunk)
    return trunk, dim


def classifier_name(name: str, source: str = "auto") -> str:
    """The module name of the classifier a library's own checkpoint of ``name`` holds.

    What a supervised ImageNet checkpoint has beyond the backbone: ``fc`` of a
    ResNet, ``head`` of a timm ViT, the last linear layer of a torchvision model,
    timm's declared ``classifier`` of a timm model.
    """
    if not is_library_backbone(name):
        return "head" if is_vit_backbone(name) else "fc"
    library, _, model = name.partition("/")
    if library == "timm":
        import timm

        with torch.device("meta"):
            built: Any = timm.create_model(model, pretrained=False)
        return str(built.pretrained_cfg.get("classifier", "head"))
    import torchvision

    with torch.device("meta"):
        built = torchvision.models.get_model(model, weights=None)
    return [n for n, m in built.named_modules() if isinstance(m, nn.Linear)][-1]


def _unknown_model(library: str, model: str, names: list[str]) -> ArgumentError:
    return ArgumentError(
        f"backbone={library}/{model} names no model of {library}'s registry"
        f'{did_you_mean(model, names)}; `python -c "import {library}.models as m; '
        f'print(m.list_models())"` lists them',
        "backbone",
    )


def _timm_trunk(model: str, options: BackboneOptions) -> tuple[nn.Module, int]:
    import timm

    if not timm.is_model(model):
        raise _unknown_model("timm", model, timm.list_models())
    extra: dict[str, Any] = {"drop_path_rate": options.drop_path} if options.drop_path else {}
    trunk: Any = timm.create_model(model, pretrained=False, num_classes=0, **extra)
    return trunk, int(trunk.num_features)


def _torchvision_trunk(model: str) -> tuple[nn.Module, int]:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)  # classification only
    if model not in names:
        raise _unknown_model("torchvision", model, names)
    trunk = torchvision.models.get_model(model, weights=None)
    linears = [name for name, m in trunk.named_modules() if isinstance(m, nn.Linear)]
    head: Any = trunk.get_submodule(linears[-1])  # the classifier: the last linear layer
    trunk.set_submodule(linears[-1], nn.Identity())
    return trunk, int(head.in_features)


def build_backbone(
    name: str,
    source: str = "auto",
    cifar_stem: bool = False,
    image_size: int = 224,
    patch_size: int | None = None,
    pool: str = "token",
    drop_path: float = 0.0,
) -> Backbone:
    """Build a randomly initialised backbone by registry name (or ``timm/``, ``torchvision/``)."""
    if source not in SOURCES:
        raise UnknownName("backbone source", source, SOURCES)
    options = BackboneOptions(source, cifar_stem, image_size, patch_size, pool, drop_path)
    if is_library_backbone(name):
        trunk, dim = _library_trunk(name, options)
        return Backbone(trunk, dim, name)
    spec = BACKBONES.get(name)
    if source != "auto" and source not in spec.sources:
        raise ArgumentError(
            f"backbone '{name}' comes from {' or '.join(spec.sources)}, not {source}; "
            "set source=auto",
            "source",
        )
    return Backbone(spec.build(options), spec.feature_dim, name)


def replace_with_cifar_stem(resnet: nn.Module) -> None:
    """Swap the 7x7/2 conv and max-pool for a 3x3/1 conv, as for 32 px images.

    Without this a 32 px image is 8x8 after the stem and 1x1 at the last
    stage; with it the last stage sees 4x4 (SimCLR's CIFAR-10 variant).
    Works on torchvision and timm ResNets, which share the attribute names.
    """
    old: nn.Conv2d = resnet.conv1  # type: ignore[assignment]
    conv = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    resnet.conv1 = conv
    resnet.maxpool = nn.Identity()


# ResNet trunks are typed Any: torchvision's and timm's stems share attribute
# names (conv1, bn1, layer1-4) that the type of nn.Module cannot express.
def resnet_feature_map(trunk: Any, images: torch.Tensor) -> torch.Tensor:
    """The last stage's spatial features ``(B, C, h, w)`` of a torchvision or timm ResNet."""
    x = trunk.conv1(images)
    x = trunk.bn1(x)
    x = (trunk.act1 if hasattr(trunk, "act1") else trunk.relu)(x)
    x = trunk.maxpool(x)
    for stage in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
        x = stage(x)
    return x


def resnet_stride(trunk: Any) -> int:
    """Total downsampling of a ResNet: the stem's (conv1 x max-pool) times 8 (stages 2-4)."""
    conv_stride = trunk.conv1.stride[0]
    pool = trunk.maxpool
    pool_stride = 1 if isinstance(pool, nn.Identity) else int(getattr(pool, "stride", 2))
    return int(conv_stride) * pool_stride * 8
