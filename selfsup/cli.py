"""The ``selfsup`` command line.

This is the one module that reaches every part of the package. It imports
them (and torch) only inside the sub-command that needs them, so
``selfsup --help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from selfsup import __version__

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

EPILOG = """examples:
  selfsup train configs/demo.yaml
  selfsup train configs/simclr_resnet18_cifar10.yaml optim.base_lr=0.5 train.epochs=200
  selfsup probe runs/demo
  selfsup report runs/demo runs/other
  selfsup config show configs/demo.yaml train.max_steps=10
  selfsup data write ../shared/data/cifar10-jpeg cifar10_train.beton --max-resolution 32
  torchrun --nproc-per-node=2 -m selfsup train configs/demo.yaml train.engine=ddp
  selfsup checkpoint inspect runs/demo
  selfsup checkpoint export runs/demo backbone.pt
  selfsup submit configs/simclr_resnet50_imagenet_ffcv.yaml --cluster h100x8 --nodes 2
  selfsup status runs/simclr-1234
  selfsup submit-eval runs/a runs/b --datasets cifar10,fashion_mnist --lrs 0.01,0.001
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsup",
        description="Self-supervised pretraining of vision backbones and its evaluation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"selfsup {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="pretrain a backbone (resumes automatically)")
    train.add_argument("config", nargs="?", help="recipe YAML, e.g. configs/demo.yaml")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    train.add_argument("--data", help="dataset folder (sets data.path)")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="with checkpoint.resume=false: move an earlier run in the run directory aside",
    )
    train.add_argument(
        "--wait-for-lock",
        action="store_true",
        help="when another run holds the run directory, wait for it instead of refusing",
    )
    train.set_defaults(func=cmd_train)

    probe = commands.add_parser("probe", help="linear probe + kNN of a pretrained backbone")
    probe.add_argument("path", help="run directory, checkpoints/step_* folder or backbone .pt")
    probe.add_argument("overrides", nargs="*", help="probe settings as key=value (e.g. epochs=50)")
    probe.add_argument("--data", help="root folder holding the evaluation datasets")
    probe.add_argument("--datasets", help="comma-separated, e.g. cifar10,fashion_mnist")
    probe.add_argument("--no-baseline", action="store_true", help="skip the random-init baseline")
    probe.add_argument("--out", help="where to write the report (default: the run directory)")
    probe.add_argument("--device", default="auto", help="auto | cpu | cuda")
    probe.add_argument(
        "--every-checkpoint",
        action="store_true",
        help="probe each kept checkpoint of the run: accuracy against step (probe_curve.md/png)",
    )
    probe.set_defaults(func=cmd_probe)

    finetune = commands.add_parser(
        "finetune",
        help="fine-tune a pretrained backbone (and a scratch control) on labelled datasets",
    )
    finetune.add_argument("source", help="run directory, checkpoint folder or backbone .pt")
    finetune.add_argument("overrides", nargs="*", help="finetune.* keys (epochs=5), train.* keys")
    finetune.add_argument("--datasets", help="comma-separated, e.g. cifar10,fashion_mnist")
    finetune.add_argument(
        "--recipe",
        help="head_then_unfreeze | full | linear (configs/finetune/), a registered one, a .yaml",
    )
    finetune.add_argument("--data", help="root holding the datasets")
    finetune.add_argument("--device", default="auto", help="auto | cpu | cuda")
    finetune.add_argument("--out", help="where finetune/ goes (default: the run directory)")
    finetune.set_defaults(func=cmd_finetune)

    data = commands.add_parser("data", help="write and inspect FFCV .beton files")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION")
    write = data_commands.add_parser(
        "write",
        help="write a dataset folder into a .beton",
        description="Write CIFAR-10 (pickles or image folders), Fashion-MNIST (IDX) or "
        "ImageNet-style class folders into an FFCV .beton with 'image' and 'label' fields.",
    )
    write.add_argument("source", help="dataset folder (or a root holding it)")
    write.add_argument("out", help="output file, e.g. cifar10_train.beton")
    write.add_argument(
        "--dataset",
        default="auto",
        help="auto | cifar10 | fashion_mnist | imagenette | imagefolder",
    )
    write.add_argument("--split", default="train", choices=("train", "test"))
    write.add_argument("--mode", default="jpg", help="raw | jpg | proportion | smart (default jpg)")
    write.add_argument("--max-resolution", type=int, help="cap on the longer side, in pixels")
    write.add_argument("--jpeg-quality", type=int, default=90)
    write.add_argument(
        "--compress-probability", type=float, default=0.5, help="for --mode proportion"
    )
    write.add_argument(
        "--smart-threshold", type=int, help="for --mode smart: bytes above which JPEG"
    )
    write.add_argument("--workers", type=int, default=0, help="writer processes (0: one per core)")
    write.add_argument("--limit", type=int, help="write a seeded random subset of this many images")
    write.add_argument("--force", action="store_true", help="replace OUT if it exists")
    write.set_defaults(func=cmd_data_write)
    inspect = data_commands.add_parser("inspect", help="summarise a .beton")
    inspect.add_argument("beton")
    inspect.set_defaults(func=cmd_data_inspect)
    data.set_defaults(func=lambda args: _print_help(data))

    checkpoint = commands.add_parser("checkpoint", help="inspect and export checkpoints")
    checkpoint_commands = checkpoint.add_subparsers(dest="checkpoint_command", metavar="ACTION")
    inspect_ckpt = checkpoint_commands.add_parser(
        "inspect",
        help="step, engine, world size, tensors, size and sparsity of a checkpoint or weights file",
    )
    inspect_ckpt.add_argument(
        "path", help="checkpoints/step_* folder, run directory (newest) or backbone .pt"
    )
    inspect_ckpt.set_defaults(func=cmd_checkpoint_inspect)
    verify = checkpoint_commands.add_parser(
        "verify", help="check every file of a checkpoint against its sizes and SHA-256"
    )
    verify.add_argument("path", help="checkpoints/step_* folder or run directory (newest)")
    verify.set_defaults(func=cmd_checkpoint_verify)
    export = checkpoint_commands.add_parser(
        "export",
        help="write the backbone as a weights-only .pt or safetensors file (any engine)",
        description="Consolidate the backbone weights of a checkpoint (single, DDP or DeepSpeed "
        "ZeRO 1-3) into one file that loads with torch.load(weights_only=True), or a "
        "safetensors file (timm and safetensors read it without selfsup); `selfsup probe` "
        "accepts both. OUT must not exist (--force replaces it).",
    )
    export.add_argument("path", help="checkpoints/step_* folder or run directory (newest)")
    export.add_argument("out", help="output file, e.g. backbone.pt or backbone.safetensors")
    export.add_argument("--force", action="store_true", help="replace OUT if it exists")
    export.add_argument(
        "--format",
        choices=["pt", "safetensors"],
        help="file format (default: safetensors for a .safetensors OUT, else pt)",
    )
    export.add_argument(
        "--which",
        choices=["student", "target"],
        help="the encoder trained by gradients, or a momentum method's target encoder "
        "(default: the one the method is evaluated on: I-JEPA's target, otherwise the student)",
    )
    export.set_defaults(func=cmd_checkpoint_export)
    checkpoint.set_defaults(func=lambda args: _print_help(checkpoint))

    _add_sparsity_commands(commands)

    submit = commands.add_parser(
        "submit",
        help="pretrain as a SLURM job (submitit)",
        description="Submit `selfsup train` to SLURM: one task per GPU, DDP or DeepSpeed by "
        "config, requeued and resumed after preemption. Settings come from a cluster profile "
        "(configs/cluster/NAME.yaml) and the flags below.",
    )
    submit.add_argument("config", help="recipe YAML")
    submit.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    _add_cluster_flags(submit)
    submit.add_argument(
        "--dry-run", action="store_true", help="print the sbatch script; submit nothing"
    )
    submit.add_argument("--wait", action="store_true", help="follow the job to its end")
    submit.set_defaults(func=cmd_submit)

    status = commands.add_parser(
        "status",
        help="where a run stands: SLURM job, state, restarts, newest checkpoint, rate",
    )
    status.add_argument("run", help="run directory (of `selfsup submit` or `selfsup train`)")
    status.set_defaults(func=cmd_status)

    submit_eval = commands.add_parser(
        "submit-eval",
        help="probe (or fine-tune) checkpoints x datasets x learning rates as one SLURM job array",
    )
    submit_eval.add_argument(
        "paths", nargs="+", help="run directories, checkpoint folders or .pt files"
    )
    submit_eval.add_argument("--datasets", default="cifar10", help="comma-separated")
    submit_eval.add_argument(
        "--task",
        choices=("probe", "finetune"),
        default="probe",
        help="probe: linear probe + kNN; finetune: fine-tune recipes (selfsup finetune)",
    )
    submit_eval.add_argument(
        "--lrs",
        help="comma-separated learning rates: the probe's (default 0.001), or "
        "finetune.optim.base_lr (default: the recipe's)",
    )
    submit_eval.add_argument(
        "--recipes", default="head_then_unfreeze,full", help="--task finetune: comma-separated"
    )
    submit_eval.add_argument("--device", default="auto", help="auto | cpu | cuda")
    submit_eval.add_argument(
        "--every-checkpoint",
        action="store_true",
        help="--task probe: one task per kept checkpoint of each run (accuracy against step)",
    )
    submit_eval.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="probe or finetune setting, e.g. --set epochs=50 (repeatable)",
    )
    submit_eval.add_argument(
        "--out", help="folder for logs and the report (default runs/eval-<time>)"
    )
    _add_cluster_flags(submit_eval)
    submit_eval.add_argument(
        "--wait-min",
        type=float,
        default=None,
        help="give up waiting after this many minutes (tasks left running are cancelled)",
    )
    submit_eval.add_argument(
        "--dry-run", action="store_true", help="list the tasks; submit nothing"
    )
    submit_eval.set_defaults(func=cmd_submit_eval)

    report = commands.add_parser("report", help="compare the reports of several runs")
    report.add_argument("runs", nargs="+", help="run directories (or report.json files)")
    report.add_argument(
        "--curves",
        default="curves.png",
        help="where to plot the runs' accuracy-against-step curves, online and post-hoc "
        "(written when a run has either; default curves.png)",
    )
    report.set_defaults(func=cmd_report)

    config = commands.add_parser("config", help="inspect configs")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION")
    show = config_commands.add_parser("show", help="print the resolved config")
    show.add_argument("config", help="recipe YAML")
    show.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    show.set_defaults(func=cmd_config_show)
    keys = config_commands.add_parser("keys", help="list every config key")
    keys.set_defaults(func=cmd_config_keys)
    config.set_defaults(func=lambda args: _print_help(config))
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from selfsup.errors import ConfigError
    from selfsup.logs import process_rank
    from selfsup.pipelines.config import load_config
    from selfsup.pipelines.train.trainer import train

    if args.config is None:
        raise ConfigError(
            "selfsup train needs a recipe: selfsup train CONFIG.yaml [key=value ...] (recipes "
            "are in configs/, e.g. configs/demo.yaml)"
        )
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.overwrite:
        overrides.append("checkpoint.overwrite=true")
    if args.wait_for_lock:
        overrides.append("checkpoint.wait_for_lock=true")
    result = train(load_config(args.config, overrides))
    if result.stopped_by:
        return EXIT_INTERRUPTED
    if process_rank() == 0:
        print(f"run directory: {result.run_dir}")
    return 0


def _evaluation_overrides(args: argparse.Namespace) -> list[str]:
    """The section's overrides, with --data and --datasets as keys (probe, finetune)."""
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data_path={args.data}")
    if args.datasets:
        overrides.append(f"datasets=[{args.datasets}]")
    return overrides


def cmd_probe(args: argparse.Namespace) -> int:
    from selfsup.eval.frozen.probe import probe, probe_config_for
    from selfsup.eval.reports.report import write_report
    from selfsup.pipelines.checkpoint.run_dir import find_run_dir, read_summary

    overrides = _evaluation_overrides(args)
    if args.no_baseline:
        overrides.append("baseline=false")
    settings = probe_config_for(Path(args.path), overrides)
    if args.every_checkpoint:
        return _probe_every_checkpoint(args, settings)
    run_dir = find_run_dir(Path(args.path))
    if run_dir is not None:
        read_summary(run_dir)  # a damaged summary is named before minutes of probing
    outcome = probe(args.path, settings, device=args.device)
    out_dir = Path(args.out) if args.out else (outcome.info.run_dir or Path(args.path).parent)
    report = write_report(outcome, out_dir)
    _print_accuracy_table(report)
    print(f"report: {out_dir / 'report.md'}")
    return 0


def _probe_every_checkpoint(args: argparse.Namespace, settings) -> int:
    from selfsup.eval.sweeps.curve import curve_tasks, probe_curve, write_curve_report
    from selfsup.pipelines.checkpoint.run_dir import find_run_dir

    tasks = curve_tasks([args.path], list(settings.datasets), settings, args.device)
    rows = probe_curve(tasks)
    for row in rows:
        print(f"step {row['step']} on {row['dataset']}: linear {row['linear_top1']:.2f}%, "
              f"kNN {row['knn_top1']:.2f}%")  # fmt: skip
    out = Path(args.out) if args.out else find_run_dir(Path(args.path)) or Path(args.path)
    print(f"report: {write_curve_report(rows, [], out)}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from selfsup.eval.finetune.run import finetune, load_source, output_dir
    from selfsup.eval.finetune.settings import finetune_settings

    overrides = _evaluation_overrides(args)
    config = finetune_settings(Path(args.source), args.recipe, overrides)
    source = load_source(args.source, config)
    out = output_dir(source, args.out)
    for result in finetune(source, out, args.device):
        accuracies = ", ".join(
            f"{init} {acc:.2f}%" for init, acc in result_accuracies(result).items()
        )
        print(f"{result.dataset} {result.recipe}: test top-1 {accuracies}")
    print(f"reports: {out / 'finetune'}/<dataset>/{config.finetune.recipe}/report.md")
    return 0


def result_accuracies(result) -> dict:
    from dataclasses import asdict

    from selfsup.eval.reports.finetune import test_accuracies

    return {k: v for k, v in test_accuracies(asdict(result)).items() if v is not None}


def cmd_report(args: argparse.Namespace) -> int:
    from selfsup.eval.reports.distill import distillation_tables
    from selfsup.eval.reports.finetune import read_recipe_reports
    from selfsup.eval.reports.report import (
        NOT_EVALUATED,
        TRANSFER_HEADER,
        comparison,
        load_report_if_any,
        transfer_tables,
    )

    runs = []
    for run in map(Path, args.runs):
        probe_report = load_report_if_any(run)
        finetunes = read_recipe_reports(run) if run.is_dir() else []
        runs.append((run.name if run.is_dir() else str(run), probe_report, finetunes))
    probed = [probe for _, probe, _ in runs if probe is not None]
    if probed:
        _print_table("runs", *comparison(probed))
    for dataset, rows in transfer_tables(runs).items():
        _print_table(f"{dataset}: test top-1 (%)", TRANSFER_HEADER, rows)
    for title, header, rows in distillation_tables([Path(r) for r in args.runs]):
        _print_table(title, header, rows)
    for name, probe_report, finetunes in runs:
        if probe_report is None and not finetunes:
            print(f"{name}: {NOT_EVALUATED.replace('RUN', name)}")
    from selfsup.eval.sweeps.curve import overlay_runs

    if overlay_runs([Path(r) for r in args.runs if Path(r).is_dir()], Path(args.curves)):
        print(f"curves: {args.curves}")
    return 0


def cmd_data_write(args: argparse.Namespace) -> int:
    from selfsup.pipelines.checkpoint.tools import check_export_target
    from selfsup.pipelines.data.beton import WriteOptions, write_beton
    from selfsup.pipelines.data.datasets import take_subset
    from selfsup.pipelines.data.sources import detect_dataset, open_dataset

    check_export_target(Path(args.out), args.force)  # nothing replaced unasked
    name = detect_dataset(args.source) if args.dataset == "auto" else args.dataset
    dataset = take_subset(open_dataset(name, args.split, args.source), args.limit)
    options = WriteOptions(
        mode=args.mode,
        max_resolution=args.max_resolution,
        jpeg_quality=args.jpeg_quality,
        compress_probability=args.compress_probability,
        smart_threshold=args.smart_threshold,
        workers=args.workers,
    )
    print(write_beton(dataset, Path(args.out), options).line())
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from selfsup.pipelines.data.beton import verify_beton

    path = Path(args.beton)
    contents = verify_beton(path)
    modes = ", ".join(f"{count:,} {mode}" for mode, count in contents.image_modes.items())
    print(
        f"{path}: {contents.samples:,} images ({modes}), {path.stat().st_size / 2**20:.1f} MiB\n"
        f"images per class: {contents.class_counts}"
    )
    return 0


def _add_sparsity_commands(commands: Any) -> None:
    prune = commands.add_parser(
        "prune",
        help="one-shot magnitude pruning of trained weights (optionally recovered by distillation)",
    )
    prune.add_argument("source", help="run directory, checkpoints/step_* folder or backbone .pt")
    prune.add_argument("--target", type=float, required=True, help="share of zeros, e.g. 0.5")
    prune.add_argument("--pattern", default="unstructured", help="unstructured | 2:4 | block")
    prune.add_argument("--out", help="output .pt (default: <run>/pruned-<pattern>-<target>.pt)")
    prune.add_argument("--force", action="store_true", help="replace the output file if it exists")
    prune.add_argument(
        "--recover-steps",
        type=int,
        default=0,
        help="then distil the dense model into the pruned one for N steps",
    )
    prune.add_argument("overrides", nargs="*", help="the recovery run's key=value overrides")
    prune.set_defaults(func=cmd_prune)

    sparsity = commands.add_parser("sparsity", help="accuracy-vs-sparsity sweeps")
    actions = sparsity.add_subparsers(dest="sparsity_command", metavar="ACTION")
    sweep = actions.add_parser("sweep", help="prune to several targets, probe each, report")
    sweep.add_argument("source", help="run directory, checkpoints/step_* folder or backbone .pt")
    sweep.add_argument("--targets", default="0,0.5,0.75,0.9", help="comma-separated shares")
    sweep.add_argument("--patterns", default="unstructured,2:4", help="comma-separated")
    sweep.add_argument(
        "--recover-steps",
        type=int,
        default=0,
        help="also distil each pruned model from the dense one for N steps",
    )
    sweep.add_argument(
        "--recover",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override of the recovery runs (repeatable)",
    )
    sweep.add_argument("--out", help="report folder (default: <run>/sparsity)")
    sweep.add_argument("--data", help="root folder holding the evaluation datasets")
    sweep.add_argument("--datasets", help="comma-separated, e.g. cifar10")
    sweep.add_argument("--device", default="auto", help="auto | cpu | cuda")
    sweep.add_argument("overrides", nargs="*", help="probe settings as key=value")
    sweep.set_defaults(func=cmd_sparsity_sweep)
    sparsity.set_defaults(func=lambda args: _print_help(sparsity))


def _next_to_source(source: str, name: str) -> Path:
    """``name`` in the source's run directory (or beside a weights file)."""
    path = Path(source)
    return (path if path.is_dir() and not path.name.startswith("step_") else path.parent) / name


def cmd_prune(args: argparse.Namespace) -> int:
    from selfsup.pipelines.checkpoint.tools import check_export_target
    from selfsup.pipelines.train.prune import prune_backbone, recover, sparsity_settings

    settings = sparsity_settings(args.target, args.pattern)
    tag = f"{args.pattern.replace(':', 'of')}-{round(100 * args.target)}"
    out = Path(args.out) if args.out else _next_to_source(args.source, f"pruned-{tag}.pt")
    check_export_target(out, args.force)  # nothing replaced unasked, no file of the run
    pruned = prune_backbone(args.source, settings, out)
    print(f"wrote {out}: {100 * pruned.overall:.2f}% zeros over {len(pruned.layers)} layers")
    if args.recover_steps > 0:
        run_dir = out.with_suffix("")
        recovered = recover(pruned, settings, args.recover_steps, run_dir, args.overrides)
        print(f"recovered by distillation from the dense model: {recovered}")
    return 0


def cmd_sparsity_sweep(args: argparse.Namespace) -> int:
    from selfsup.eval.frozen.probe import probe_config_for
    from selfsup.eval.sweeps.sparsity import REPORT_MD, run_sweep

    settings = probe_config_for(Path(args.source), _evaluation_overrides(args))
    out = Path(args.out) if args.out else _next_to_source(args.source, "sparsity")
    report = run_sweep(
        args.source,
        _numbers(args.targets, "--targets"),
        args.patterns.split(","),
        out,
        settings,
        args.recover_steps,
        args.recover,
        args.device,
    )
    for point in report["points"]:
        scores = ", ".join(
            f"{d} kNN {point['knn'][d]:.2f} linear {point['linear'][d]:.2f}" for d in point["knn"]
        )
        print(f"{point['pattern']:>12} {100 * point['zeros']:5.1f}% zeros: {scores}")
    print(f"report: {out / REPORT_MD}")
    return 0


def cmd_checkpoint_inspect(args: argparse.Namespace) -> int:
    from selfsup.pipelines.checkpoint.tools import inspect_checkpoint, inspect_weights_file

    if Path(args.path).is_file():
        print("\n".join(inspect_weights_file(Path(args.path))))
        return 0
    summary = inspect_checkpoint(args.path)
    print("\n".join(summary.lines()))
    return 0 if summary.intact else 1


def cmd_checkpoint_verify(args: argparse.Namespace) -> int:
    from selfsup.pipelines.checkpoint.tools import verify_checkpoint

    print(verify_checkpoint(args.path))
    return 0


def cmd_checkpoint_export(args: argparse.Namespace) -> int:
    from selfsup.pipelines.checkpoint.tools import export_backbone

    info = export_backbone(
        args.path, args.out, force=args.force, file_format=args.format, which=args.which
    )
    which = f" ({args.which} encoder)" if args.which else ""
    print(
        f"wrote {args.out}: {info.name} backbone{which} ({info.source}) from {info.origin}, "
        f"step {info.step}"
    )
    return 0


def _add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    from selfsup.slurm.cluster import cli_options  # dataclasses only: --help stays fast

    group = parser.add_argument_group("cluster (override the profile)")
    group.add_argument("--cluster", help="profile: a name in configs/cluster/ or a YAML path")
    for option in cli_options():
        group.add_argument(
            option.flag,
            dest=option.dest,
            type=option.type,
            help=option.help,
            metavar=option.metavar,
        )


def _cluster_profile(args: argparse.Namespace):
    from selfsup.slurm.cluster import overrides_from
    from selfsup.slurm.profiles import load_profile

    return load_profile(args.cluster, overrides_from(args))


def cmd_submit(args: argparse.Namespace) -> int:
    from selfsup.pipelines.config import load_config
    from selfsup.slurm.submit import dry_run_training, submit_training, wait_for

    config = load_config(args.config, args.overrides)
    profile = _cluster_profile(args)
    if args.dry_run:
        print(dry_run_training(config, profile))
        return 0
    submission = submit_training(config, profile)
    print("\n".join(submission.lines()), flush=True)
    if not args.wait:
        return 0
    outcome = wait_for(submission.job)
    return _report_outcome(submission.job_id, outcome)


def cmd_status(args: argparse.Namespace) -> int:
    from selfsup.slurm.status import run_status

    print("\n".join(run_status(Path(args.run)).lines()))
    return 0


def _report_outcome(job_id: str, outcome) -> int:
    if outcome.ok:
        print(f"job {job_id} completed: {outcome.result}")
        return 0
    if outcome.state == "CANCELLED":
        print(f"job {job_id} was cancelled ({outcome.error})", file=sys.stderr)
        return 1
    print(f"job {job_id} ended {outcome.state}:\n{outcome.error}", file=sys.stderr)
    return 1


def cmd_submit_eval(args: argparse.Namespace) -> int:
    import time

    from selfsup.slurm.submit import submit_array, wait_for_all

    out = Path(args.out or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}")
    paths = [str(Path(p).absolute()) for p in args.paths]
    datasets = [d for d in args.datasets.split(",") if d]
    lrs = _numbers(args.lrs, "--lrs")
    if args.task == "finetune":
        from selfsup.eval.sweeps.finetune_array import (
            finetune_sweep,
            run_finetune_task,
            write_finetune_eval_report,
        )

        recipes = [r for r in args.recipes.split(",") if r]
        rates: list[float | None] = [*lrs] or [None]
        tasks: list = finetune_sweep(
            paths, datasets, recipes, rates, list(args.set), out.absolute(), args.device
        )
        run, write = run_finetune_task, write_finetune_eval_report
        labels = [task.label() for task in tasks]
    else:
        from selfsup.eval.frozen.probe import probe_config_for
        from selfsup.eval.sweeps.probe_array import run_probe_task, sweep, write_eval_report

        settings = probe_config_for(Path(args.paths[0]), list(args.set))
        if args.every_checkpoint:
            from selfsup.eval.sweeps.curve import curve_tasks, write_curve_report

            tasks = curve_tasks(paths, datasets, settings, args.device)
            write = write_curve_report
        else:
            tasks = sweep(paths, datasets, lrs or [0.001], settings, args.device)
            write = write_eval_report
        run = run_probe_task  # type: ignore[assignment]
        labels = [f"{t.checkpoint} on {t.dataset}, lr {t.lr:g}" for t in tasks]
    if args.dry_run:
        print("\n".join(f"task {i}: {label}" for i, label in enumerate(labels)))
        return 0
    jobs = submit_array(run, tasks, out, _cluster_profile(args), "selfsup-eval")
    print(
        f"submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks); logs in {out}",
        flush=True,
    )
    rows, failures = wait_for_all(jobs, labels, args.wait_min)
    report = write(rows, failures, out)
    print(f"report: {report} ({len(rows)} of {len(tasks)} tasks finished)")
    return 0 if not failures else 1


def _numbers(text: str | None, flag: str) -> list[float]:
    """A comma-separated list of numbers ([] for None); one error line otherwise."""
    from selfsup.errors import ConfigError

    try:
        return [float(x) for x in (text or "").split(",") if x]
    except ValueError:
        raise ConfigError(f"{flag} takes numbers, got '{text}'") from None


def cmd_config_show(args: argparse.Namespace) -> int:
    from selfsup.pipelines.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def cmd_config_keys(args: argparse.Namespace) -> int:
    from selfsup.pipelines.config import method_keys, valid_keys

    # Every key of the schema; method.* keys depend on method.name, so each is
    # listed with the methods that have it.
    print("\n".join(k for k in valid_keys() if not k.startswith("method.")))
    owners: dict[str, list[str]] = {}
    for method, keys in method_keys().items():
        for key in keys:
            owners.setdefault(key, []).append(method)
    width = max(map(len, owners))
    for key, methods in owners.items():
        print(key if key == "method.name" else f"{key:<{width}}  ({', '.join(methods)})")
    return 0


def _print_accuracy_table(report: dict) -> None:
    from selfsup.eval.reports.report import ACCURACY_HEADER, accuracy_rows

    _print_table("frozen-feature accuracy (top-1, %)", ACCURACY_HEADER, accuracy_rows(report))


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from selfsup.text import printable

    table = Table()
    for column in header:
        justify: Literal["left", "right"] = "left" if column in ("dataset", "run") else "right"
        table.add_column(Text(printable(column)), justify=justify, no_wrap=True)
    for row in rows:  # Text, not markup: names from files never style or link anything
        table.add_row(*(Text(printable(cell)) for cell in row))
    # A wide virtual console: the table takes its natural width instead of
    # wrapping cells when stdout is a pipe or a log file.
    print(printable(title))
    Console(width=250).print(table)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (`probe RUN --data D epochs=5`), which
    # argparse leaves over; every left-over must then be a key=value override.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from selfsup.logs import log_to_stderr

    log_to_stderr(args.quiet)
    from selfsup.errors import SelfsupError, one_line
    from selfsup.plugins import load_plugins
    from selfsup.safe_pickle import every_torch_load_weights_only

    try:
        load_plugins()  # registrations from outside the package, before any config is read
        with every_torch_load_weights_only():  # whatever a library asks for, no file runs code
            return int(args.func(args) or 0)
    except SelfsupError as exc:
        print(f"selfsup: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("selfsup: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`selfsup checkpoint inspect RUN | head`): not an error.
        # Point stdout at devnull so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except RuntimeError as exc:
        # A DataLoader worker re-raises our errors as their own type; keep them one line.
        if "Original Traceback" in str(exc) and "selfsup.errors." in str(exc):
            print(f"selfsup: error: {one_line(exc)}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise


if __name__ == "__main__":
    raise SystemExit(main())
