"""DeepSpeed checkpoint files that carry code: no command or config slot runs it.

DeepSpeed's readers call ``torch.load(weights_only=False)``; selfsup makes
those loads weights-only (one parser, nothing scanned first). The files come
in the two forms a scan-then-load design let through: torch's legacy
(non-zip) format, and a polyglot (a legacy pickle in front of an ordinary
zip: Python's ``zipfile`` sees the zip, torch reads the pickle). The
manifest is recomputed after the tampering, so the code check refuses them,
not the hash check. Run on a finished ZeRO-2 run of tests/test_distributed_training.py.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import torch
from helpers.payloads import TouchesSentinel
from helpers.runs import DEMO, launch

from selfsup.cli import main
from selfsup.pipelines.checkpoint.folders import find_latest
from selfsup.pipelines.checkpoint.manifest import write_manifest
from selfsup.pipelines.checkpoint.untrusted import load_deepspeed_file

MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIM_STATES = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def legacy_with_payload(path: Path, sentinel: Path) -> None:
    """The real contents plus a payload, in torch's legacy format."""
    state = load_deepspeed_file(path)
    state["x"] = TouchesSentinel(sentinel)
    torch.save(state, path, _use_new_zipfile_serialization=False)


def polyglot_with_payload(path: Path, sentinel: Path) -> None:
    """A legacy pickle carrying the payload, in front of the real (zip) file."""
    buffer = io.BytesIO()
    torch.save({"x": TouchesSentinel(sentinel)}, buffer, _use_new_zipfile_serialization=False)
    path.write_bytes(buffer.getvalue() + path.read_bytes())


POISONS = {"legacy": legacy_with_payload, "polyglot": polyglot_with_payload}
# A resume starts DeepSpeed in processes of their own (~15 s): once, with the file
# DeepSpeed reads last (its clean model states read first) in the form that hides best.
# Its readers all pass through the one weights-only guard (untrusted.deepspeed_reads).
RESUMED = ("polyglot", OPTIM_STATES)


def readers(checkpoint: Path, out: Path, data: Path) -> dict[str, list[str]]:
    """Every command and config slot that reads a checkpoint folder's weights."""
    student = [
        f"data.path={data / 'cifar-10-batches-py'}", "data.batch_size=16", "data.num_workers=0",
        "model.channels_last=false", "train.max_steps=2",
    ]  # fmt: skip
    return {
        "export": ["checkpoint", "export", str(checkpoint), str(out / "b.pt")],
        "inspect": ["checkpoint", "inspect", str(checkpoint)],
        "verify": ["checkpoint", "verify", str(checkpoint)],
        "probe": ["probe", str(checkpoint), "--datasets", "cifar10", "--no-baseline",
                  f"--data={data}", "train_samples=20", "test_samples=20"],
        "finetune": ["finetune", str(checkpoint), "--datasets", "cifar10", f"--data={data}",
                     f"--out={out / 'ft'}", "epochs=1"],
        "prune": ["prune", str(checkpoint), "--target", "0.5", "--out", str(out / "p.pt")],
        "teacher": ["train", DEMO, f"run_dir={out / 'student'}", *student,
                    "method.name=distill", f"method.teacher={checkpoint}"],
        "init_weights": ["train", DEMO, f"run_dir={out / 'init'}", *student,
                         f"model.init_weights={checkpoint}"],
    }  # fmt: skip


def assert_refused(reader: str, code: int, stderr: str, file: Path) -> None:
    err = stderr.strip().splitlines()
    assert code == 2 and err, (reader, err)
    assert f"refusing {file}: it carries code" in err[-1], (reader, err)
    assert not any("Traceback" in line or "weights_only=False" in line for line in err)


def assert_every_reader_refuses_code(run: Path, options: list[str], data: Path, capsys) -> None:
    """Each form in each file of the run's newest checkpoint, through every reader;
    ``options``: the run's own training overrides (for the resume, on 2 processes)."""
    checkpoint = find_latest(run / "checkpoints")
    assert checkpoint is not None
    out = run.parent / "payloads"
    keep = out / "original"
    keep.mkdir(parents=True)
    sentinel = out / "PAYLOAD_RAN"
    for form, poison in POISONS.items():
        for name in (MODEL_STATES, OPTIM_STATES):
            shutil.copy(checkpoint / name, keep / name)
            poison(checkpoint / name, sentinel)
            write_manifest(checkpoint)  # the attacker covers the tracks
            commands = readers(checkpoint, out, data)
            if name == OPTIM_STATES:  # only the resume and the checks read optimizer states
                commands = {k: commands[k] for k in ("inspect", "verify")}
            for reader, command in commands.items():
                code = main(command)
                assert_refused(reader, code, capsys.readouterr().err, checkpoint / name)
            if (form, name) == RESUMED:
                resumed = launch(2, [*options, f"run_dir={run}", "train.max_steps=10"])
                _, err = resumed.communicate(timeout=600)  # torchrun's own lines come last
                assert resumed.returncode != 0, err[-3000:]
                assert f"refusing {checkpoint / name}: it carries code" in err, err[-3000:]
            shutil.copy(keep / name, checkpoint / name)
            write_manifest(checkpoint)
    assert not sentinel.exists(), "a payload ran"
    # The control: the restored checkpoint is read by the same commands.
    assert main(["checkpoint", "verify", str(checkpoint)]) == 0
    assert main(["checkpoint", "export", str(checkpoint), str(out / "ok.pt")]) == 0
