"""A supervised reference: a library's ImageNet classifier, as a third start for fine-tuning.

``finetune.supervised`` names a checkpoint file of the backbone's own
architecture in its library's format (torchvision's ``resnet18-f37072fd.pth``,
a timm ``pytorch_model.bin`` or ``model.safetensors``: a state_dict with the
library's parameter names and its ImageNet classifier), or ``cache`` for
torchvision's default weights in torch's own cache (``$TORCH_HOME/hub/checkpoints``).
Nothing is downloaded: a file that is not there is one line saying how to get it.
Files are read weights-only (safetensors carries no code at all); the classifier
is dropped and every backbone tensor must be there, with its shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from selfsup.errors import ConfigError, existing_path
from selfsup.pipelines.checkpoint.untrusted import load_tensor_file
from selfsup.pipelines.checkpoint.weights import BackboneInfo
from selfsup.ssl.backbones import classifier_name, is_vit_backbone

SUPERVISED = "supervised"  # the init's name in reports
CACHE = "cache"
KEY = "finetune.supervised"


def supervised_trunk(spec: str, info: BackboneInfo) -> dict[str, torch.Tensor]:
    """The backbone's weights from the supervised checkpoint ``spec`` names, classifier dropped."""
    path = _cached_file(info) if spec == CACHE else existing_path(spec, KEY, "a checkpoint file")
    state = _read_state(Path(path))
    head = classifier_name(info.name, info.source) + "."
    theirs = {k: v for k, v in state.items() if not k.startswith(head)}
    ours = info.build().trunk.state_dict()
    missing, unexpected = ours.keys() - theirs.keys(), theirs.keys() - ours.keys()
    shapes = [k for k in ours.keys() & theirs.keys() if ours[k].shape != theirs[k].shape]
    if missing or unexpected or shapes:
        stem = "; the backbone has the CIFAR stem, ImageNet ones do not" if info.cifar_stem else ""
        raise ConfigError(
            f"{KEY}={path} is not a {info.name} checkpoint of the backbone's shape (missing: "
            f"{', '.join(sorted(missing)[:3]) or 'none'}; unexpected: "
            f"{', '.join(sorted(unexpected)[:3]) or 'none'}; other shapes: "
            f"{', '.join(shapes[:3]) or 'none'}{stem}): give the library's checkpoint of the "
            "same architecture"
        )
    return {k: theirs[k].to(ours[k].dtype) for k in ours}


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            loaded: Any = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"{KEY}={path} is not a readable safetensors file ({exc})") from None
    else:
        loaded = load_tensor_file(path, "supervised checkpoint")
    for wrapper in ("state_dict", "model"):  # a training checkpoint around the weights
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ConfigError(f"{KEY}={path} holds no state_dict (tensors by parameter name)")
    return loaded


def _cached_file(info: BackboneInfo) -> Path:
    """torchvision's default ImageNet weights of the backbone, in torch's cache; never fetched."""
    library, _, model = info.name.rpartition("/")
    registered_resnet = not library and not is_vit_backbone(info.name) and info.source != "timm"
    if library != "torchvision" and not registered_resnet:
        raise ConfigError(
            f"{KEY}={CACHE} reads torchvision's cache; for the timm backbone {info.name} give "
            "the checkpoint file (model.safetensors in the Hugging Face cache)"
        )
    import torchvision

    weights = torchvision.models.get_model_weights(model).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise ConfigError(
            f"{KEY}={CACHE}: torchvision's {model} ImageNet weights are not in torch's cache "
            f"({path}) and nothing is downloaded at run time: fetch them once where there is a "
            f"network (torchvision.models.get_model('{model}', weights='DEFAULT')) or give the "
            "file's path"
        )
    return path
