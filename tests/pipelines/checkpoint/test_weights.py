import pickle

import pytest
import torch

from selfsup.cli import main
from selfsup.errors import CheckpointError
from selfsup.pipelines.checkpoint.weights import load_backbone
from selfsup.pipelines.config import load_config
from selfsup.pipelines.train.trainer import train


class RunsCode:
    """Unpickling this calls print(): the kind of payload weights_only must refuse."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.fixture
def trained_run(tiny_overrides):
    return train(load_config(None, tiny_overrides)).run_dir


def features(backbone, x):
    with torch.no_grad():
        return backbone.eval()(x)


def test_run_dir_checkpoint_and_file_give_the_same_backbone(trained_run):
    x = torch.randn(2, 3, 32, 32)
    from_run, info = load_backbone(trained_run)
    from_ckpt, ckpt_info = load_backbone(trained_run / "checkpoints" / "step_000000006")
    from_file, _ = load_backbone(trained_run / "backbone.pt")
    from_safetensors, st_info = load_backbone(trained_run / "backbone.safetensors")
    assert info.step == ckpt_info.step == st_info.step == 6 and info.run_dir == trained_run
    assert torch.equal(features(from_run, x), features(from_ckpt, x))
    assert torch.equal(features(from_run, x), features(from_file, x))
    assert torch.equal(features(from_run, x), features(from_safetensors, x))
    assert (st_info.name, st_info.mean, st_info.image_size) == (info.name, info.mean, 32)
    # export --format safetensors (any suffix), and by suffix; both read back the same.
    out = trained_run.parent / "exported.weights"
    export = ["checkpoint", "export", str(trained_run), str(out), "--format", "safetensors"]
    assert main(export) == 0
    assert out.read_bytes()[8:9] == b"{"  # a safetensors header, not a zip
    assert torch.equal(features(load_backbone(out)[0], x), features(from_run, x))
    by_suffix = trained_run.parent / "b.safetensors"
    assert main(["checkpoint", "export", str(trained_run / "checkpoints" / "step_000000003"),
                 str(by_suffix)]) == 0  # fmt: skip
    assert load_backbone(by_suffix)[1].step == 3


def test_backbone_file_is_weights_only(trained_run):
    payload = torch.load(trained_run / "backbone.pt", weights_only=True)
    assert payload["format"] == "selfsup.backbone/1" and payload["backbone"]["name"] == "resnet18"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_code_carrying_pickle_is_refused(tmp_path, capsys, protocol):
    path = tmp_path / "evil.pt"
    with path.open("wb") as fh:
        pickle.dump({"format": "selfsup.backbone/1", "payload": RunsCode()}, fh, protocol=protocol)
    with pytest.raises(CheckpointError, match="refusing .*evil.pt: it carries code"):
        load_backbone(path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_refusal_names_the_object_a_pickle_asks_for(tmp_path):
    path = tmp_path / "evil.pt"
    with path.open("wb") as fh:
        pickle.dump(RunsCode(), fh, protocol=2)
    with pytest.raises(CheckpointError, match=r"it asks to call builtins\.print"):
        load_backbone(path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p, "is not a selfsup run directory or checkpoint"),
        (lambda p: (p / "x.txt").write_text("hello") and p / "x.txt", "is not a weights file"),
    ],
)
def test_paths_that_are_not_checkpoints(tmp_path, make, message):
    with pytest.raises(CheckpointError, match=message):
        load_backbone(make(tmp_path))


def test_foreign_torch_file_and_truncated_file(tmp_path, trained_run):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a selfsup backbone file"):
        load_backbone(tmp_path / "other.pt")
    data = (trained_run / "backbone.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable torch weights file"):
        load_backbone(tmp_path / "cut.pt")


def test_run_without_checkpoint(tmp_path, tiny_overrides):
    run = tmp_path / "empty_run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    (run / "selfsup-run.json").write_text('{"format": "selfsup.run/1"}')
    with pytest.raises(CheckpointError, match="holds no checkpoint yet"):
        load_backbone(run)
