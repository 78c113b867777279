"""Backbone weights for evaluation: export to, and load from, weights-only files.

``backbone.pt`` holds only tensors, strings and numbers, so it loads with
``torch.load(weights_only=True)``: opening it cannot run code. Its
``state_dict`` uses the library's own parameter names (torchvision or timm).
``backbone.safetensors`` holds the same tensors in the format that cannot
carry code at all, with the header as safetensors metadata (``format`` and
``selfsup``, a JSON string); timm (``pretrained_cfg_overlay=dict(file=...)``)
and ``safetensors.torch.load_file`` read it without selfsup.

:func:`load_backbone` accepts a run directory, a checkpoint folder
(``checkpoints/step_*``) or a backbone file of either format.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfsup.arguments import ArgumentError
from selfsup.atomic import write_atomic
from selfsup.errors import CheckpointError, one_line
from selfsup.pipelines.checkpoint import dcp_io, folders
from selfsup.pipelines.checkpoint.manifest import require_intact
from selfsup.pipelines.checkpoint.run_dir import (
    BACKBONE_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    is_run_dir,
)
from selfsup.pipelines.checkpoint.untrusted import (
    deepspeed_reads,
    load_deepspeed_file,
    load_tensor_file,
)
from selfsup.pipelines.config import MAX_VIEW_SIDE, RunConfig, load_saved_config
from selfsup.registry import UnknownName
from selfsup.ssl.backbones import Backbone, build_backbone
from selfsup.ssl.sparsity import MASK_SUFFIX, attach_masks, fold_mask_keys

log = logging.getLogger(__name__)

FORMAT = "selfsup.backbone/1"
# A fine-tuned classifier (selfsup finetune): its backbone is usable as one.
CLASSIFIER_FORMAT = "selfsup.classifier/1"
CLASSIFIER_TRUNK = "backbone.trunk."


@dataclass
class BackboneInfo:
    """What evaluation needs to know about loaded weights."""

    name: str
    source: str
    cifar_stem: bool
    image_size: int
    mean: list[float]
    std: list[float]
    step: int | None
    origin: str  # the file or folder the weights came from
    run_dir: Path | None  # the run they belong to, where known
    seed: int = 0  # the run's seed: the random-init baseline uses the same initialisation
    patch_size: int | None = None  # ViTs
    pool: str = "token"  # ViTs

    def build(self, image_size: int | None = None, drop_path: float = 0.0) -> Backbone:
        """A fresh backbone of this architecture (random weights).

        ``image_size`` rebuilds a ViT's position grid for another resolution;
        ``drop_path`` sets a ViT's stochastic depth (fine-tuning).
        """
        return build_backbone(
            self.name,
            self.source,
            self.cifar_stem,
            image_size=image_size or self.image_size,
            patch_size=self.patch_size,
            pool=self.pool,
            drop_path=drop_path,
        )


def info_from_config(config: RunConfig, origin: str, run_dir: Path | None, step: int | None):
    return BackboneInfo(
        name=config.model.backbone,
        source=config.model.source,
        cifar_stem=config.model.cifar_stem,
        image_size=config.data.image_size,
        mean=list(config.data.mean),
        std=list(config.data.std),
        step=step,
        origin=origin,
        run_dir=run_dir,
        seed=config.train.seed,
        patch_size=config.model.patch_size,
        pool=config.model.pool,
    )


def weights_header(info: BackboneInfo) -> dict[str, Any]:
    """What a weights file records of its backbone (backbone and classifier files alike)."""
    return {
        "backbone": {
            "name": info.name,
            "source": info.source,
            "cifar_stem": info.cifar_stem,
            "patch_size": info.patch_size if info.patch_size is not None else -1,
            "pool": info.pool,
        },
        "image_size": info.image_size,
        "mean": list(info.mean),
        "std": list(info.std),
    }


WEIGHTS_FILE_FORMATS = ("pt", "safetensors")
SAFETENSORS_SUFFIX = ".safetensors"


def save_backbone(
    path: Path,
    trunk_state: dict[str, torch.Tensor],
    info: BackboneInfo,
    file_format: str | None = None,
) -> None:
    """Write a backbone file atomically (``trunk_state``: the library model's keys).

    ``file_format``: ``pt`` or ``safetensors``; None: ``safetensors`` for a
    ``.safetensors`` path, else ``pt``.
    """
    file_format = file_format or ("safetensors" if path.suffix == SAFETENSORS_SUFFIX else "pt")
    header: dict[str, Any] = {
        **weights_header(info),
        "step": info.step if info.step is not None else -1,
        "seed": info.seed,
    }
    # Contiguous copies: safetensors refuses views and shared storage.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in trunk_state.items()}
    if file_format not in WEIGHTS_FILE_FORMATS:
        raise CheckpointError(
            f"unknown weights file format {file_format!r}; choose one of "
            f"{', '.join(WEIGHTS_FILE_FORMATS)}"
        )
    try:
        if file_format == "safetensors":
            from safetensors.torch import save

            metadata = {"format": FORMAT, "selfsup": json.dumps(header)}
            write_atomic(path, save(state, metadata=metadata))
        else:
            payload = {"format": FORMAT, **header, "state_dict": state}
            write_atomic(path, lambda fh: torch.save(payload, fh))
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a full disk as either
        raise CheckpointError(f"cannot write {path}: {write_failure(path, exc)}") from None


def write_failure(path: Path, exc: BaseException) -> str:
    """Why writing ``path`` failed, in words (a full disk named as one); nothing is left."""
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    elif shutil.disk_usage(path.parent).free < 1 << 20:
        reason = "No space left on device"
    else:
        reason = one_line(exc)[:160]
    return f"{reason}; nothing was written: free space or choose another path"


def _read_safetensors(path: Path) -> dict[str, Any]:
    """A safetensors backbone file as the payload a ``.pt`` one holds (header + state_dict)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as opened:
            metadata = opened.metadata() or {}
            state = {key: opened.get_tensor(key) for key in opened.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({one_line(exc)}): it is damaged or "
            "truncated"
        ) from None
    try:
        header = json.loads(metadata["selfsup"])
        if not isinstance(header, dict):
            raise TypeError("not a mapping")
    except (KeyError, ValueError, TypeError):
        raise CheckpointError(
            f"{path} holds no selfsup header (safetensors metadata 'selfsup'); export one with "
            "`selfsup checkpoint export --format safetensors`"
        ) from None
    return {**header, "format": metadata.get("format"), "state_dict": state}


def _is_safetensors(head: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then the JSON header."""
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


WHICH_BACKBONES = ("student", "target")


def evaluated_prefix(config: RunConfig, which: str | None = None) -> str:
    """The state-dict prefix of the backbone to read from a run's checkpoints: ``which`` is
    ``student`` (the trained encoder), ``target`` (a momentum method's target encoder) or
    None (the one its method is evaluated on: I-JEPA's target, everyone else's student)."""
    # Late: the method catalogue imports lightly, which reading a weights file never needs.
    from selfsup.ssl.methods import method_spec

    spec = method_spec(config.method.name)
    if which is None:
        return spec.evaluates
    if which not in WHICH_BACKBONES:
        raise UnknownName("backbone to read", which, WHICH_BACKBONES)
    if which == "target" and not spec.momentum:
        raise CheckpointError(
            f"method {spec.name} has no momentum target encoder; --which target is for "
            "methods with one (ijepa): leave --which out to read the backbone"
        )
    return "target.encoder." if which == "target" else "backbone."


def load_backbone(path: str | Path, which: str | None = None) -> tuple[Backbone, BackboneInfo]:
    """Load trained backbone weights from a run directory, checkpoint folder or file
    (``which``: see :func:`evaluated_prefix`; checkpoints only, a file holds one backbone)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist; pass a run directory, a checkpoints/step_* folder "
            "or a backbone .pt file"
        )
    if path.is_file():
        return load_backbone_file(path)
    if (path / folders.META_FILE).is_file():
        return _load_from_checkpoint(path, path.parent.parent, which)
    if is_run_dir(path):
        if (path / BACKBONE_FILE).is_file() and which is None:
            return load_backbone_file(path / BACKBONE_FILE, run_dir=path)
        latest = folders.find_latest(path / CHECKPOINT_DIR)
        if latest is not None:
            return _load_from_checkpoint(latest, path, which)
        raise CheckpointError(f"run directory {path} holds no checkpoint yet; train it first")
    raise CheckpointError(
        f"{path} is not a selfsup run directory or checkpoint (no {CONFIG_FILE}, no "
        f"{folders.META_FILE}); pass a run directory, a checkpoints/step_* folder or a .pt file"
    )


def load_backbone_file(path: Path, run_dir: Path | None = None) -> tuple[Backbone, BackboneInfo]:
    """Load a backbone file (``.pt`` or safetensors); code-carrying pickles are refused."""
    payload = read_weights_file(path)
    kind = payload.get("format") if isinstance(payload, dict) else None
    if kind not in (FORMAT, CLASSIFIER_FORMAT):
        raise CheckpointError(
            f"{path} is not a selfsup backbone file (expected format {FORMAT!r}); "
            "export one with `selfsup checkpoint export`"
        )
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no valid state_dict (tensors by name): it is damaged")
    if kind == CLASSIFIER_FORMAT:  # knowingly: the classifier's backbone, its head dropped
        log.info("%s is a fine-tuned classifier: using its backbone, without its head", path)
        state = {
            k[len(CLASSIFIER_TRUNK) :]: v
            for k, v in state.items()
            if k.startswith(CLASSIFIER_TRUNK)
        }
    info = info_from_header(payload, str(path), run_dir)
    try:
        backbone = info.build()
    except (UnknownName, ArgumentError) as exc:
        raise CheckpointError(f"{path} has a header naming no buildable backbone: {exc}") from None
    try:
        result = backbone.trunk.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes of another architecture than the header says
        raise CheckpointError(
            f"{path} does not hold the {info.name} backbone its header names "
            f"({one_line(exc)[:200]})"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path} does not match a {info.name} backbone (missing: "
            f"{', '.join(result.missing_keys[:5]) or 'none'}; unexpected: "
            f"{', '.join(result.unexpected_keys[:5]) or 'none'})"
        )
    return backbone, info


def read_weights_file(path: Path) -> Any:
    """The payload of a backbone or classifier file, ``.pt`` or safetensors (one-line errors)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror})") from None
    if _is_safetensors(head):
        return _read_safetensors(path)
    # torch.save writes a zip archive; older tools a bare pickle (protocol >= 2 starts with 0x80).
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":
        raise CheckpointError(
            f"{path} is not a weights file (not a torch zip archive, a pickle or safetensors); "
            "pass a run directory, a checkpoints/step_* folder or a backbone file"
        )
    return load_tensor_file(path, "torch weights file")


def info_from_header(payload: dict[str, Any], origin: str, run_dir: Path | None) -> BackboneInfo:
    """The backbone a weights file's header (:func:`weights_header`) describes (one line if bad)."""
    try:
        spec = payload["backbone"]
        patch = spec.get("patch_size", -1)
        info = BackboneInfo(
            name=_typed(spec["name"], str),
            source=_typed(spec["source"], str),
            cifar_stem=_typed(spec["cifar_stem"], bool),
            patch_size=_typed(patch, int) if patch is not None and patch > 0 else None,
            pool=_typed(spec.get("pool", "token"), str),
            image_size=_typed(payload["image_size"], int),
            mean=[float(_typed(v, float)) for v in payload["mean"]],
            std=[float(_typed(v, float)) for v in payload["std"]],
            step=int(payload["step"]) if _typed(payload.get("step", -1), int) >= 0 else None,
            origin=origin,
            run_dir=run_dir,
            seed=_typed(payload.get("seed", 0), int),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"{origin} has a damaged header ({type(exc).__name__}: {one_line(exc)[:120]}); "
            "export the weights again with `selfsup checkpoint export`"
        ) from None
    if not 1 <= info.image_size <= MAX_VIEW_SIDE or len(info.mean) != 3 or len(info.std) != 3:
        raise CheckpointError(
            f"{origin} has a damaged header (image_size {info.image_size}, {len(info.mean)} "
            f"means, {len(info.std)} stds); export the weights again"
        )
    return info


def _typed(value: Any, kind: type) -> Any:
    """``value`` when it is of ``kind`` (bools are not ints; ints are floats); TypeError if not."""
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise TypeError(f"{value!r:.40} is not {kind.__name__}")
    return value


def _load_from_checkpoint(
    path: Path, run_dir: Path, which: str | None = None
) -> tuple[Backbone, BackboneInfo]:
    """Read only one backbone's tensors out of a training checkpoint (any engine)."""
    meta = folders.read_meta(path)
    require_intact(path)
    config = load_saved_config(run_dir / CONFIG_FILE)
    prefix = evaluated_prefix(config, which)
    info = info_from_config(config, str(path), run_dir, int(meta["step"]))
    backbone = info.build()
    if meta.get("engine") == "deepspeed":
        return _load_from_deepspeed(path, backbone, prefix), info
    # A sparse run's checkpoint holds each covered weight as original and mask: read
    # them into the same layout, then fold the masks in (plain weights, real zeros).
    dcp_io.check_mask_entries(path)
    layout = attach_masks(info.build(), config.sparsity) if config.sparsity.enabled else backbone
    wanted = {f"{prefix}{k}": v for k, v in layout.state_dict().items()}
    stored_keys = dcp_io.stored_keys(path)
    dcp_io.check_model_keys(path, wanted, _prefixed(stored_keys, f"model.{prefix}"))
    state = {"model": wanted}
    dcp_io.load_into(state, path)
    stored = fold_mask_keys({k[len(prefix) :]: v for k, v in state["model"].items()})
    backbone.load_state_dict(stored)
    return backbone, info


def _prefixed(stored: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k: v for k, v in stored.items() if k.startswith(prefix)}


def _load_from_deepspeed(path: Path, backbone: Backbone, prefix: str = "backbone.") -> Backbone:
    """Consolidate a DeepSpeed checkpoint's fp32 weights (DeepSpeed's zero_to_fp32).

    DeepSpeed's own reader asks for ``weights_only=False``; inside
    :func:`deepspeed_reads` torch reads its files weights-only all the same.
    """
    from selfsup.pipelines.runtime.engines.deepspeed_engine import require_deepspeed

    require_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    stage = folders.read_meta(path).get("engine_state", {}).get("zero_stage", 2)
    try:
        if stage == 0:  # no ZeRO shards: the model file holds the weights
            files = sorted(path.glob("mp_rank_*_model_states.pt"))
            full = load_deepspeed_file(files[0])["module"]
        else:
            with deepspeed_reads(path):
                full = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
    except (FileNotFoundError, IndexError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"cannot consolidate DeepSpeed checkpoint {path} ({type(exc).__name__}: {exc}); "
            "a shard is missing or corrupt"
        ) from exc
    kinds = {str(v.dtype) for k, v in full.items() if k.endswith(MASK_SUFFIX)}
    if kinds - {"torch.bool"}:
        raise CheckpointError(
            f"{path} stores sparsity masks as {', '.join(sorted(kinds))}, not bool: the "
            "checkpoint was altered; delete it to resume from the one before"
        )
    wanted = fold_mask_keys({k: v for k, v in full.items() if k.startswith(prefix)})
    result = backbone.load_state_dict(
        {k[len(prefix) :]: v for k, v in wanted.items()}, strict=False
    )
    if result.missing_keys:
        raise CheckpointError(
            f"{path} does not hold a {backbone.name} backbone (missing: "
            f"{', '.join(result.missing_keys[:5])})"
        )
    return backbone
