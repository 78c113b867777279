"""``selfsup checkpoint inspect`` and ``export``: read any engine's checkpoint without training."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from selfsup.errors import CheckpointError
from selfsup.pipelines.checkpoint import dcp_io, folders
from selfsup.pipelines.checkpoint.run_dir import CHECKPOINT_DIR, CONFIG_FILE
from selfsup.pipelines.checkpoint.weights import BackboneInfo, load_backbone, save_backbone


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder: ``path`` itself, or the newest one of a run directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if (path / folders.META_FILE).is_file():
        return path
    if (path / CONFIG_FILE).is_file():
        latest = folders.find_latest(path / CHECKPOINT_DIR)
        if latest is None:
            raise CheckpointError(f"run directory {path} holds no complete checkpoint")
        return latest
    raise CheckpointError(
        f"{path} is neither a checkpoint folder (with {folders.META_FILE}) nor a run directory"
    )


@dataclass
class CheckpointSummary:
    path: Path
    meta: dict
    model_tensors: int | None
    parameters: int | None
    optimizer_tensors: int | None
    files: int
    bytes: int

    def lines(self) -> list[str]:
        meta = self.meta
        engine = meta.get("engine", "single")
        stage = meta.get("engine_state", {}).get("zero_stage")
        engine_text = engine + (f" (ZeRO stage {stage})" if engine == "deepspeed" else "")
        total = meta.get("total_steps")
        tensors = (
            f"{self.model_tensors} model ({self.parameters / 1e6:.2f} M values), "
            f"{self.optimizer_tensors} optimizer"
            if self.model_tensors is not None and self.parameters is not None
            else "in DeepSpeed's format (see its files)"
        )
        loss = meta.get("loss")
        return [
            f"{self.path}",
            f"  step        {meta['step']}"
            + (f" / {total}" if total else "")
            + f" (epoch {meta['epoch']}"
            + (
                f", {meta['steps_per_epoch']} steps per epoch)"
                if "steps_per_epoch" in meta
                else ")"
            ),
            f"  engine      {engine_text}, written by {meta.get('world_size')} process(es)",
            f"  batch       {meta.get('global_batch', '?')} images per step, "
            f"{meta.get('samples_seen', '?')} seen",
            f"  loss        {loss:.4f}" if isinstance(loss, float) else "  loss        n/a",
            f"  saved       {meta.get('saved_at', '?')}",
            f"  tensors     {tensors}",
            f"  files       {self.files}, {self.bytes / 2**20:.1f} MiB",
        ]


def inspect_checkpoint(path: str | Path) -> CheckpointSummary:
    folder = resolve_checkpoint(path)
    meta = folders.read_meta(folder)
    files = [f for f in folder.iterdir() if f.is_file()]
    model_tensors = parameters = optimizer_tensors = None
    if (folder / ".metadata").is_file():
        stored = dcp_io.stored_keys(folder)
        model = {k: v for k, v in stored.items() if k.startswith("model.") and hasattr(v, "size")}
        model_tensors = len(model)
        parameters = sum(math.prod(v.size) for v in model.values())
        optimizer_tensors = sum(
            1 for k, v in stored.items() if k.startswith("optim.") and hasattr(v, "size")
        )
    return CheckpointSummary(
        path=folder,
        meta=meta,
        model_tensors=model_tensors,
        parameters=parameters,
        optimizer_tensors=optimizer_tensors,
        files=len(files),
        bytes=sum(f.stat().st_size for f in files),
    )


def export_backbone(path: str | Path, out: str | Path) -> BackboneInfo:
    """Write the backbone of any checkpoint (or run) as a weights-only ``.pt`` file."""
    source = Path(path)
    if source.is_dir() and not (source / folders.META_FILE).is_file():
        source = resolve_checkpoint(source)  # a run directory: its newest checkpoint
    backbone, info = load_backbone(source)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_backbone(out, {k: v for k, v in backbone.trunk.state_dict().items()}, info)
    torch.load(out, weights_only=True)  # what was written reads back as plain weights
    return info
