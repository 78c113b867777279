import pytest
import torch
import torchvision
from torch import nn

from selfsup.cli import main
from selfsup.errors import CheckpointError
from selfsup.pipelines.checkpoint.tools import export_backbone, inspect_checkpoint
from selfsup.pipelines.checkpoint.weights import load_backbone
from selfsup.pipelines.config import load_config
from selfsup.pipelines.train.trainer import train


@pytest.fixture
def run(tiny_overrides):
    return train(load_config(None, tiny_overrides)).run_dir


def test_export_loads_weights_only_into_a_fresh_backbone_with_identical_features(run, tmp_path):
    checkpoint = run / "checkpoints" / "step_000000003"
    out = tmp_path / "exported.pt"
    info = export_backbone(checkpoint, out)
    assert info.step == 3
    payload = torch.load(out, weights_only=True)
    fresh = torchvision.models.resnet18()
    fresh.fc = nn.Identity()
    fresh.load_state_dict(payload["state_dict"])
    reference, _ = load_backbone(checkpoint)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), reference.eval()(x))


def test_export_of_a_run_takes_its_newest_checkpoint(run, tmp_path):
    assert export_backbone(run, tmp_path / "b.pt").step == 6


def test_inspect_reports_step_engine_and_tensors(run, capsys):
    summary = inspect_checkpoint(run)
    assert summary.meta["step"] == 6 and summary.model_tensors > 100
    assert 11e6 < summary.parameters < 12e6  # ResNet-18 + a small head
    assert main(["checkpoint", "inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "step        6 / 6" in out and "engine      single, written by 1 process(es)" in out


@pytest.mark.parametrize("command", ["inspect", "export"])
def test_not_a_checkpoint_is_one_line(tmp_path, capsys, command):
    args = ["checkpoint", command, str(tmp_path)] + (
        [str(tmp_path / "x.pt")] if command == "export" else []
    )
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("selfsup: error:") and "Traceback" not in err
    with pytest.raises(CheckpointError, match="does not exist"):
        inspect_checkpoint(tmp_path / "missing")
