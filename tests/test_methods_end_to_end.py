"""The four method x backbone recipes end to end: train -> checkpoint -> probe -> report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.io import decode_png

from selfsup.cli import main
from selfsup.pipelines.train.monitor import read_scalars

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"

# Shrunk to seconds on CPU: ViTs with patch 4 at 32 px, one-block decoders.
SMALL = {
    "simclr_resnet18_cifar10": [],
    "simclr_vit_tiny_cifar10": [],
    "mae_vit_tiny_cifar10": [
        "method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=2",
    ],
    "simmim_resnet18_cifar10": [],
    "ijepa_vit_tiny_cifar10": ["method.pred_depth=1", "method.pred_emb_dim=48"],
}  # fmt: skip


def recipe_overrides(recipe: str, tiny_overrides: list[str]) -> list[str]:
    """The tiny run's settings for ``recipe``: its SimCLR head options only where it is SimCLR."""
    own = [o for o in tiny_overrides if recipe.startswith("simclr") or not o.startswith("method.")]
    return [*own, *SMALL[recipe]]


def output_dir(overrides: list[str]) -> Path:
    return Path(next(o for o in overrides if o.startswith("output_dir=")).split("=", 1)[1])


def images(run_dir: Path, tag: str) -> dict[int, np.ndarray]:
    """TensorBoard image summaries of ``tag``, decoded, by step."""
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})  # 0: keep all
    events.Reload()
    if tag not in events.Tags()["images"]:
        return {}
    decoded = {}
    for event in events.Images(tag):
        array = torch.frombuffer(bytearray(event.encoded_image_string), dtype=torch.uint8)
        decoded[event.step] = decode_png(array).float().numpy() / 255.0
    return decoded


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(SMALL))
def test_recipe_trains_checkpoints_probes_and_reports(recipe, tiny_overrides, data_root, capsys):
    overrides = [*recipe_overrides(recipe, tiny_overrides), f"name={recipe}", "train.image_every=3"]
    assert main(["train", str(CONFIGS / f"{recipe}.yaml"), *overrides]) == 0
    run = output_dir(tiny_overrides) / recipe
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000000006"
    assert (run / "backbone.pt").is_file()
    assert images(run, "train/augmentations")
    masked = recipe.startswith(("mae", "simmim"))
    assert bool(images(run, "reconstruction/output")) == masked
    if masked:
        assert sorted(images(run, "reconstruction/output")) == [3, 6]
    if recipe.startswith("ijepa"):
        assert_ijepa_masks_and_exports(run)

    assert main(["probe", str(run), "--data", str(data_root), "--datasets", "cifar10"]) == 0
    (result,) = json.loads((run / "report.json").read_text())["probe"]["results"]
    assert result["dataset"] == "cifar10"
    for scores in (result["trained"], result["random_init"]):  # the baseline is the same recipe
        assert 0.0 <= scores["linear_top1"] <= 100.0 and 0.0 <= scores["knn_top1"] <= 100.0
    assert "| cifar10 |" in (run / "report.md").read_text()
    assert "cifar10" in capsys.readouterr().out


def assert_ijepa_masks_and_exports(run: Path) -> None:
    """TensorBoard shows each image's context and target blocks; the run's backbone.pt, which
    the probe reads, is the target encoder; ``--which student`` exports the other one."""
    context, targets = images(run, "masks/context"), images(run, "masks/targets")
    assert sorted(context) == sorted(targets) == [3, 6]
    assert not np.array_equal(context[6], targets[6])
    final = torch.load(run / "backbone.pt", weights_only=True)["state_dict"]
    for which, same in ((None, True), ("student", False)):
        out = run.parent / f"{which}.pt"
        assert (
            main(
                ["checkpoint", "export", str(run), str(out), *(["--which", which] if which else [])]
            )
            == 0
        )
        exported = torch.load(out, weights_only=True)["state_dict"]
        assert all(torch.equal(final[k], exported[k]) for k in final) == same, which


@pytest.mark.slow
def test_mfu_and_images_per_second_in_tensorboard_and_progress_bar(tiny_overrides, capfd):
    # A CPU has no entry in the peak table; train.peak_tflops supplies one.
    overrides = [*tiny_overrides, "train.peak_tflops=0.001"]
    assert main(["train", str(CONFIGS / "simclr_vit_tiny_cifar10.yaml"), *overrides]) == 0
    run = output_dir(tiny_overrides) / "tiny"
    for tag in ("train/img_per_s", "train/tflops", "train/mfu"):
        values = [v for _, v in read_scalars(run / "tb", tag)]
        assert values and all(v > 0 for v in values), tag
    bar = capfd.readouterr().err
    assert "img_s=" in bar and "mfu=" in bar and "tflops=" in bar


@pytest.mark.slow
@pytest.mark.shared_data
def test_mae_on_real_cifar10_lowers_the_loss_and_the_reconstructions_show_it(shared_data, tmp_path):
    run = tmp_path / "mae"
    overrides = [
        f"run_dir={run}", f"data.path={shared_data.cifar10_jpeg}", "data.train_samples=2048",
        "data.batch_size=64", "data.num_workers=1", "train.max_steps=60", "train.log_every=10",
        "train.image_every=20", "checkpoint.every_steps=60", "optim.base_lr=6e-3",
        "optim.warmup_epochs=0.1", "train.precision=fp32",
        "method.decoder_dim=128", "method.decoder_depth=2", "method.decoder_heads=4",
        # The recipe's online monitor (kNN and the linear classifier on the mean of MAE's
        # visible-token encodings) on small subsets, twice.
        "monitor.bank_size=256", "monitor.test_size=128", "monitor.every_steps=30",
    ]  # fmt: skip
    assert main(["train", str(CONFIGS / "mae_vit_tiny_cifar10.yaml"), *overrides]) == 0
    assert sorted(dict(read_scalars(run / "tb", "monitor/linear_top1"))) == [30, 60]
    loss = [v for _, v in read_scalars(run / "tb", "train/loss")]
    assert loss[-1] < 0.85 * loss[0], loss  # measured: about 0.78 (1.0 is predicting the mean)

    original = images(run, "reconstruction/original")
    output = images(run, "reconstruction/output")
    assert sorted(output) == [20, 40, 60]
    # The same images and masks every time: only the model changed between panels.
    assert np.array_equal(original[20], original[60])
    error = {step: float(np.abs(output[step] - original[step]).mean()) for step in output}
    assert error[60] < 0.97 * error[20], error  # measured: about 0.95


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["mae_vit_tiny_cifar10", "simmim_resnet18_cifar10"])
def test_masked_runs_resume_bitwise_with_images_on(recipe, tiny_overrides, tmp_path):
    """Masks come from the global RNG and image logging draws masks too: neither may shift."""
    config = str(CONFIGS / f"{recipe}.yaml")
    overrides = [*recipe_overrides(recipe, tiny_overrides), "train.image_every=2"]
    straight = tmp_path / "a"
    assert main(["train", config, *overrides, f"run_dir={straight}"]) == 0
    resumed = tmp_path / "b"  # starts from a's step-3 checkpoint, as after a crash
    shutil.copytree(straight / "checkpoints" / "step_000000003",
                    resumed / "checkpoints" / "step_000000003")  # fmt: skip
    for name in ("config.yaml", "selfsup-run.json"):
        shutil.copy(straight / name, resumed / name)
    assert main(["train", config, *overrides, f"run_dir={resumed}"]) == 0
    assert "resuming from checkpoint" in (resumed / "train.log").read_text()
    a = torch.load(straight / "backbone.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "backbone.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(images(resumed, "reconstruction/output")) == [4, 6]
