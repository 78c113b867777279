"""Fine-tuning: frozen then unfrozen phases, layer decay, exact resume, reports."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selfsup.cli import main
from selfsup.eval.finetune.phase import layer_decay_for
from selfsup.pipelines.config import OptimConfig
from selfsup.pipelines.train.optim import build_optimizer, layer_decay_groups
from selfsup.pipelines.train.trainer import train
from selfsup.ssl.backbones import build_backbone
from selfsup.ssl.classifier import Classifier, SupervisedObjective

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pretrained_run(tiny_overrides, tmp_path) -> Path:
    from selfsup.pipelines.config import load_config

    return train(load_config(None, [*tiny_overrides, "train.max_steps=3"])).run_dir


def finetune_args(run: Path, data_root: Path, *extra: str) -> list[str]:
    return [
        "finetune", str(run), "--datasets", "cifar10", "--data", str(data_root), "--device",
        "cpu", "batch_size=16", "num_workers=0", "train_samples=160", "test_samples=40",
        "optim.warmup_epochs=0", "log_every=2", *extra,
    ]  # fmt: skip


def classifier_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_head_then_unfreeze_freezes_the_base_then_trains_it_at_the_lower_rate(
    pretrained_run, data_root, capsys
):
    args = finetune_args(
        pretrained_run, data_root, "--recipe", "head_then_unfreeze", "epochs=1",
        "unfreeze_epochs=1", "optim.schedule=step", "baseline=false",
    )  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    start = torch.load(pretrained_run / "backbone.pt", weights_only=True)["state_dict"]
    init = pretrained_run / "finetune" / "cifar10" / "head_then_unfreeze" / "pretrained"
    after_frozen = classifier_state(init / "frozen_base" / "classifier.pt")
    after_unfrozen = classifier_state(init / "unfrozen" / "classifier.pt")
    trunk = {k[len("backbone.trunk.") :]: v for k, v in after_frozen.items() if "trunk." in k}
    assert trunk.keys() == start.keys()
    bn_stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert bn_stats and all(torch.equal(trunk[k], start[k]) for k in start)  # bitwise, BN too
    moved = [k for k in start if not torch.equal(after_unfrozen[f"backbone.trunk.{k}"], start[k])]
    assert any(k in moved for k in bn_stats) and any(k.endswith("weight") for k in moved)
    head = [k for k in after_frozen if k.startswith("head.")]
    assert head and any(not torch.equal(after_frozen[k], after_unfrozen[k]) for k in head)
    history = json.loads((init / "history.json").read_text())["epochs"]
    assert [e["phase"] for e in history] == ["frozen_base", "unfrozen"]
    assert history[1]["lr"] == pytest.approx(history[0]["lr"] * 0.1)  # step schedule: constant


def test_layer_decay_gives_block_i_lr_times_decay_to_the_depth_minus_i():
    backbone = build_backbone("vit_tiny", image_size=32, patch_size=8)
    objective = SupervisedObjective(Classifier(backbone, 10))
    optim = OptimConfig(name="adamw", base_lr=0.256, weight_decay=0.05)
    trunk = backbone.trunk
    groups = layer_decay_groups(objective, trunk, optim, decay=0.65)
    optimizer = build_optimizer(objective, optim, global_batch=256, groups=groups)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    depth = len(trunk.blocks)  # type: ignore[arg-type]
    for i, block in enumerate(trunk.blocks):  # type: ignore[arg-type]
        for p in block.parameters():
            assert lr_of[id(p)] == pytest.approx(0.256 * 0.65 ** (depth - i))
    for p in objective.classifier.head.parameters():
        assert lr_of[id(p)] == pytest.approx(0.256)
    assert lr_of[id(trunk.patch_embed.proj.weight)] == pytest.approx(0.256 * 0.65 ** (depth + 1))
    assert len(lr_of) == sum(1 for _ in objective.parameters())  # every parameter, once


def test_layer_decay_defaults_by_backbone():
    class Inputs:
        def __init__(self, name, decay=None):
            self.info = type("I", (), {"name": name})()
            self.ft = type("F", (), {"layer_decay": decay})()

    assert layer_decay_for(Inputs("vit_base")) == 0.65  # type: ignore[arg-type]
    assert layer_decay_for(Inputs("resnet18")) is None  # type: ignore[arg-type]
    assert layer_decay_for(Inputs("vit_small", 1.0)) is None  # type: ignore[arg-type]


def start_finetune(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "selfsup", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip


@pytest.mark.slow
def test_sigkill_during_a_finetune_then_rerun_resumes_and_ends_identical(
    pretrained_run, data_root, tmp_path
):
    def args(out: Path) -> list[str]:
        return [*finetune_args(pretrained_run, data_root, "--recipe", "full", "epochs=4",
                               "baseline=false"), "--out", str(out)]  # fmt: skip

    straight = start_finetune(args(tmp_path / "a"))
    assert straight.wait(timeout=300) == 0, straight.communicate()
    crashed = tmp_path / "b"
    process = start_finetune(args(crashed))
    full = crashed / "finetune" / "cifar10" / "full" / "pretrained" / "full"
    deadline = time.monotonic() + 180
    while not (full / "checkpoints" / "step_000000020").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert not (full / "classifier.pt").exists()  # it died before the end
    again = start_finetune(args(crashed))
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resuming from checkpoint" in err and " at step 20/40" in err, err
    relative = Path("finetune/cifar10/full/pretrained/classifier.pt")
    a, b = classifier_state(tmp_path / "a" / relative), classifier_state(crashed / relative)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    report = json.loads((crashed / "finetune/cifar10/full/report.json").read_text())
    assert (
        report["test_accuracy"]["pretrained"]
        == json.loads((tmp_path / "a" / "finetune/cifar10/full/report.json").read_text())[
            "test_accuracy"
        ]["pretrained"]
    )


def test_full_finetune_report_and_the_comparison_table(pretrained_run, data_root, tmp_path, capsys):
    # The third reference: a supervised checkpoint in torchvision's own format (its
    # ImageNet classifier included), beside the self-supervised weights and scratch.
    import torchvision

    supervised = tmp_path / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18().state_dict(), supervised)
    args = finetune_args(
        pretrained_run,
        data_root,
        "--recipe",
        "full",
        "epochs=2",
        f"supervised={supervised}",
        "optim.clip_grad_norm=1.0",
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cifar10 full: test top-1 pretrained" in out and "scratch" in out
    folder = pretrained_run / "finetune" / "cifar10" / "full"
    report = json.loads((folder / "report.json").read_text())
    assert set(report["test_accuracy"]) == {"pretrained", "scratch", "supervised"}
    assert (
        "*Supervised*: the library's ImageNet classifier weights"
        in (folder / "report.md").read_text()
    )
    for init in ("pretrained", "scratch", "supervised"):
        result = report["results"][init]
        assert len(result["test"]["per_class"]) == 10 and len(result["history"]) == 2
        assert sum(map(sum, result["test"]["confusion"])) == report["test_images"] == 40
    assert report["train_images"] == 160 and report["val_images"] == 16
    for name in ("report.md", "curves.png", "confusion.png"):
        assert (folder / name).stat().st_size > 0
    assert main(["report", str(pretrained_run)]) == 0
    table = capsys.readouterr().out
    assert "cifar10: test top-1" in table and "full (pretrained / scratch)" in table
    pretrained, scratch = report["test_accuracy"]["pretrained"], report["test_accuracy"]["scratch"]
    assert f"{pretrained:.2f} / {scratch:.2f}" in table


@pytest.mark.slow
def test_finetune_under_torchrun_runs_on_two_fsdp_processes(
    pretrained_run, data_root, tmp_path, capsys
):
    """FSDP (finetune.engine): a frozen base beside trained heads in one sharded model,
    then unfrozen; validation gathers the shards on every rank."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    args = finetune_args(pretrained_run, data_root, "--recipe", "head_then_unfreeze", "epochs=1",
                         "unfreeze_epochs=1", "baseline=false", "engine=fsdp")  # fmt: skip
    process = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "selfsup", *args, "--out", str(tmp_path / "fsdp")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-4000:]
    assert "batch 16 x 2 process(es)" in process.stderr and "engine fsdp" in process.stderr
    folder = tmp_path / "fsdp" / "finetune" / "cifar10" / "head_then_unfreeze"
    history = json.loads((folder / "pretrained" / "history.json").read_text())["epochs"]
    assert [e["epoch"] for e in history] == [1, 2]  # one entry per epoch, not one per rank
    assert json.loads((folder / "report.json").read_text())["test_images"] == 40
    # The --out folder is reported like a run directory (its fine-tune reports, no probe).
    capsys.readouterr()
    assert main(["report", str(tmp_path / "fsdp")]) == 0
    table = capsys.readouterr().out
    assert "cifar10: test top-1" in table and "│ fsdp " in table


def test_randaugment_follows_the_crop_and_is_seeded_per_image(datagen):
    import numpy as np

    from selfsup.pipelines.data.datasets import ArrayDataset
    from selfsup.pipelines.data.loaders import MultiViewCrops, ViewSpec

    images, labels = datagen.class_images(2, 10, 32)
    dataset = ArrayDataset(images, labels, [str(i) for i in range(10)])
    spec = ViewSpec(32, (0.35, 1.0), 1, 4, 0, seed=0, crop="pad", randaugment=9)
    augmented, plain = MultiViewCrops(dataset, spec), MultiViewCrops(dataset, ViewSpec(
        32, (0.35, 1.0), 1, 4, 0, seed=0, crop="pad"))  # fmt: skip
    keys = [(i, 1000 + i) for i in range(len(dataset))]
    first = [augmented[k][0][0] for k in keys]
    assert all(torch.equal(a, augmented[k][0][0]) for a, k in zip(first, keys, strict=True))
    assert any(not torch.equal(a, plain[k][0][0]) for a, k in zip(first, keys, strict=True))
    assert np.array_equal(images, dataset.images)  # the data itself untouched


def test_mixup_and_cutmix_are_a_function_of_the_batch_seed():
    from types import SimpleNamespace

    import numpy as np

    from selfsup.eval.finetune.phase import _mixing

    inputs = SimpleNamespace(
        ft=SimpleNamespace(mixup=0.8, cutmix=1.0, label_smoothing=0.1),
        splits=SimpleNamespace(num_classes=10),
    )
    make = _mixing(inputs)  # type: ignore[arg-type]
    images, labels = torch.rand(8, 3, 16, 16), torch.arange(8)
    state = np.random.get_state()
    # timm mixes in place: each call gets its own copy of the batch.
    a, b = make([images.clone()], labels, 7), make([images.clone()], labels, 7)
    assert torch.equal(a.views[0], b.views[0]) and torch.equal(a.labels, b.labels)
    assert a.labels.shape == (8, 10) and torch.allclose(a.labels.sum(1), torch.ones(8))
    assert not torch.equal(a.views[0], images)  # mixed
    assert np.array_equal(np.random.get_state()[1], state[1])  # numpy's own stream untouched
    objective = SupervisedObjective(Classifier(build_backbone("resnet18"), 10))
    output = objective(type(a)([torch.rand(8, 3, 32, 32)], a.labels))
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)


def test_logit_distillation_finetunes_a_distilled_student_beside_the_undistilled_one(
    pretrained_run, data_root, tmp_path, capsys
):
    teacher_run = pretrained_run
    assert main(finetune_args(teacher_run, data_root, "--recipe", "full", "epochs=2",
                              "baseline=false")) == 0  # fmt: skip
    teacher_file = teacher_run / "finetune" / "cifar10" / "full" / "pretrained" / "classifier.pt"
    out = tmp_path / "student"
    args = finetune_args(pretrained_run, data_root, "--recipe", "full", "epochs=1",
                         "baseline=false", f"teacher={teacher_run}", "distill_alpha=0.7",
                         "--out", str(out))  # fmt: skip
    assert main(args) == 0
    assert "distilled" in capsys.readouterr().out
    folder = out / "finetune" / "cifar10" / "full"
    report = json.loads((folder / "report.json").read_text())
    assert list(report["test_accuracy"]) == ["pretrained", "distilled"]
    from selfsup.pipelines.checkpoint.folders import find_latest, read_meta

    latest = find_latest(folder / "distilled" / "full" / "checkpoints")
    assert latest is not None and read_meta(latest)["teacher"]["origin"] == str(teacher_file)
    curves = {tag for tag, _ in _scalar_tags(folder / "distilled" / "full" / "tb")}
    assert {"train/loss/distill", "train/loss/label"} <= curves
    assert not any("distill" in t for t, _ in _scalar_tags(folder / "pretrained" / "full" / "tb"))


def _scalar_tags(tb_dir: Path) -> list[tuple[str, int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tb_dir))
    accumulator.Reload()
    return [(tag, len(accumulator.Scalars(tag))) for tag in accumulator.Tags()["scalars"]]


def test_a_sparse_finetune_keeps_the_zeros_in_every_covered_layer(pretrained_run, data_root):
    args = finetune_args(pretrained_run, data_root, "--recipe", "full", "epochs=1",
                         "sparsity.target=0.5")  # fmt: skip
    assert main(args) == 0
    folder = pretrained_run / "finetune" / "cifar10" / "full"
    for init in ("pretrained", "scratch"):
        state = classifier_state(folder / init / "classifier.pt")
        weight = state["backbone.trunk.layer3.1.conv2.weight"]
        assert int((weight == 0).sum()) == weight.numel() // 2, init
        assert int((state["backbone.trunk.conv1.weight"] == 0).sum()) == 0
        assert not any(w.eq(0).all() for k, w in state.items() if k.startswith("head."))


def test_a_timm_efficientnet_pretrains_probes_and_fine_tunes(tiny_overrides, data_root, tmp_path):
    import timm

    run = tmp_path / "effnet"
    args = ["train", str(REPO / "configs" / "demo.yaml"), *tiny_overrides, f"run_dir={run}",
            "model.backbone=timm/efficientnet_b0", "train.max_steps=2"]  # fmt: skip
    assert main(args) == 0
    exported = torch.load(run / "backbone.pt", weights_only=True)
    assert exported["backbone"]["name"] == "timm/efficientnet_b0"
    timm.create_model("efficientnet_b0", num_classes=0).load_state_dict(exported["state_dict"])
    assert main(["probe", str(run), "--data", str(data_root), "--datasets", "cifar10"]) == 0
    (probed,) = json.loads((run / "report.json").read_text())["probe"]["results"]
    assert probed["trained"]["knn_top1"] >= 0 and probed["random_init"] is not None
    tuned = finetune_args(run, data_root, "--recipe", "head_then_unfreeze", "epochs=1",
                          "unfreeze_epochs=1", "baseline=false")  # fmt: skip
    assert main(tuned) == 0
    folder = run / "finetune" / "cifar10" / "head_then_unfreeze"
    history = json.loads((folder / "pretrained" / "history.json").read_text())["epochs"]
    assert [e["phase"] for e in history] == ["frozen_base", "unfrozen"]
    assert json.loads((folder / "report.json").read_text())["test_accuracy"]["pretrained"] >= 0


def test_the_fine_tune_engine_takes_the_fine_tunes_optimizer_section():
    from selfsup.eval.finetune.run import _engine
    from selfsup.pipelines.config import load_config

    config = load_config(None, ["finetune.optim.clip_grad_norm=1.5", "optim.clip_grad_norm=9"])
    engine = _engine(config, "cpu")
    try:
        assert engine.clip_grad_norm == 1.5  # the fine-tune's, not the pretraining's
    finally:
        engine.close()
