"""What the online monitor costs: the same training with ``monitor.*`` off and on, one process.

Trains ``configs/demo.yaml`` (SimCLR, ResNet-18, 256 images a step) twice for
``--steps`` steps, first unmonitored (the control), then monitored at the
recipes' subset sizes (``configs/simclr_resnet18_cifar10.yaml``: a 5,000-image
bank, 1,000 held-out images, the online linear classifier) with a measurement
every ``--every`` steps. Reported:

- seconds per training step of each run (from ``train/img_per_s``: the steps
  between measurements, start-up excluded);
- seconds of one measurement (``monitor/seconds``: embedding the bank and the
  held-out set twice, kNN, RankMe, ...);
- the share of training time at the recipes' cadence (one measurement per
  epoch): ``t_measure / (t_measure + steps_per_epoch x t_step)``;
- the wall time of the monitored run over the unmonitored one, at ``--every``.

    python bench/monitor.py --data ../shared/data/cifar10-jpeg
    python bench/monitor.py --smoke            # tiny sizes: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import machine_name, tiny_jpeg_folder

from selfsup.pipelines.config import load_config
from selfsup.pipelines.train.monitor import read_scalars
from selfsup.pipelines.train.trainer import train
from selfsup.text import markdown_table

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo.yaml"
RECIPE_MONITOR = ["monitor.bank_size=5000", "monitor.test_size=1000", "monitor.linear=true"]


def timed_run(overrides: list[str], run_dir: Path) -> tuple[float, dict[str, list[float]]]:
    """Wall seconds of one training run, and its TensorBoard scalars of interest."""
    config = load_config(DEMO, [*overrides, f"run_dir={run_dir}"])
    started = time.perf_counter()
    train(config)
    wall = time.perf_counter() - started
    tags = ("train/img_per_s", "monitor/seconds", "monitor/knn_top1")
    return wall, {tag: [v for _, v in read_scalars(run_dir / "tb", tag)] for tag in tags}


def step_seconds(scalars: dict[str, list[float]], global_batch: int) -> float:
    """Seconds per step between measurements: the windows' median images/s (the first window
    holds the first step's set-up)."""
    rates = scalars["train/img_per_s"][1:] or scalars["train/img_per_s"]
    return global_batch / statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    common = [f"data.path={args.data}", f"train.max_steps={args.steps}", "train.log_every=2",
              f"checkpoint.every_steps={args.steps}"]  # fmt: skip
    monitor = ["monitor.enabled=true", f"monitor.every_steps={args.every}", *RECIPE_MONITOR]
    if args.smoke:
        tiny = tiny_jpeg_folder(Path(tempfile.mkdtemp()) / "tiny", splits=("train", "test"))
        common += [f"data.path={tiny}", "data.dataset=imagefolder", "data.batch_size=16",
                   "data.num_workers=0", "method.proj_hidden_dim=64"]  # fmt: skip
        monitor += ["monitor.bank_size=64", "monitor.test_size=32"]
    config = load_config(DEMO, common)
    batch, per_epoch_images = config.data.batch_size, 50_000  # CIFAR-10's training split
    with tempfile.TemporaryDirectory() as tmp:
        off_wall, off = timed_run([*common, "monitor.enabled=false"], Path(tmp) / "off")
        on_wall, on = timed_run(common + monitor, Path(tmp) / "on")
    t_step = step_seconds(off, batch)
    t_measure = statistics.mean(on["monitor/seconds"])
    steps_per_epoch = per_epoch_images // batch
    share = t_measure / (t_measure + steps_per_epoch * t_step)
    rows = [
        ["seconds per step, unmonitored (control)", f"{t_step:.3f}"],
        ["seconds per step, monitored (between measurements)", f"{step_seconds(on, batch):.3f}"],
        ["seconds per measurement (5,000 + 2 x 1,000 images, kNN, RankMe, ...)",
         f"{t_measure:.2f}"],
        [f"share of training time, one measurement per epoch ({steps_per_epoch} steps)",
         f"{100 * share:.1f}%"],
        [f"wall time monitored / unmonitored, {args.steps} steps, a measurement every "
         f"{args.every}", f"{on_wall / off_wall:.3f}x"],
    ]  # fmt: skip
    print(f"monitor cost on {machine_name()}, {time.strftime('%Y-%m-%d')}:")
    print("\n".join(markdown_table(["measure", "value"], rows)))
    if args.json:
        result = {"t_step": t_step, "t_measure": t_measure, "share": share,
                  "wall_ratio": on_wall / off_wall, "knn": on["monitor/knn_top1"]}  # fmt: skip
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
