"""``selfsup checkpoint inspect`` and ``export``: read any engine's checkpoint without training."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from selfsup.errors import CheckpointError, one_line
from selfsup.pipelines.checkpoint import dcp_io, folders
from selfsup.pipelines.checkpoint.manifest import (
    ManifestCheck,
    check_manifest,
)
from selfsup.pipelines.checkpoint.run_dir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    RUN_DIR_FILES,
    TB_DIR,
    find_run_dir,
)
from selfsup.pipelines.checkpoint.untrusted import (
    deepspeed_files,
    load_deepspeed_file,
    load_tensor_file,
)
from selfsup.pipelines.checkpoint.weights import (
    BackboneInfo,
    load_backbone,
    load_backbone_file,
    read_weights_file,
    save_backbone,
)


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
    integrity: ManifestCheck
    sparsity: list[str] = field(default_factory=list)  # a sparse run's zeros per layer

    @property
    def intact(self) -> bool:
        return self.integrity.ok

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
            f"  integrity   {self.integrity_text()}",
            *self.sparsity,
        ]

    def integrity_text(self) -> str:
        check = self.integrity
        if not check.recorded:
            return "not recorded (no manifest.json: written by an older selfsup)"
        if check.signature_problem:
            return f"REFUSED: {check.signature_problem}"
        if check.ok:
            return f"every file matches its size and SHA-256 in manifest.json; {check.signature}"
        return f"DAMAGED: {check.problem()}; delete it to resume from the one before"


def refuse_code(folder: Path) -> None:
    """Read every pickle of a checkpoint without running any: one line for one that carries code.

    The DCP index and its non-tensor entries through allowlists, every
    ``.pt`` file weights-only (DeepSpeed's with its classes allowed): the
    reader every load uses, so what passes here loads the same way.
    """
    if (folder / dcp_io.METADATA_FILE).is_file():
        dcp_io.check_byte_entries(folder)
        dcp_io.check_mask_entries(folder)
    for file in sorted(folder.glob("rng_rank*.pt")):
        load_tensor_file(file, "RNG state file")
    for file in deepspeed_files(folder):
        load_deepspeed_file(file)


def inspect_checkpoint(path: str | Path) -> CheckpointSummary:
    """What a checkpoint holds, with every file checked against its manifest (hashes too)."""
    folder = resolve_checkpoint(path)
    meta = folders.read_meta(folder)
    refuse_code(folder)
    integrity = check_manifest(folder, hashes=True)
    files = [f for f in folder.iterdir() if f.is_file()]
    model_tensors = parameters = optimizer_tensors = None
    if (folder / dcp_io.METADATA_FILE).is_file():
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
        integrity=integrity,
        sparsity=checkpoint_sparsity(folder, meta) if integrity.ok else [],
    )


def sparsity_lines(state: dict[str, torch.Tensor], layers: list[str] | None = None) -> list[str]:
    """Zeros per pruned layer and overall: ``layers`` (a sparse run's), or every
    convolution/linear weight that holds zeros (a weights file says no more)."""
    names = (
        [f"{n}.weight" for n in layers]
        if layers is not None
        else [
            k
            for k, v in state.items()
            if k.endswith("weight") and v.dim() in (2, 4) and (v == 0).any()
        ]
    )
    if not names:
        return ["  sparsity    none (no convolution or linear weight holds zeros)"]
    zeros = {n: int((state[n] == 0).sum()) for n in names}
    total = sum(state[n].numel() for n in names)
    lines = [
        f"  sparsity    {100 * sum(zeros.values()) / total:.2f}% zeros over {len(names)} "
        f"pruned layers ({total / 1e6:.2f} M weights)"
    ]
    lines += [
        f"    {n[: -len('.weight')]:<28} {100 * zeros[n] / state[n].numel():6.2f}%  "
        f"{tuple(state[n].shape)}"
        for n in names
    ]
    return lines


def inspect_weights_file(path: Path) -> list[str]:
    """What a backbone .pt holds: its architecture, origin and the sparsity of its layers."""
    backbone, info = load_backbone_file(path)
    state = backbone.trunk.state_dict()
    return [
        f"{path}",
        f"  backbone    {info.name} ({info.source}{', CIFAR stem' if info.cifar_stem else ''}), "
        f"{info.image_size} px, step {info.step}",
        f"  tensors     {len(state)} ({sum(v.numel() for v in state.values()) / 1e6:.2f} M values)",
        *sparsity_lines(state),
    ]


def checkpoint_sparsity(folder: Path, meta: dict) -> list[str]:
    """A sparse run's checkpoint: its pattern, and the zeros of each covered layer."""
    record = meta.get("sparsity")
    if not record:
        return []
    backbone, _ = load_backbone(folder)
    head = f"  pattern     {record['pattern']}, target {100 * record['target']:.0f}% by step "
    return [
        head + f"{record['end_step']} ({record['schedule']})",
        *sparsity_lines(backbone.trunk.state_dict(), record["layers"]),
    ]


def verify_checkpoint(path: str | Path) -> str:
    """One line saying the checkpoint is intact; :class:`CheckpointError` naming damage."""
    folder = resolve_checkpoint(path)
    folders.read_meta(folder)
    check = check_manifest(folder, hashes=True)
    if not check.recorded:
        raise CheckpointError(
            f"{folder} has no manifest.json (written by an older selfsup): nothing to verify "
            "against; `selfsup checkpoint inspect` still reads it"
        )
    check.raise_if_damaged()
    refuse_code(folder)
    return (
        f"{folder}: intact ({check.files} files match their sizes and SHA-256; {check.signature})"
    )


def check_export_target(out: Path, force: bool) -> None:
    """Refuse to overwrite a file unasked, or any file a run directory owns."""
    owner = find_run_dir(out.parent) if out.parent.exists() else None
    owned = owner is not None and (
        (out.parent == owner and out.name in RUN_DIR_FILES)
        or any(out.is_relative_to(owner / folder) for folder in (CHECKPOINT_DIR, TB_DIR))
    )
    if owned:
        raise CheckpointError(
            f"refusing to write {out}: it is one of the files of run directory {owner}; "
            "export to a path outside the run's own files"
        )
    if out.is_dir():
        raise CheckpointError(f"{out} is a folder; give the file to write (e.g. {out}/backbone.pt)")
    if out.exists() and not force:
        raise CheckpointError(f"{out} exists; pass --force to replace it, or choose another path")


def export_backbone(
    path: str | Path,
    out: str | Path,
    force: bool = False,
    file_format: str | None = None,
    which: str | None = None,
) -> BackboneInfo:
    """Write the backbone of any checkpoint (or run) as a ``.pt`` or safetensors file.

    ``file_format`` None: from ``out``'s suffix (``.safetensors``, else ``pt``);
    ``which``: student, target or None (the evaluated one: ``evaluated_prefix``).
    """
    out = Path(out)
    check_export_target(out, force)
    source = Path(path)
    if source.is_dir() and not (source / folders.META_FILE).is_file():
        source = resolve_checkpoint(source)  # a run directory: its newest checkpoint
    backbone, info = load_backbone(source, which)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot write {out}: {one_line(exc)}") from None
    save_backbone(out, dict(backbone.trunk.state_dict()), info, file_format)
    read_weights_file(out)  # what was written reads back as plain weights
    return info
