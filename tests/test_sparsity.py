"""Sparse training end to end: the zeros it leaves, the ramp it logs, the weights it exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from selfsup.cli import main
from selfsup.pipelines.checkpoint.folders import find_latest, read_meta
from selfsup.pipelines.checkpoint.weights import load_backbone
from selfsup.pipelines.train.monitor import read_scalars

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "configs" / "demo.yaml")
STEPS = 8


def sparse_run(tiny_overrides: list[str], run: Path, *extra: str) -> Path:
    args = [
        *tiny_overrides, f"run_dir={run}", f"train.max_steps={STEPS}", "train.log_every=1",
        "checkpoint.every_steps=4", *extra,
    ]  # fmt: skip
    assert main(["train", DEMO, *args]) == 0
    return run


def exported_trunk(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "backbone.pt", weights_only=True)["state_dict"]


def covered(name: str) -> bool:
    """resnet18's layers a default sparsity run prunes: every conv but the stem's."""
    return (
        name.endswith(".weight")
        and name.startswith("layer")
        and ("conv" in name or "downsample.0" in name)
    )


@pytest.mark.slow
def test_gradual_pruning_ends_at_the_target_in_every_covered_layer_on_the_cubic_ramp(
    tiny_overrides, tmp_path
):
    run = sparse_run(
        tiny_overrides, tmp_path / "sparse", "sparsity.target=0.5", "sparsity.start=2",
        "sparsity.end=6", "sparsity.every=1",
    )  # fmt: skip
    trunk = exported_trunk(run)
    pruned = {k: v for k, v in trunk.items() if covered(k)}
    assert len(pruned) == 19  # 16 block convs + 3 downsample convs
    for name, weight in pruned.items():
        zeros = int((weight == 0).sum())
        assert abs(zeros - weight.numel() / 2) <= 1, f"{name}: {zeros} of {weight.numel()}"
    assert int((trunk["conv1.weight"] == 0).sum()) == 0, "the stem is excluded by default"

    # The logged share follows Zhu & Gupta's ramp s_t = s_f (1 - (1 - (t - t0) / (t1 - t0))^3).
    logged = dict(read_scalars(run / "tb", "sparsity/overall"))
    assert sorted(logged) == list(range(1, STEPS + 1))
    for step, value in logged.items():
        progress = min(max((step - 2) / (6 - 2), 0.0), 1.0)
        assert value == pytest.approx(0.5 * (1 - (1 - progress) ** 3), abs=1e-4), step
    assert dict(read_scalars(run / "tb", "sparsity/layer1.0.conv1"))[STEPS] == pytest.approx(0.5)

    meta = read_meta(find_latest(run / "checkpoints"))["sparsity"]
    assert meta["pattern"] == "unstructured" and meta["end_step"] == 6 and len(meta["layers"]) == 19
    assert json.loads((run / "summary.json").read_text())["sparsity"]["target"] == 0.5

    # The checkpoint reads back as a plain backbone with the same zeros.
    from_checkpoint, _ = load_backbone(find_latest(run / "checkpoints"))
    for name, weight in from_checkpoint.trunk.state_dict().items():
        assert torch.equal(weight, trunk[name]), name


@pytest.mark.slow
def test_exported_sparse_weights_load_into_plain_torchvision_and_timm_modules(
    tiny_overrides, tmp_path
):
    run = sparse_run(tiny_overrides, tmp_path / "r18", "sparsity.target=0.75",
                     "sparsity.schedule=one_shot")  # fmt: skip
    plain = torchvision.models.resnet18()
    plain.fc = torch.nn.Identity()
    plain.load_state_dict(exported_trunk(run))  # strict: the library's own keys
    share = float((plain.layer3[0].conv2.weight == 0).float().mean())
    assert share == pytest.approx(0.75, abs=1e-3)
    # backbone.safetensors: the same weights, read by safetensors alone, the same features.
    from safetensors.torch import load_file

    plain.load_state_dict(load_file(run / "backbone.safetensors"))
    assert_same_features(plain, load_backbone(run)[0])

    import timm

    # A ViT under 2:4: every group of four consecutive input weights holds two zeros or more.
    vit = sparse_run(
        tiny_overrides, tmp_path / "vit", "model.backbone=vit_tiny", "sparsity.target=0.5",
        "sparsity.pattern=2:4", "sparsity.schedule=one_shot", "optim.name=adamw",
    )  # fmt: skip
    plain_vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=4)
    plain_vit.load_state_dict(exported_trunk(vit))
    # timm's own pretrained-file loading reads backbone.safetensors: the same features.
    from_timm = timm.create_model(
        "vit_tiny_patch16_224", pretrained=True, num_classes=0, img_size=32, patch_size=4,
        pretrained_cfg_overlay={"file": str(vit / "backbone.safetensors")},
    )  # fmt: skip
    assert_same_features(from_timm, load_backbone(vit)[0])
    linears = [m for n, m in plain_vit.blocks.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 12 * 4  # qkv, proj, fc1, fc2 per block
    for layer in linears:
        groups = layer.weight.reshape(layer.weight.shape[0], -1, 4)
        assert int((groups == 0).sum(-1).min()) >= 2
    assert int((plain_vit.patch_embed.proj.weight == 0).sum()) == 0


def assert_same_features(plain: torch.nn.Module, ours: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), ours.eval()(x))


@pytest.mark.parametrize(
    "override, message",
    [
        ("sparsity.target=1.0", "sparsity.target=1.0 is outside [0, 1)"),
        ("sparsity.pattern=unstructered", "did you mean 'unstructured'"),
        ("sparsity.layers=[layer9.*]", "'layer9.*' matches no Conv2d or Linear layer"),
        ("sparsity.exclude=[layer1.0.conv9]", "matches no Conv2d or Linear layer (did you mean"),
    ],
)
def test_bad_sparsity_settings_are_refused_in_one_line(
    override, message, tiny_overrides, tmp_path, capsys
):
    run = tmp_path / "bad"
    args = [*tiny_overrides, f"run_dir={run}", "sparsity.target=0.5", override]
    assert main(["train", DEMO, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not run.exists(), "nothing is written"


def test_resuming_a_dense_checkpoint_with_sparsity_is_refused_in_one_line(
    tiny_overrides, tmp_path, capsys
):
    run = tmp_path / "dense"
    args = [*tiny_overrides, f"run_dir={run}", "train.max_steps=1", "checkpoint.every_steps=1"]
    assert main(["train", DEMO, *args]) == 0
    more = [*args, "train.max_steps=2", "sparsity.target=0.5"]
    capsys.readouterr()
    assert main(["train", DEMO, *more]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained with no sparsity" in err[0], err


@pytest.fixture
def dense_run(tiny_overrides, tmp_path) -> Path:
    run = tmp_path / "dense"
    assert main(["train", DEMO, *tiny_overrides, f"run_dir={run}", "train.max_steps=3"]) == 0
    return run


@pytest.mark.slow
def test_sweep_prunes_probes_recovers_and_reports_and_prune_writes_real_zeros(
    dense_run, data_root, capsys
):
    out = dense_run / "sweep"
    args = [
        "sparsity", "sweep", str(dense_run), "--targets", "0,0.5", "--patterns",
        "unstructured,2:4", "--recover-steps", "2", "--datasets", "cifar10", "--data",
        str(data_root), "--out", str(out), "epochs=2", "num_workers=0", "batch_size=64",
    ]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    points = {(p["pattern"], p["target"]): p for p in report["points"]}
    assert set(points) == {("dense", 0.0), ("unstructured", 0.5), ("2:4", 0.5)}
    for key in (("unstructured", 0.5), ("2:4", 0.5)):
        assert points[key]["zeros"] == pytest.approx(0.5)
        assert set(points[key]["recovered_knn"]) == {"cifar10"}
    assert (out / "sparsity.png").stat().st_size > 0
    assert "| unstructured | 50% | 50.0% |" in (out / "report.md").read_text()

    # Recovery distilled from the dense model with the masks held: the zeros are still there.
    recovered = out / "recovered" / "2of4-50"
    trunk = exported_trunk(recovered)
    for name, weight in trunk.items():
        if covered(name):
            assert int((weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1).min()) >= 2, name
    config = (recovered / "config.yaml").read_text()
    assert "name: distill" in config and f"teacher: {dense_run / 'backbone.pt'}" in config

    capsys.readouterr()
    assert main(["checkpoint", "inspect", str(recovered)]) == 0
    lines = capsys.readouterr().out
    assert "pattern     2:4, target 50%" in lines and "50.00% zeros over 19 pruned layers" in lines

    # selfsup prune: a file beside the run, real zeros, and a bad target refused.
    assert main(["prune", str(dense_run), "--target", "0.75"]) == 0
    pruned = dense_run / "pruned-unstructured-75.pt"
    weight = torch.load(pruned, weights_only=True)["state_dict"]["layer4.1.conv2.weight"]
    assert int((weight == 0).sum()) == round(0.75 * weight.numel())
    capsys.readouterr()
    assert main(["checkpoint", "inspect", str(pruned)]) == 0
    assert "75.00% zeros over 19 pruned layers" in capsys.readouterr().out
    assert main(["prune", str(dense_run), "--target", "1", "--out", str(dense_run / "x.pt")]) == 2
    assert "outside [0, 1)" in capsys.readouterr().err and not (dense_run / "x.pt").exists()
