"""The SLURM resources of a job: one declaration for profiles, flags and sbatch options.

:class:`ClusterProfile` is the schema of ``configs/cluster/*.yaml``; the
fields marked with :func:`flag` are also ``selfsup submit`` and
``submit-eval`` options (``--gpus-per-node``), generated from here by
:func:`cli_options`. No heavy imports: the CLI reads this to build its parser.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selfsup.errors import ConfigError


def flag(
    default: Any, help: str | None = None, name: str | None = None, metavar: str | None = None
):
    """A profile field that is also a command-line option (``--name``, default from the field)."""
    return field(default=default, metadata={"flag": name, "help": help, "metavar": metavar})


@dataclass
class ClusterProfile:
    """Resources and behaviour of a SLURM job."""

    partition: str | None = flag(None)
    nodes: int = flag(1)
    gpus_per_node: int = flag(0)
    tasks_per_node: int | None = flag(None, help="default: one per GPU (1 without GPUs)")
    cpus_per_task: int = flag(8)
    mem_gb: float | None = flag(None, help="per node")
    time_min: int = flag(24 * 60, help="time limit", name="--time", metavar="MIN")
    account: str | None = flag(None)
    qos: str | None = flag(None)
    constraint: str | None = flag(None)
    exclude: str | None = flag(None, help="nodes to avoid")
    # Seconds between SLURM's USR2 warning and the kill: time to reach a step
    # boundary and write one checkpoint.
    signal_delay_s: int = flag(
        120,
        help="seconds between the preemption warning and the kill",
        name="--signal-delay",
        metavar="S",
    )
    max_requeues: int = flag(3, help="preemptions/timeouts a job may be requeued after")
    setup: list[str] = field(default_factory=list)  # shell lines run first (module load ...)
    env: dict[str, str] = field(default_factory=dict)  # environment variables for the job
    sbatch: dict[str, Any] = field(default_factory=dict)  # further sbatch options, verbatim

    @property
    def tasks(self) -> int:
        """Tasks per node: one per GPU unless set."""
        return self.tasks_per_node or max(1, self.gpus_per_node)

    def validate(self) -> None:
        for name in ("nodes", "cpus_per_task", "time_min"):
            if getattr(self, name) < 1:
                raise ConfigError(f"cluster setting '{name}' must be at least 1")
        if self.gpus_per_node < 0 or self.max_requeues < 0:
            raise ConfigError("cluster settings 'gpus_per_node' and 'max_requeues' must be >= 0")
        if self.signal_delay_s < 10:
            raise ConfigError(
                "cluster setting 'signal_delay_s' must leave at least 10 s to checkpoint"
            )


@dataclass(frozen=True)
class CliOption:
    flag: str  # --gpus-per-node
    dest: str  # the profile field
    type: Callable[[str], Any]
    help: str | None
    metavar: str | None


_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}


def cli_options() -> list[CliOption]:
    """The profile fields a command line may override, as argparse options."""
    options = []
    for f in dataclasses.fields(ClusterProfile):
        if "flag" not in f.metadata:
            continue
        base_type = str(f.type).split("|")[0].strip()
        options.append(
            CliOption(
                flag=f.metadata["flag"] or "--" + f.name.replace("_", "-"),
                dest=f.name,
                type=_TYPES[base_type],
                help=f.metadata["help"],
                metavar=f.metadata["metavar"],
            )
        )
    return options


def overrides_from(values: Any) -> dict[str, Any]:
    """The flag values of parsed arguments (None where not given), by profile field."""
    return {option.dest: getattr(values, option.dest) for option in cli_options()}
