"""The run configuration's schema: one dataclass per section, ``RunConfig`` holding them.

Sections owned by a component (``method:``, the chosen method's dataclass;
``sparsity:``) are registered by it (:mod:`selfsup.pipelines.config.registry`)
and typed ``Any`` here: this package imports no component.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfsup.pipelines.config.registry import section_default

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
FINETUNE_CROPS = ("pad", "resized")
DEFAULT_METHOD = "simclr"
# The largest side of an image a network is fed (views, probe/fine-tune inputs,
# a teacher's input, images held by the memory loader): far above any recipe
# (224-518 px), far below what exhausts memory on the first batch.
MAX_VIEW_SIDE = 1024
# The word for "choose for me" wherever a key takes it (workers, compile, loaders).
AUTO = "auto"


@dataclass
class DataConfig:
    """Where pretraining images come from and how they are batched."""

    dataset: str = "cifar10"  # cifar10 | fashion_mnist | imagefolder
    path: str | None = None  # dataset folder or a root holding it; None: search default places
    # torchvision | ffcv | memory (the dataset held on the device) | auto (ffcv when installed
    # and beton set, else torchvision)
    loader: str = "torchvision"
    decode: str = "auto"  # JPEGs decoded by loader workers (cpu) or on the device (gpu); auto:
    # gpu on CUDA when the images are JPEGs (torchvision and ffcv loaders)
    memory_side: int | None = None  # memory loader: images held as side x side squares;
    # None: the dataset's own side (CIFAR-10, Fashion-MNIST), else data.image_size
    beton: str | None = None  # training images as an FFCV .beton (selfsup data write)
    ffcv_order: str = "random"  # random | quasi_random (less disk traffic, single process only)
    os_cache: bool = True  # ffcv: let the OS page cache hold the file (False: ffcv's own cache)
    batches_ahead: int = 3  # ffcv: batches prepared ahead of the training step
    image_size: int = 32  # side of each training view, in pixels
    batch_size: int = 256  # per process
    num_workers: int | str = "auto"  # DataLoader workers; auto: the CPUs of this process
    train_samples: int | None = None  # use the first N samples (quick runs)
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class AugmentConfig:
    """Multi-view SimCLR augmentation (Chen et al. 2020, appendix A)."""

    num_views: int = 2
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    hflip_prob: float = 0.5
    color_jitter_prob: float = 0.8
    color_jitter_strength: float = 1.0  # SimCLR's s: 1.0 on ImageNet, 0.5 on CIFAR
    grayscale_prob: float = 0.2
    blur_prob: float | None = None  # None: 0.5 from 64 px up, off below (as SimCLR on CIFAR)
    solarize_prob: float = 0.0


@dataclass
class ModelConfig:
    """Backbone architecture."""

    # resnet18 | resnet50 | vit_tiny | vit_small | vit_base, or any model of timm's or
    # torchvision's registry: timm/efficientnet_b0, timm/convnext_tiny, torchvision/resnet50
    backbone: str = "resnet18"
    source: str = "auto"  # auto (torchvision ResNets, timm ViTs) | torchvision | timm
    cifar_stem: bool = False  # ResNets: 3x3 stride-1 first conv and no max-pool, for 32 px images
    patch_size: int | None = None  # ViTs: None -> 16 from 128 px up, else 4
    pool: str = "token"  # ViTs: features from the class token, or avg of the patch tokens
    channels_last: bool = True
    # Start from trained weights (a run directory, checkpoints/step_* folder or backbone .pt)
    # instead of a random initialisation: continued pretraining, or a pruned model's recovery.
    init_weights: str | None = None


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (linear warmup, then cosine)."""

    name: str = "lars"  # sgd | lars | adamw
    base_lr: float = 0.3  # per 256 images; lr = base_lr * global_batch / 256
    weight_decay: float = 1e-6
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 10.0
    min_lr_ratio: float = 0.0  # final lr as a fraction of the peak lr
    clip_grad_norm: float | None = None
    schedule: str = "cosine"  # cosine | step | onecycle (each after warmup_epochs)
    step_epochs: list[int] = field(default_factory=list)  # step: epochs where lr x step_gamma
    step_gamma: float = 0.1
    exclude_bias_and_norm: bool = True  # no weight decay (and no LARS scaling) on biases and norms


# AdamW at 1e-3 per 256 images, weight decay 0.05, one warmup epoch, then cosine.
FINETUNE_OPTIM = OptimConfig(
    name="adamw", base_lr=1e-3, weight_decay=0.05, warmup_epochs=1.0, exclude_bias_and_norm=True
)


@dataclass
class TrainConfig:
    """Length, precision and logging of a pretraining run."""

    epochs: int = 100
    max_steps: int | None = None  # stop after this many optimizer steps; the schedule ends there
    precision: str = "bf16"  # fp32 | bf16 | fp16 (fp16 needs a GPU)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    log_every: int = 10  # steps between TensorBoard scalars
    image_every: int = 500  # steps between reconstruction images (mae, simmim) in TensorBoard
    # torch.compile the model (single and ddp engines); auto: on CUDA, off on the CPU
    compile: bool | str = "auto"
    compile_mode: str = "default"  # default | reduce-overhead | max-autotune-no-cudagraphs
    peak_tflops: float | None = None  # per device, for MFU where selfsup has no table entry
    # single | ddp | fsdp | deepspeed (all but single under torchrun or srun)
    engine: str = "single"
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    sync_batchnorm: bool = False  # ddp, fsdp: BatchNorm statistics over all processes
    # fsdp: free each block's gathered parameters after its forward (gather again for
    # backward): less memory, one more all-gather per block (FSDP2's reshard_after_forward)
    fsdp_reshard_after_forward: bool = True
    zero_stage: int = 2  # deepspeed: ZeRO stage 0-3
    # ddp/fsdp/deepspeed: seconds a collective may wait for the other ranks. A rank whose peer
    # died (a lost node) leaves within it; it must outlast the slowest checkpoint write.
    dist_timeout_s: float = 1800.0
    deepspeed_config: str | None = None  # deepspeed: JSON file merged over the generated config
    # Training hooks to run beyond those their own section turns on (sparsity):
    # names registered in selfsup.pipelines.train.hooks.HOOKS.
    hooks: list[str] = field(default_factory=list)


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept."""

    every_steps: int = 500
    keep_last: int = 2
    keep_every: int | None = None  # also keep every checkpoint whose step is a multiple of this
    resume: bool = True  # resume automatically when the run directory holds a checkpoint
    # Write checkpoints in the background (DCP async_save; not deepspeed): training waits
    # only for a copy into CPU memory; `latest` moves once the write is complete.
    async_save: bool = False
    # resume=false in a run directory with checkpoints: move the old run aside
    # (into replaced-<time>/) instead of refusing (`selfsup train --overwrite`).
    overwrite: bool = False
    # The run directory's lock (selfsup.pipelines.checkpoint.run_lock): wait for a
    # live holder instead of refusing (`--wait-for-lock`), and how long a holder
    # may go without renewing before its lock counts as stale (a dead node).
    wait_for_lock: bool = False
    lock_lease_s: float = 120.0


@dataclass
class ProbeConfig:
    """Frozen-feature evaluation: linear classifier and kNN."""

    datasets: list[str] = field(default_factory=lambda: ["cifar10", "fashion_mnist"])
    data_path: str | None = None  # root holding the datasets; None: search default places
    image_size: int | None = None  # None: data.image_size
    batch_size: int = 512
    num_workers: int | str = "auto"  # auto: the CPUs of this process
    train_samples: int | None = None  # None: the whole training split
    test_samples: int | None = None  # None: the whole test split
    epochs: int = 100  # linear classifier epochs over cached features
    lr: float = 1e-3
    weight_decay: float = 1e-4
    knn_k: int = 200
    knn_temperature: float = 0.1
    baseline: bool = True  # also probe the same backbone at random initialisation
    precision: str = "bf16"  # autocast for feature extraction: fp32 | bf16
    loader: str = "torchvision"  # torchvision | ffcv | auto (ffcv where betons are given)
    betons: dict[str, str] = field(default_factory=dict)  # "<dataset>_<train|test>" -> .beton


@dataclass
class FinetuneConfig:
    """Full fine-tune transfer (``selfsup finetune``); recipes in configs/finetune/ set these.

    ``recipe``: ``head_then_unfreeze`` (frozen base + MLP head for ``epochs``,
    then everything for ``unfreeze_epochs`` at ``unfreeze_lr_factor`` x the
    rate), ``full`` (every layer from the start for ``epochs``) or ``linear``
    (the frozen-feature probe of the ``probe:`` section).
    """

    # head_then_unfreeze | full | linear, or any recipe registered in selfsup.eval.finetune.recipes
    recipe: str = "full"
    datasets: list[str] = field(default_factory=lambda: ["cifar10", "fashion_mnist"])
    data_path: str | None = None  # root holding the datasets; None: search default places
    image_size: int | None = None  # None: the backbone's training resolution
    train_samples: int | None = 10000  # training images (None: the split less validation)
    val_fraction: float = 0.1  # validation images, as a share of the training images
    test_samples: int | None = None  # None: the whole test split, scored once
    batch_size: int = 128
    num_workers: int | str = "auto"
    epochs: int = 10  # full: all epochs; head_then_unfreeze: phase 1 (frozen base)
    unfreeze_epochs: int = 10  # head_then_unfreeze: phase 2 (everything trained)
    unfreeze_lr_factor: float = 0.1  # phase 2's rate as a share of phase 1's
    head_hidden: list[int] = field(default_factory=list)  # [] linear head; [256, 128] MLP
    head_dropout: float = 0.0
    # The fine-tune's optimizer and schedule: pretraining's section, with fine-tuning's
    # defaults (finetune.optim.base_lr, finetune.optim.schedule, ...); each phase's rate
    # is optim.base_lr x its factor.
    optim: OptimConfig = field(default_factory=lambda: dataclasses.replace(FINETUNE_OPTIM))
    label_smoothing: float = 0.1
    layer_decay: float | None = None  # ViTs: None -> 0.65 (0.75 above vit_base); 1.0: off
    drop_path: float = 0.1  # ViTs: stochastic depth rate
    crop: str = "pad"  # pad (random crop of the padded image) | resized (random-resized crop)
    crop_padding: int = 4
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])  # crop=resized
    hflip_prob: float = 0.5
    randaugment: int = 0  # RandAugment magnitude (2 ops per image, e.g. 9); 0: off
    mixup: float = 0.0  # timm's Mixup alpha (0: off)
    cutmix: float = 0.0  # timm's CutMix alpha (0: off)
    baseline: bool = True  # also fine-tune the same architecture from random init (scratch)
    # A third start beside the self-supervised weights and scratch: a supervised ImageNet
    # checkpoint of the same architecture in its library's format (a file), or "cache" for
    # torchvision's default weights in torch's cache; never downloaded.
    supervised: str = ""
    log_every: int = 10  # steps between TensorBoard scalars
    # Under torchrun/srun: ddp | fsdp (None: the pretraining run's engine, ddp for single)
    engine: str | None = None
    # Logit distillation (Hinton et al.): a fine-tuned teacher classifier (its classifier.pt,
    # or a folder holding <dataset>/<recipe>/pretrained/classifier.pt). When set, a third
    # fine-tune, "distilled", starts from the same weights as "pretrained" and learns from
    # (1 - distill_alpha) x label loss + distill_alpha x T^2 x KL(teacher || student).
    teacher: str = ""
    distill_temperature: float = 4.0
    distill_alpha: float = 0.5


@dataclass
class RunConfig:
    """Everything a pretraining run needs; saved as ``config.yaml`` in its run directory."""

    name: str = "run"
    output_dir: str = "runs"
    run_dir: str | None = None  # None: <output_dir>/<name>
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # The chosen method's own dataclass (its registered section): its fields are
    # the valid ``method.*`` keys, so the schema follows ``method.name``.
    method: Any = field(default_factory=lambda: section_default("method", DEFAULT_METHOD))
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # Weight sparsity of the backbone (its registered section): off while target is 0.
    sparsity: Any = field(default_factory=lambda: section_default("sparsity"))
    # Online kNN / linear accuracy and collapse metrics (its registered section): off by default.
    monitor: Any = field(default_factory=lambda: section_default("monitor"))

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(self.output_dir) / self.name
