"""Distillation runs end to end: what the checkpoint holds, and which teacher it may resume with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.teachers import write_teacher

from selfsup.cli import main
from selfsup.pipelines.checkpoint.dcp_io import load_everything, stored_keys
from selfsup.pipelines.checkpoint.folders import find_latest, read_meta
from selfsup.pipelines.train.teacher import weights_sha256

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "configs" / "demo.yaml")


@pytest.fixture
def distilled(tiny_overrides, tmp_path, monkeypatch):
    """A finished 4-step distillation run (regression + SEED + SimCLR) from a random teacher.

    The start builds the model once and opens the teacher's file once (counted here).
    """
    import builtins

    from selfsup.pipelines.train import trainer

    teacher = write_teacher(tmp_path / "teacher.pt", seed=7)
    run = tmp_path / "student"
    args = [
        *tiny_overrides, f"run_dir={run}", "train.max_steps=4", "checkpoint.every_steps=2",
        "method.name=distill", f"method.teacher={teacher}", "method.seed_weight=0.5",
        "method.seed_queue_size=40", "method.simclr_weight=0.5",
    ]  # fmt: skip
    opens, builds = [], []
    real_open, real_build = builtins.open, trainer.build_model_with_teacher

    def counting_open(file, *a, **k):
        if isinstance(file, (str, Path)) and Path(file).resolve() == teacher.resolve():
            opens.append(file)
        return real_open(file, *a, **k)

    def counting_build(*a, **k):
        builds.append(a[0].model.backbone)
        return real_build(*a, **k)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(trainer, "build_model_with_teacher", counting_build)
    assert main(["train", DEMO, *args]) == 0
    monkeypatch.undo()
    assert len(opens) == 1 and builds == ["resnet18"], (opens, builds)
    return run, teacher, args


def test_the_students_checkpoint_holds_no_teacher_tensor(distilled):
    run, teacher_file, _ = distilled
    checkpoint = find_latest(run / "checkpoints")
    stored = stored_keys(checkpoint)
    model_keys = {k[len("model.") :] for k in stored if k.startswith("model.")}
    assert model_keys and not any("teacher" in k for k in stored)
    heads = {k.split(".")[0] for k in model_keys}
    assert heads == {"backbone", "distill_head", "projection_head", "queue"}

    flat = load_everything(checkpoint)["model"]
    teacher = torch.load(teacher_file, weights_only=True)["state_dict"]
    student_tensors = [t for t in flat.values() if t.numel() > 1]
    for name, tensor in teacher.items():
        if tensor.numel() > 1 and tensor.is_floating_point() and "running_var" not in name:
            assert not any(
                t.shape == tensor.shape and torch.equal(t, tensor) for t in student_tensors
            ), f"the teacher's {name} is in the student's checkpoint"

    recorded = read_meta(checkpoint)["teacher"]
    assert recorded == {"origin": str(teacher_file), "sha256": weights_sha256(teacher)}
    assert json.loads((run / "summary.json").read_text())["teacher"] == recorded
    student = torch.load(run / "backbone.pt", weights_only=True)
    assert student["backbone"]["name"] == "resnet18" and student["step"] == 4


def test_resuming_with_another_teacher_is_refused_in_one_line(distilled, capsys):
    run, teacher_file, args = distilled
    other = write_teacher(teacher_file.with_name("other.pt"), seed=8)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    capsys.readouterr()
    code = main(["train", DEMO, *args, f"method.teacher={other}", "train.max_steps=6"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "was distilled from teacher" in err[0] and "resume with the original teacher" in err[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    # The same weights under another name are the same teacher: resuming goes on.
    same = teacher_file.with_name("copy.pt")
    same.write_bytes(teacher_file.read_bytes())
    assert main(["train", DEMO, *args, f"method.teacher={same}", "train.max_steps=6"]) == 0


def test_a_vit_teacher_at_another_size_is_fed_resized_views(tiny_overrides, tmp_path):
    teacher = write_teacher(tmp_path / "vit.pt", seed=3, name="vit_tiny", image_size=32,
                            patch_size=4)  # fmt: skip
    run = tmp_path / "student"
    args = [*tiny_overrides, f"run_dir={run}", "train.max_steps=2", "method.name=distill",
            f"method.teacher={teacher}", "method.teacher_image_size=48"]  # fmt: skip
    assert main(["train", DEMO, *args]) == 0
    assert "finished 2 steps" in (run / "train.log").read_text()


def test_a_steps_flops_count_the_teachers_forward_pass(tiny_overrides, tmp_path):
    from torch.utils.flop_counter import FlopCounterMode

    from selfsup.pipelines.config import load_config
    from selfsup.pipelines.train.trainer import _step_flops
    from selfsup.ssl.backbones import build_backbone

    teacher = write_teacher(tmp_path / "r50.pt", seed=3, name="resnet50")
    distill = load_config(DEMO, [*tiny_overrides, "method.name=distill",
                                 f"method.teacher={teacher}"])  # fmt: skip
    simclr = load_config(DEMO, tiny_overrides)
    with torch.device("meta"):
        r50 = build_backbone("resnet50", image_size=32)
        images = torch.zeros(2 * distill.data.batch_size, 3, 32, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        r50(images)
    teacher_forward = counter.get_total_flops()
    from selfsup.pipelines.train.build import build_model

    with_teacher = _step_flops(build_model(distill), distill, 1)
    student_alone = _step_flops(build_model(simclr), simclr, 1)
    assert with_teacher is not None and student_alone is not None
    # The teacher's forward pass, plus a student step (heads differ slightly).
    assert with_teacher - teacher_forward == pytest.approx(student_alone, rel=0.05)


@pytest.mark.slow
def test_report_puts_teacher_distilled_and_undistilled_students_side_by_side(
    tiny_overrides, data_root, tmp_path, capsys
):
    teacher, student, control = (tmp_path / n for n in ("teacher", "student", "control"))
    assert main(["train", DEMO, *tiny_overrides, f"run_dir={teacher}", "train.max_steps=2"]) == 0
    assert main(["train", DEMO, *tiny_overrides, f"run_dir={student}", "train.max_steps=4",
                 "method.name=distill", f"method.teacher={teacher}"]) == 0  # fmt: skip
    assert main(["train", DEMO, *tiny_overrides, f"run_dir={control}", "train.max_steps=4"]) == 0
    knn = {}
    for run in (teacher, student, control):
        assert main(["probe", str(run), "--data", str(data_root), "--datasets", "cifar10"]) == 0
        report = json.loads((run / "report.json").read_text())
        knn[run.name] = f"{report['probe']['results'][0]['trained']['knn_top1']:.2f}"
    capsys.readouterr()
    assert main(["report", str(control), str(student), str(teacher)]) == 0
    out = capsys.readouterr().out
    assert f"distillation: student from teacher {teacher} (top-1 %)" in out
    table = [line for line in out[out.index("distillation: student") :].splitlines() if "│" in line]
    rows = {role: next(line for line in table if f" {role} " in line)
            for role in ("teacher", "distilled student", "undistilled student")}  # fmt: skip
    assert str(teacher) in rows["teacher"] and knn["teacher"] in rows["teacher"]
    assert " student " in rows["distilled student"] and knn["student"] in rows["distilled student"]
    assert " control " in rows["undistilled student"]
    assert knn["control"] in rows["undistilled student"]


@pytest.mark.parametrize(
    "recipe", sorted((REPO / "configs").glob("distill_*.yaml")), ids=lambda p: p.stem
)
def test_each_distillation_recipe_names_a_shipped_teacher_recipe_and_trains_a_step(
    recipe, tmp_path
):
    from selfsup.pipelines.config import load_config
    from selfsup.pipelines.train.build import build_model

    config = load_config(recipe)
    teacher_recipe = REPO / "configs" / f"{Path(config.method.teacher).name}.yaml"
    assert teacher_recipe.is_file(), f"{recipe.name}: no recipe trains its teacher"
    teacher = load_config(teacher_recipe)
    assert teacher.model.backbone != config.model.backbone or "vit" in config.model.backbone
    file = write_teacher(
        tmp_path / "teacher.pt", seed=0, name=teacher.model.backbone,
        image_size=teacher.data.image_size, cifar_stem=teacher.model.cifar_stem,
        patch_size=teacher.model.patch_size,
    )  # fmt: skip
    model = build_model(load_config(recipe, [f"method.teacher={file}"]))
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    output = model(views)
    output.loss.backward()
    assert torch.isfinite(output.loss) and set(output.metrics) == {
        "loss/regression", "loss/seed", "loss/ntxent"
    }  # fmt: skip
