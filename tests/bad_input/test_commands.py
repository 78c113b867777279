"""Bad arguments, settings, recipes, profiles and reports: exit code 2, one line, nothing changed.

Each case starts from a copy of a finished tiny run (``helpers.bad_input``),
damages what it needs (a file of the run, a recipe, a profile), then runs one
command; the run's and the scratch folder's files must be byte-identical after.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import write_image_folder
from helpers.bad_input import DEMO, check_row, replace

from selfsup.cli import main

Case = Callable[[Path, Path, list[str]], list[str]]  # (run, scratch, run overrides) -> argv


def _train_over(*extra: str) -> Case:
    """Resume the run with ``extra`` (RUN_BACKBONE: its backbone.pt)."""
    return lambda run, scratch, base: [
        "train", DEMO, *base, f"run_dir={run}",
        *(e.replace("RUN_BACKBONE", str(run / "backbone.pt")) for e in extra),
    ]  # fmt: skip


def _new_run(recipe: str, *extra: str) -> Case:
    """Start a new run of ``configs/RECIPE.yaml`` in the scratch folder with ``extra``."""
    return lambda run, scratch, base: [
        "train", str(Path(DEMO).parent / f"{recipe}.yaml"), f"run_dir={scratch / recipe}", *extra,
    ]  # fmt: skip


_write = replace  # a new file, never through a link shared with the finished run


def _tensors(path: Path) -> Path:
    """A state_dict file of one tensor (a checkpoint of no backbone)."""
    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(2)}, buffer)
    return _write(path, buffer.getvalue())


def _report_of_wrong_shape(run: Path, scratch: Path, base: list[str]) -> list[str]:
    _write(run / "report.json", json.dumps({"format": "selfsup.report/1", "probe": 3}))
    return ["report", str(run)]


def _submit_with_profile(text: str) -> Case:
    return lambda run, scratch, base: [
        "submit", DEMO, "--cluster", str(_write(scratch / "c.yaml", text)), "--dry-run",
    ]  # fmt: skip


CASES: dict[str, tuple[Case, str]] = {
    "negative lr": (_train_over("optim.base_lr=-1"), "'optim.base_lr' must be a finite number"),
    "zero temperature": (_train_over("method.temperature=0"), "'method.temperature' must be"),
    "nan lr": (_train_over("optim.base_lr=nan"), "'optim.base_lr' must be a finite number"),
    "background checkpoints on deepspeed": (
        _train_over("train.engine=deepspeed", "checkpoint.async_save=true"),
        "DeepSpeed writes its own format synchronously",
    ),
    "sparsity on fsdp": (
        _train_over("train.engine=fsdp", "sparsity.target=0.5"),
        "which FSDP's sharded DTensor parameters do not carry: use train.engine=ddp",
    ),
    "resume with another projection head": (
        _train_over("method.proj_hidden_dim=32"),
        "holds checkpoints of another model (method.proj_hidden_dim: 64 -> 32)",
    ),
    "online linear classifier on simmim": (
        _new_run("simmim_resnet18_cifar10", "monitor.linear=true"),
        "method.name=simmim does not give (distill, ijepa, mae, simclr do): set "
        "monitor.linear=false",
    ),
    "ijepa on zero-3": (
        _new_run("ijepa_vit_tiny_cifar10", "train.engine=deepspeed", "train.zero_stage=3"),
        "which DeepSpeed ZeRO-3 cannot gather: use train.zero_stage=2 (or 0/1), or "
        "train.engine=fsdp",
    ),
    "ijepa on class-token features": (
        _new_run("ijepa_vit_tiny_cifar10", "model.pool=token"),
        "method.name=ijepa is evaluated on the average of its patch tokens, as in the paper: "
        "set model.pool=avg, not model.pool=token",
    ),
    "ijepa on a resnet": (
        _new_run("ijepa_vit_tiny_cifar10", "model.backbone=resnet18"),
        "method.name=ijepa needs a ViT backbone (vit_tiny, vit_small, vit_base), not "
        "model.backbone=resnet18",
    ),
    "ijepa momentum above one": (
        _new_run("ijepa_vit_tiny_cifar10", "method.momentum_end=1.5"),
        "config key 'method.momentum_end' must be within [0, 1], got 1.5",
    ),
    "ijepa with sparsity": (
        _new_run("ijepa_vit_tiny_cifar10", "sparsity.target=0.5"),
        "sparsity is not available for momentum methods; prune the exported encoder",
    ),
    "export the target of a run without one": (
        lambda run, scratch, base: [
            "checkpoint",
            "export",
            str(run),
            str(scratch / "t.pt"),
            "--which",
            "target",
        ],
        "method simclr has no momentum target encoder; --which target is for methods with one",
    ),
    "monitor without a test split": (
        lambda run, scratch, base: [
            *("train", DEMO, *base, f"run_dir={run}", "data.dataset=imagefolder"),
            "monitor.enabled=true",
            f"data.path={write_image_folder(scratch / 'imgs', splits=('train',))}",
            "data.batch_size=4",
        ],
        "monitor.enabled needs the test split of data.dataset=imagefolder",
    ),
    "export to an existing folder": (
        lambda run, scratch, base: ["checkpoint", "export", str(run), str(scratch)],
        "is a folder",
    ),
    "export to an unwritable path": (
        lambda run, scratch, base: ["checkpoint", "export", str(run), "/proc/selfsup.pt"],
        "cannot write /proc/selfsup.pt",
    ),
    "export over the run's config": (
        lambda run, scratch, base: ["checkpoint", "export", str(run), str(run / "config.yaml")],
        "one of the files of run directory",
    ),
    "report.json of the wrong shape": (_report_of_wrong_shape, "is not a selfsup report"),
    "probe on a tpu": (
        lambda run, s, b: ["probe", str(run), "--device", "tpu"],
        "--device is 'tpu'",
    ),
    "cluster profile of bad YAML": (_submit_with_profile("p: [x\n"), "is not valid YAML"),
    "status of a folder that is no run": (
        lambda run, scratch, base: ["status", str(scratch)],
        "is not a selfsup run directory (it has no selfsup-run.json)",
    ),
    "cluster profile that is a list": (
        _submit_with_profile("- a\n"),
        "must hold a mapping of settings",
    ),
    "a base recipe that is not a recipe": (
        lambda run, s, b: ["config", "show", str(_write(s / "r.yaml", "_base_: /etc/passwd\n"))],
        "it names another recipe, a .yaml file",
    ),
    "random bytes as weights": (
        lambda run, s, b: ["probe", str(_write(s / "w.pt", b"\x80" + bytes(range(200))))],
        "is not a readable torch weights file",
    ),
    "train without a recipe": (lambda run, s, b: ["train"], "selfsup train needs a recipe"),
    "report on a folder that is not a run": (
        lambda run, s, b: ["report", str(s)],
        "is not a selfsup run directory",
    ),
    "inspect a missing .beton": (
        lambda run, s, b: ["data", "inspect", str(s / "none.beton")],
        "does not exist",
    ),
    "starting over a finished run": (
        _train_over("checkpoint.resume=false"),
        "holds the checkpoints of an earlier run",
    ),
    "a run_dir that is another folder": (
        lambda run, s, b: ["train", DEMO, *b, f"run_dir={_write(s / 'notes.txt', 'x').parent}"],
        "is not a selfsup run directory",
    ),
    "finetune with an unknown recipe": (
        lambda run, s, b: ["finetune", str(run), "--recipe", "fulll"],
        "unknown fine-tune recipe 'fulll' (did you mean 'full'?)",
    ),
    "finetune on an unknown dataset": (
        lambda run, s, b: ["finetune", str(run), "--datasets", "cifar100"],
        "'finetune.datasets' holds 'cifar100'",
    ),
    "finetune with its dataset folder missing": (
        lambda run, s, b: [
            "finetune",
            str(run),
            "--datasets",
            "fashion_mnist",
            "--data",
            str(s / "nowhere"),
        ],
        "nowhere",
    ),
    "finetune a file that is not a backbone": (
        lambda run, s, b: ["finetune", str(_write(s / "notes.pt", "hello"))],
        "is not a weights file",
    ),
    "finetune with a validation share of 1.5": (
        lambda run, s, b: ["finetune", str(run), "val_fraction=1.5"],
        "'finetune.val_fraction' must be strictly between 0 and 1",
    ),
    "finetune from a supervised checkpoint of another architecture": (
        lambda run, s, b: ["finetune", str(run), f"supervised={_tensors(s / 'r.pth')}"],
        "is not a resnet18 checkpoint of the backbone's shape (missing: bn1.bias",
    ),
    "a backbone no library has": (
        _train_over("model.backbone=timm/efficientnet_b99"),
        "model.backbone=timm/efficientnet_b99 names no model of timm's registry",
    ),
    "finetune with a head of 5 hidden layers": (
        lambda run, s, b: ["finetune", str(run), "head_hidden=[8,8,8,8,8]"],
        "'finetune.head_hidden' is [8, 8, 8, 8, 8]; it takes at most 4",
    ),
}


def _distill_from(teacher: Callable[[Path, Path], Path], *extra: str) -> Case:
    """Train a distillation student into scratch/student from the teacher a case makes."""
    return lambda run, s, b: [
        "train", DEMO, *b, f"run_dir={s / 'student'}", "method.name=distill",
        f"method.teacher={teacher(run, s)}", *extra,
    ]  # fmt: skip


def _teacher_carrying_code(run: Path, scratch: Path) -> Path:
    from helpers.payloads import poison_zip_pickle

    teacher = scratch / "teacher.pt"
    shutil.copy(run / "backbone.pt", teacher)
    poison_zip_pickle(teacher, scratch / "ran")
    return teacher


def _vit_teacher(run: Path, scratch: Path) -> Path:
    from helpers.teachers import write_teacher

    return write_teacher(scratch / "vit.pt", seed=1, name="vit_tiny", patch_size=4)


CASES |= {
    "distill from a missing teacher": (
        _distill_from(lambda run, s: s / "none"),
        "'method.teacher' names",
    ),
    "distill from a teacher that is not a backbone": (
        _distill_from(lambda run, s: torch.save({"w": torch.ones(2)}, s / "t.pt") or s / "t.pt"),
        "is not a selfsup backbone file",
    ),
    "distill from a teacher file that carries code": (
        _distill_from(_teacher_carrying_code),
        "teacher.pt: it carries code",
    ),
    "distill from a ViT teacher at a size its patches cannot tile": (
        _distill_from(_vit_teacher, "method.teacher_image_size=30"),
        "'method.teacher_image_size' is 30, which the teacher's 4-pixel patches cannot tile",
    ),
    "finetune from a missing teacher": (
        lambda run, s, b: ["finetune", str(run), "--datasets", "cifar10", f"teacher={s / 'no'}"],
        "'finetune.teacher' names",
    ),
    "finetune from a teacher that is a backbone, not a classifier": (
        lambda run, s, b: [
            "finetune",
            str(run),
            "--datasets",
            "cifar10",
            f"teacher={run / 'backbone.pt'}",
        ],
        "is not a selfsup classifier file",
    ),
    "distill with every loss off": (
        _distill_from(lambda run, s: run, "method.regression=none"),
        "every loss is off",
    ),
}
if not torch.cuda.is_available():
    CASES["probe on a missing GPU"] = (
        lambda run, s, b: ["probe", str(run), "--device", "cuda"],
        "--device cuda, but no GPU",
    )


def _report(change) -> Case:
    """``selfsup report`` on the run, its report.json (a valid one) changed by ``change``."""

    def make(run: Path, scratch: Path, base: list[str]) -> list[str]:
        result = {"dataset": "cifar10", "trained": {"linear_top1": 40.0, "knn_top1": 30.0},
                  "random_init": {"linear_top1": 20.0, "knn_top1": 10.0}}  # fmt: skip
        report = {"format": "selfsup.report/1", "run": {"name": "r", "method": "simclr",
                  "final_loss": 1.0}, "probe": {"backbone": {"name": "resnet18", "origin": "x",
                  "step": 6}, "results": [result]}}  # fmt: skip
        change(report)
        _write(run / "report.json", json.dumps(report))
        return ["report", str(run)]

    return make


def _result(**values):
    return lambda r: r["probe"]["results"][0].update(values)


def _config_yaml(text: str, *command: str) -> Case:
    """A command on the run after its config.yaml was replaced by ``text``."""

    def make(run: Path, scratch: Path, base: list[str]) -> list[str]:
        _write(run / "config.yaml", text)
        return [part.replace("RUN", str(run)) for part in command]

    return make


def _probe_with_summary(text: str) -> Case:
    return lambda run, s, b: ["probe", str(_write(run / "summary.json", text).parent)]


def _prune_to(out: Callable[[Path, Path], Path], *flags: str) -> Case:
    """``selfsup prune RUN --out OUT`` with OUT from ``out(run, scratch)``."""
    return lambda run, s, b: ["prune", str(run), "--target", "0.5", "--out", str(out(run, s)),
                              *flags]  # fmt: skip


def _recipe(text: str, *extra: str) -> Case:
    return lambda run, s, b: ["train", str(_write(s / "r.yaml", text)), *b,
                              f"run_dir={s.parent / 'out'}", *extra]  # fmt: skip


CASES |= {
    "report.json with a dataset of wrong type": (_report(_result(dataset=3)), "not a selfsup"),
    "report.json with accuracy as text": (
        _report(_result(trained={"linear_top1": "high", "knn_top1": 1.0})),
        "not a selfsup report",
    ),
    "report.json with accuracy of 1e9": (
        _report(_result(trained={"linear_top1": 1e9, "knn_top1": 1.0})),
        "not a selfsup report",
    ),
    "report.json with a random-init of wrong type": (
        _report(_result(random_init=[1, 2])),
        "not a selfsup report",
    ),
    "report.json whose run is a list": (
        _report(lambda r: r.update(run=[1])),
        "not a selfsup report",
    ),
    "report.json with a final loss as text": (
        _report(lambda r: r["run"].update(final_loss="low")),
        "not a selfsup report",
    ),
    "report.json with a step as text": (
        _report(lambda r: r["probe"]["backbone"].update(step="six")),
        "not a selfsup report",
    ),
    "report.json with a backbone name of wrong type": (
        _report(lambda r: r["probe"]["backbone"].update(name=["x"])),
        "not a selfsup report",
    ),
    "run config.yaml with an unresolvable interpolation (probe)": (
        _config_yaml("optim:\n  base_lr: ${nowhere.lr}\n", "probe", "RUN", "--no-baseline"),
        "config.yaml",
    ),
    "run config.yaml with an unresolvable interpolation (resume)": (
        _config_yaml("optim:\n  base_lr: ${nowhere.lr}\n", "train", DEMO, "run_dir=RUN"),
        "config.yaml",
    ),
    "run config.yaml of bad YAML (export)": (
        _config_yaml("model: [\n", "checkpoint", "export", "RUN", "RUN/../x.pt"),
        "config.yaml",
    ),
    "run config.yaml that is a list (finetune)": (
        _config_yaml("- 1\n", "finetune", "RUN", "--datasets", "cifar10"),
        "config.yaml",
    ),
    "run config.yaml with an unknown key (resume)": (
        _config_yaml("modle:\n  backbone: resnet18\n", "train", DEMO, "run_dir=RUN"),
        "modle",
    ),
    "summary.json that is not JSON": (_probe_with_summary("{"), "summary.json"),
    "summary.json that is a list": (_probe_with_summary("[1]"), "summary.json"),
    "summary.json with a step as text": (_probe_with_summary('{"step": "6"}'), "summary.json"),
    "recipe with an unresolvable interpolation": (
        _recipe("optim:\n  base_lr: ${optim.nope}\n"),
        "r.yaml",
    ),
    "recipe with an interpolation cycle": (
        _recipe("optim:\n  base_lr: ${optim.base_lr}\n"),
        "r.yaml",
    ),
    "recipe that is a number": (_recipe("3\n"), "r.yaml"),
    "recipe with a base that does not exist": (_recipe("_base_: nowhere.yaml\n"), "nowhere"),
    "recipe whose base is itself": (_recipe("_base_: r.yaml\n"), "r.yaml"),
    "override with an unresolvable interpolation": (
        _train_over("optim.base_lr=${nowhere}"),
        "optim.base_lr",
    ),
    "an image size of 100000": (_train_over("data.image_size=100000"), "data.image_size"),
    "a teacher image size of 4096": (
        _train_over(
            "method.name=distill", "method.teacher=RUN_BACKBONE", "method.teacher_image_size=4096"
        ),
        "teacher_image_size",
    ),
    "finetune --out that is a file": (
        lambda run, s, b: [
            "finetune",
            str(run),
            "--datasets",
            "cifar10",
            f"--out={_write(s / 'f.txt', 'x')}",
        ],
        "is a file",
    ),
    "prune --out that is a folder": (_prune_to(lambda run, s: s), "is a folder"),
    "prune --out over an existing file": (
        _prune_to(lambda run, s: _write(s / "p.pt", "keep")),
        "--force",
    ),
    "prune --out over the run's config": (
        _prune_to(lambda run, s: run / "config.yaml", "--force"),
        "one of the files of run directory",
    ),
    "prune --out over the run's backbone": (
        _prune_to(lambda run, s: run / "backbone.pt", "--force"),
        "one of the files of run directory",
    ),
    "export into a folder that is a file": (
        lambda run, s, b: [
            "checkpoint",
            "export",
            str(run),
            str(_write(s / "f", "x") / "b.pt"),
        ],
        "cannot write",
    ),
    "data write over an existing file": (
        lambda run, s, b: ["data", "write", str(s), str(_write(s / "d.beton", "keep"))],
        "exists; pass --force",
    ),
    "data write onto a folder": (
        lambda run, s, b: ["data", "write", str(s), str(s)],
        "is a folder",
    ),
    "a missing .beton": (
        _train_over("data.loader=ffcv", "data.beton=/nonexistent/train.beton"),
        "/nonexistent/train.beton",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_changes_nothing(case, ctx, capsys):
    make_args, fragment = CASES[case]
    check_row((lambda c: make_args(c.run, c.scratch, c.base), fragment), ctx, capsys)


def test_names_from_a_report_never_reach_the_terminal_as_markup_or_escapes(ctx, capsys):
    hostile = "[link=https://example.invalid]cifar[/link]\x1b[2J|evil"
    make = _report(_result(dataset=hostile))
    assert main(make(ctx.run, ctx.scratch, ctx.base)) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out, "a terminal escape reached the terminal"
    assert "[link=https://example.invalid]cifar[/link]?[2J|evil" in out  # shown, not obeyed
    from selfsup.text import markdown_table

    assert markdown_table(["dataset"], [[hostile]])[-1] == (
        "| [link=https://example.invalid]cifar[/link]?[2J\\|evil |"
    )
