"""Checkpoints of sparse and distilled runs whose records were altered: refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers.bad_input import DEMO, Ctx, check_row, copy_run, edit_json
from helpers.teachers import write_teacher

from selfsup.pipelines.checkpoint.dcp_io import load_everything
from selfsup.pipelines.checkpoint.manifest import write_manifest
from selfsup.pipelines.config import load_config
from selfsup.pipelines.train.trainer import train

SPARSE = ["sparsity.target=0.5", "sparsity.schedule=one_shot", "sparsity.start=1"]


def finished(root, base, *extra):
    train(load_config(DEMO, [*base, f"run_dir={root / 'run'}", *extra]))
    return root


@pytest.fixture(scope="module")
def sparse_and_distilled(finished_run, tmp_path_factory):
    base = json.loads((finished_run / "overrides.json").read_text())
    teacher = write_teacher(tmp_path_factory.mktemp("teacher") / "t.pt", seed=3)
    distill = ["method.name=distill", f"method.teacher={teacher}"]
    return {
        "sparse": (finished(tmp_path_factory.mktemp("sparse"), base, *SPARSE), SPARSE),
        "distilled": (finished(tmp_path_factory.mktemp("distilled"), base, *distill), distill),
    }


def _masks_as_floats(ctx: Ctx) -> None:
    """Rewrite the checkpoint with its masks as floats {-0.25, 7.25} (every entry else kept)."""
    state = load_everything(ctx.latest)
    masks = [k for k in state["model"] if k.endswith(".mask")]
    assert masks
    for key in masks:
        state["model"][key] = torch.where(state["model"][key], 7.25, -0.25)
    for file in list(ctx.latest.iterdir()):
        if file.name not in ("meta.json", "rng_rank0.pt"):
            file.unlink()
    dcp.save(state, checkpoint_id=ctx.latest)
    write_manifest(ctx.latest)


ROWS = {
    "verify: masks rewritten as floats": ("sparse", _masks_as_floats, "verify", "not bool"),
    "inspect: masks rewritten as floats": ("sparse", _masks_as_floats, "inspect", "not bool"),
    "export: masks rewritten as floats": ("sparse", _masks_as_floats, "export", "not bool"),
    "resume: masks rewritten as floats": ("sparse", _masks_as_floats, "resume", "not bool"),
    "resume: a one-shot run with another target": (
        "sparse", lambda c: None, "resume sparsity.target=0.75", "would never apply",
    ),
    "resume: teacher record deleted from meta.json": (
        "distilled",
        lambda c: (edit_json(c.latest / "meta.json", lambda m: m.pop("teacher")),
                   write_manifest(c.latest)),
        "resume", "records no teacher",
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("row", sorted(ROWS))
def test_altered_records_of_sparse_and_distilled_runs_are_refused(
    row, sparse_and_distilled, ctx, capsys
):
    kind, damage, command, fragment = ROWS[row]
    root, settings = sparse_and_distilled[kind]
    run = ctx.run.with_name(kind)
    copy_run(root / "run", run)
    ctx = Ctx(run=run, scratch=ctx.scratch, base=[*ctx.base, *settings], data_root=ctx.data_root)

    def make_args(c: Ctx) -> list[str]:
        damage(c)
        name, *extra = command.split()
        return {
            "verify": ["checkpoint", "verify", str(c.run)],
            "inspect": ["checkpoint", "inspect", str(c.run)],
            "export": ["checkpoint", "export", str(c.latest), str(c.out / "b.pt")],
            "resume": c.train("train.max_steps=9", *extra),
        }[name]

    check_row((make_args, fragment), ctx, capsys)
