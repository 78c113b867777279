"""Every bad input of a careless user or an adversary: exit code 2, one line, nothing changed.

Each case starts from a copy of a finished tiny run, damages it where the
case needs (a file of the run, a recipe, a profile), then runs one command;
the run directory's files must be byte-identical before and after.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from selfsup.cli import main
from selfsup.pipelines.config import load_config
from selfsup.pipelines.train.trainer import train

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "configs" / "demo.yaml")
LATEST = Path("checkpoints") / "step_000000006"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("finished")
    overrides = [
        f"run_dir={root / 'run'}", f"data.path={data_root / 'cifar-10-batches-py'}",
        "data.batch_size=16", "data.num_workers=0", "model.channels_last=false",
        "method.proj_hidden_dim=64", "method.proj_output_dim=32", "train.max_steps=6",
        "train.log_every=2", "checkpoint.every_steps=3", "optim.warmup_epochs=0.5",
        "checkpoint.keep_last=1",
    ]  # fmt: skip
    train(load_config(DEMO, overrides))
    (root / "overrides.json").write_text(json.dumps(overrides))
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


Case = Callable[[Path, Path, list[str]], list[str]]  # (run, scratch, run overrides) -> argv


def _train_over(*extra: str) -> Case:
    return lambda run, scratch, base: ["train", DEMO, *base, f"run_dir={run}", *extra]


def _meta_without_step(run: Path, scratch: Path, base: list[str]) -> list[str]:
    meta = json.loads((run / LATEST / "meta.json").read_text())
    del meta["step"]
    (run / LATEST / "meta.json").write_text(json.dumps(meta))
    return ["checkpoint", "export", str(run), str(scratch / "out.pt")]


def _rng_pickle(run: Path, scratch: Path, base: list[str]) -> list[str]:
    torch.save(
        {"torch_cpu": torch.get_rng_state(), "python": Path("x")}, run / LATEST / "rng_rank0.pt"
    )
    from selfsup.pipelines.checkpoint.manifest import write_manifest

    write_manifest(run / LATEST)
    return ["train", DEMO, *base, f"run_dir={run}", "train.max_steps=9"]


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _truncate_shard(run: Path, scratch: Path, base: list[str]) -> list[str]:
    shard = next((run / LATEST).glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:1000])
    return ["checkpoint", "verify", str(run)]


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
    "meta.json without step": (_meta_without_step, "meta.json lacks step"),
    "rng file holding a pickle": (_rng_pickle, "rng_rank0.pt: it carries code"),
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
    "a truncated shard": (_truncate_shard, "truncated or grown"),
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
        "is not a torch weights file",
    ),
    "finetune with a validation share of 1.5": (
        lambda run, s, b: ["finetune", str(run), "val_fraction=1.5"],
        "'finetune.val_fraction' must be strictly between 0 and 1",
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


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_changes_nothing(case, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    base = [o for o in json.loads((finished_run / "overrides.json").read_text())
            if not o.startswith("run_dir=")]  # fmt: skip
    make_args, fragment = CASES[case]
    args = make_args(run, scratch, base)
    before = snapshot(run)
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("selfsup: error:"), err
    assert "Traceback" not in err and fragment in lines[0], lines[0]
    assert snapshot(run) == before
    assert not (scratch / "student").exists() and not (scratch / "ran").exists()
