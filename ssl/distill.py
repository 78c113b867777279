"""Self-supervised distillation from a frozen teacher (``method.name=distill``).

A student backbone and a projection head into the teacher's embedding space
learn from a frozen teacher's embeddings of the same augmented views:

- embedding regression (DisCo, Gao et al. 2022): cosine, or smooth-L1 on
  L2-normalised features, between the student's projection and the teacher's
  embedding of the same view;
- similarity-distribution matching (SEED, Fang et al. 2021): KL divergence
  between the teacher's and the student's softmax similarities against a
  queue of teacher embeddings (each sample's own teacher embedding appended);
- optionally the student's own SimCLR loss (lightly's head and NT-Xent).

The teacher is held outside the module's registered children: it is not a
parameter, not in ``state_dict()`` (so never in a checkpoint), not wrapped by
DDP nor partitioned by DeepSpeed, and stays in eval mode. It still follows the
student's device, dtype and memory format (``_apply``), and runs without
autograd inside the student's forward pass, so under the run's autocast and
inside ``torch.compile`` where the student is compiled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from selfsup.arguments import ArgumentError
from selfsup.ssl.backbones import Backbone
from selfsup.ssl.method import BuildContext, MethodConfig, check_positive, register_method
from selfsup.ssl.outputs import StepOutput

REGRESSIONS = ("cosine", "smooth_l1", "none")


class FrozenTeacher(nn.Module):
    """A teacher network behind its input adapter: frozen, eval mode, float32 outputs.

    ``network`` is a backbone (embeddings, for self-supervised distillation)
    or a classifier (logits, for distillation in fine-tuning); ``output_dim``
    is the size of what it returns.

    Views normalised with the student's mean/std are renormalised to the
    teacher's and resized to the teacher's own input size (its position grid,
    for a ViT), so a teacher trained at another resolution or patch size sees
    the same views at the size it was trained at.
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(
        self,
        network: nn.Module,
        output_dim: int,
        image_size: int,
        student_mean_std: tuple[list[float], list[float]],
        teacher_mean_std: tuple[list[float], list[float]],
        origin: str = "",
        sha256: str = "",
    ) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.image_size = image_size
        self.output_dim = output_dim
        self.origin, self.sha256 = origin, sha256
        (s_mean, s_std), (t_mean, t_std) = student_mean_std, teacher_mean_std
        # x_teacher = (x_student * s_std + s_mean - t_mean) / t_std, per channel.
        scale = torch.tensor(s_std) / torch.tensor(t_std)
        shift = (torch.tensor(s_mean) - torch.tensor(t_mean)) / torch.tensor(t_std)
        self.register_buffer("scale", scale.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, -1, 1, 1), persistent=False)
        self.renormalise = (s_mean, s_std) != (t_mean, t_std)
        self.eval()

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)  # always eval: BatchNorm statistics and dropout frozen

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # A with-block, not the @torch.no_grad() decorator: under torch.compile the
        # decorator's grad mode leaked into the student's graph (its loss had no grad).
        with torch.no_grad():
            if self.renormalise:
                images = images * self.scale + self.shift
            if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
                images = F.interpolate(
                    images,
                    size=(self.image_size, self.image_size),
                    mode="bilinear",
                    align_corners=False,
                    antialias=images.shape[-1] > self.image_size,
                )
            return self.network(images).float()


class TeacherHolder(nn.Module):
    """A module that calls a :class:`FrozenTeacher` it does not register (see module docstring)."""

    def hold_teacher(self, teacher: FrozenTeacher | None) -> None:
        object.__setattr__(self, "_teacher", teacher)  # not a child: no state, no wrapping

    @property
    def teacher(self) -> FrozenTeacher | None:
        return self.__dict__.get("_teacher")

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any):
        # .to(device), .half(), channels_last: the unregistered teacher follows the student.
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)


class EmbeddingQueue(nn.Module):
    """A first-in first-out queue of L2-normalised teacher embeddings (SEED's memory).

    Not lightly's ``MemoryBankModule``: its buffers are non-persistent (left out
    of ``state_dict``, so a resumed run would start from a fresh random queue
    and not match the uninterrupted run), and it drops the part of a batch
    that wraps around the end. Here both buffers are checkpointed, the pointer
    stays on the device (no host sync per step), and wrapping is exact.
    """

    embeddings: torch.Tensor
    pointer: torch.Tensor

    def __init__(self, size: int, dim: int, gather_distributed: bool = False) -> None:
        super().__init__()
        check_positive(size, "seed_queue_size")
        self.gather_distributed = gather_distributed
        # Random unit vectors until real embeddings replace them (MoCo's and SEED's start).
        self.register_buffer("embeddings", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, batch: torch.Tensor) -> None:
        if self.gather_distributed and torch.distributed.is_initialized():
            from lightly.models.utils import concat_all_gather

            batch = concat_all_gather(batch.contiguous())
        size = self.embeddings.shape[0]
        batch = batch[-size:]
        rows = (self.pointer + torch.arange(batch.shape[0], device=batch.device)) % size
        self.embeddings.index_copy_(0, rows, batch.to(self.embeddings.dtype))
        self.pointer.copy_((self.pointer + batch.shape[0]) % size)


def regression_loss(kind: str, projection: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DisCo's embedding regression, on L2-normalised vectors (0 when they align)."""
    p, t = F.normalize(projection, dim=-1), F.normalize(target, dim=-1)
    if kind == "cosine":
        return (1.0 - (p * t).sum(dim=-1)).mean()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(p, t, reduction="none").sum(dim=-1).mean()
    raise ValueError(f"unknown regression loss {kind!r}; choose one of {REGRESSIONS}")


def seed_loss(
    projection: torch.Tensor,
    target: torch.Tensor,
    queue: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> torch.Tensor:
    """SEED: KL(teacher || student) over similarities to ``[queue; own teacher embedding]``."""
    p, t = F.normalize(projection, dim=-1), F.normalize(target, dim=-1)
    own = (p * t).sum(dim=-1, keepdim=True), (t * t).sum(dim=-1, keepdim=True)
    student = torch.cat([p @ queue.T, own[0]], dim=1) / student_temperature
    teacher = torch.cat([t @ queue.T, own[1]], dim=1) / teacher_temperature
    return F.kl_div(
        F.log_softmax(student, dim=1),
        F.log_softmax(teacher, dim=1),
        log_target=True,
        reduction="batchmean",
    )


def logit_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton et al. 2015: ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, batch mean.

    The ``T^2`` keeps the soft targets' gradients on the scale of the label
    loss's as the temperature changes.
    """
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


@dataclass
class DistillConfig(MethodConfig):
    """Distillation's options (the run config's ``method:`` section when ``name: distill``)."""

    name: str = "distill"
    teacher: str = ""  # a selfsup run directory, checkpoints/step_* folder or backbone .pt
    teacher_image_size: int | None = None  # None: the size the teacher was trained at
    regression: str = "cosine"  # cosine | smooth_l1 | none
    regression_weight: float = 1.0
    seed_weight: float = 0.0  # SEED's KL on similarity distributions; 0 turns it off
    seed_queue_size: int = 4096
    seed_student_temperature: float = 0.2
    seed_teacher_temperature: float = 0.01
    simclr_weight: float = 0.0  # the student's own SimCLR loss; 0 turns it off
    temperature: float = 0.2  # NT-Xent's, for simclr_weight > 0
    proj_hidden_dim: int | None = None  # None: the student's feature dimension
    proj_output_dim: int = (
        128  # the SimCLR head's output (the distillation head's is the teacher's)
    )

    def check(self, context: BuildContext) -> None:
        if not self.teacher:
            raise ArgumentError(
                "distillation needs a teacher: set teacher=PATH (a selfsup run directory, "
                "checkpoints/step_* folder or backbone .pt file)",
                "teacher",
            )
        if self.regression not in REGRESSIONS:
            raise ArgumentError(
                f"regression must be one of {', '.join(REGRESSIONS)}, got {self.regression!r}",
                "regression",
            )
        for weight in ("regression_weight", "seed_weight", "simclr_weight"):
            if getattr(self, weight) < 0:
                raise ArgumentError(f"{weight} must be >= 0, got {getattr(self, weight)}", weight)
        if self.active_losses() == []:
            raise ArgumentError(
                "every loss is off: set regression=cosine with regression_weight=1, or "
                "seed_weight=1, or simclr_weight=1 (any weight above 0)",
                "regression",
                "regression_weight",
                "seed_weight",
                "simclr_weight",
            )
        for option in (
            "seed_queue_size",
            "seed_student_temperature",
            "seed_teacher_temperature",
            "temperature",
            "proj_output_dim",
        ):
            check_positive(getattr(self, option), option)
        if self.simclr_weight > 0 and context.num_views < 2:
            raise ArgumentError(
                f"num_views must be >= 2 for simclr_weight > 0, got {context.num_views}",
                "num_views",
            )

    def active_losses(self) -> list[str]:
        active = []
        if self.regression != "none" and self.regression_weight > 0:
            active.append("regression")
        if self.seed_weight > 0:
            active.append("seed")
        if self.simclr_weight > 0:
            active.append("ntxent")
        return active


@register_method("distill", DistillConfig, features=True)
class Distill(TeacherHolder):
    """Student backbone + projection head into the teacher's space, trained on the teacher."""

    def __init__(
        self,
        backbone: Backbone,
        teacher: FrozenTeacher,
        config: DistillConfig,
        distributed: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.hold_teacher(teacher)
        hidden = config.proj_hidden_dim or backbone.feature_dim
        self.distill_head = SimCLRProjectionHead(backbone.feature_dim, hidden, teacher.output_dim)
        active = config.active_losses()
        self.queue: EmbeddingQueue | None = (
            EmbeddingQueue(config.seed_queue_size, teacher.output_dim, distributed)
            if "seed" in active
            else None
        )
        self.projection_head: nn.Module | None = None
        if "ntxent" in active:
            self.projection_head = SimCLRProjectionHead(
                backbone.feature_dim, hidden, config.proj_output_dim
            )
            self.criterion = NTXentLoss(config.temperature, gather_distributed=distributed)

    @classmethod
    def from_config(
        cls, backbone: Backbone, config: MethodConfig, context: BuildContext
    ) -> Distill:
        assert isinstance(config, DistillConfig)
        if not isinstance(context.teacher, FrozenTeacher):
            raise ArgumentError(
                "distillation needs its teacher loaded (set teacher=PATH)", "teacher"
            )
        return cls(backbone, context.teacher, config, distributed=context.distributed)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        """The weighted sum of the active losses, each averaged over the views."""
        batch, config = views[0].shape[0], self.config
        images = torch.cat(views)
        assert self.teacher is not None
        targets = self.teacher(images)  # no autograd; the same views, resized for the teacher
        features = self.backbone(images)  # one pass over all views: shared BatchNorm statistics
        projections = self.distill_head(features).float()
        active, terms = config.active_losses(), {}
        if "regression" in active:
            terms["regression"] = regression_loss(config.regression, projections, targets)
        if self.queue is not None:
            queue = self.queue.embeddings.clone()
            terms["seed"] = seed_loss(
                projections,
                targets,
                queue,
                config.seed_student_temperature,
                config.seed_teacher_temperature,
            )
            # One view per image: the queue holds distinct images, as SEED's does.
            self.queue.push(F.normalize(targets[:batch], dim=-1))
        if self.projection_head is not None:
            z = self.projection_head(features).float().split(batch)
            pairs = list(combinations(range(len(views)), 2))
            terms["ntxent"] = sum(self.criterion(z[i], z[j]) for i, j in pairs) / len(pairs)
        weights = {
            "regression": config.regression_weight,
            "seed": config.seed_weight,
            "ntxent": config.simclr_weight,
        }
        # stack + sum, not Python's sum: under torch.compile, a weight of 1.0 folded
        # ``loss`` into an alias of its term, and with the term's detached copy also
        # returned (a metric) the compiled loss came back without a gradient.
        loss = torch.stack([weights[name] * value for name, value in terms.items()]).sum()
        metrics = {f"loss/{k}": v.detach() for k, v in terms.items()}
        return StepOutput(loss=loss, metrics=metrics, features=features.detach())
