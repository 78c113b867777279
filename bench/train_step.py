"""Training-step throughput and MFU: selfsup's step against the same step in plain torch/timm.

Four workloads, on synthetic batches already on the device (no data loading,
so the model step alone is measured):

- ``simclr_r50``: SimCLR, ResNet-50 at 224 px, two views per image,
  2048-2048-128 projection head, NT-Xent; SGD with momentum; channels_last.
- ``mae_vitb16``: MAE, ViT-B/16 at 224 px, 75% masked, 8-block 512-wide
  decoder, normalised-pixel loss; AdamW.
- ``ijepa_vitb16``: I-JEPA, ViT-B/16 at 224 px: a momentum target encoder's
  forward pass (no autograd), the context encoder on one context block, a
  6-block 384-wide predictor for 4 target blocks, smooth L1; AdamW, and the
  target's EMA update after each step. Its FLOPs count the target encoder and
  the predictor. selfsup draws its masks inside the step (seeded per sample, on
  the CPU); the plain step takes masks drawn beforehand, as the reference's data
  loader workers do, so the ratio includes that cost.
- ``simclr_r18``: SimCLR on the distillation student alone (ResNet-18, 512-2048-128 head).
- ``distill_r50_r18``: a frozen ResNet-50 teacher (forward pass only, no
  autograd) and a ResNet-18 student with a 512-2048-2048 head regressing the
  teacher's embeddings (cosine). Its FLOPs count the teacher's forward pass;
  the last line compares its MFU with ``simclr_r18``'s.

``selfsup`` is the trainer's own ``optimizer_step`` on a model, engine and
optimizer built from a selfsup config, exactly as ``selfsup train`` builds
them. ``plain`` is the same computation written directly with torchvision /
timm modules and torch optimisers, no selfsup code. Both use bf16 autocast
and, with ``--compile``, ``torch.compile`` on the model. FLOPs per step are
counted once with ``torch.utils.flop_counter`` (selfsup's ``count_step_flops``)
and MFU is against the device's dense bf16 peak (``pipelines/train/throughput.py``).

    python bench/train_step.py                          # both workloads, GPU when present
    python bench/train_step.py --compile
    python bench/train_step.py --smoke                  # tiny sizes: checks the script runs
"""

from __future__ import annotations

import argparse
import copy
import itertools
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import torchvision
from benchlib import sync
from timm.models.vision_transformer import Block
from torch import nn

from selfsup.pipelines.config import RunConfig, load_config
from selfsup.pipelines.runtime.engines import Engine
from selfsup.pipelines.train.build import build_model
from selfsup.pipelines.train.hooks import HookContext, attach_hooks
from selfsup.pipelines.train.optim import build_optimizer
from selfsup.pipelines.train.throughput import count_step_flops, peak_flops
from selfsup.pipelines.train.trainer import optimizer_step
from selfsup.ssl.ijepa_masks import MultiBlock, batch_masks
from selfsup.ssl.method import METHODS, KeyedViews
from selfsup.ssl.outputs import StepOutput
from selfsup.text import markdown_header, markdown_row

WORKLOADS = ("simclr_r50", "mae_vitb16", "ijepa_vitb16", "simclr_r18", "distill_r50_r18")
TWO_VIEWS = ("simclr_r50", "simclr_r18", "distill_r50_r18")


@dataclass
class Sizes:
    image: int
    batch: int
    patch: int
    decoder_dim: int
    decoder_depth: int


def sizes(args: argparse.Namespace, workload: str) -> Sizes:
    """Image, batch and patch sizes; the decoder's (MAE) or the predictor's (I-JEPA) width
    and depth."""
    ijepa = workload == "ijepa_vitb16"
    if args.smoke:
        return Sizes(image=32, batch=4, patch=8, decoder_dim=48 if ijepa else 32, decoder_depth=1)
    batch = args.batch_size or (512 if workload == "mae_vitb16" else 256)
    if ijepa:
        return Sizes(image=224, batch=batch, patch=16, decoder_dim=384, decoder_depth=6)
    return Sizes(image=224, batch=batch, patch=16, decoder_dim=512, decoder_depth=8)


# --- selfsup ----------------------------------------------------------------------------


def selfsup_overrides(workload: str, s: Sizes) -> list[str]:
    common = [f"data.image_size={s.image}", f"data.batch_size={s.batch}", "train.precision=bf16"]
    if workload in TWO_VIEWS:
        backbone = "resnet50" if workload == "simclr_r50" else "resnet18"
        overrides = [
            f"model.backbone={backbone}", "model.cifar_stem=false", "model.channels_last=true",
            "method.proj_hidden_dim=2048", "method.proj_output_dim=128",
            "optim.name=sgd", "augment.num_views=2",
        ]  # fmt: skip
        if workload == "distill_r50_r18":
            overrides += ["method.name=distill", f"method.teacher={teacher_file(s.image)}",
                          "method.regression=cosine"]  # fmt: skip
        else:
            overrides.append("method.name=simclr")
    elif workload == "ijepa_vitb16":
        overrides = [
            "model.backbone=vit_base", f"model.patch_size={s.patch}", "model.channels_last=false",
            "model.pool=avg", "method.name=ijepa", f"method.pred_emb_dim={s.decoder_dim}",
            f"method.pred_depth={s.decoder_depth}", "optim.name=adamw", "augment.num_views=1",
        ]  # fmt: skip
    else:
        overrides = [
            "model.backbone=vit_base", f"model.patch_size={s.patch}", "model.channels_last=false",
            "method.name=mae", "method.mask_ratio=0.75", f"method.decoder_dim={s.decoder_dim}",
            f"method.decoder_depth={s.decoder_depth}", "method.decoder_heads=16",
            "optim.name=adamw", "augment.num_views=1",
        ]  # fmt: skip
    return [*common, *overrides]


def selfsup_step(workload: str, s: Sizes, device: torch.device, compile_: bool) -> Callable:
    config = load_config(None, selfsup_overrides(workload, s))
    return config_step(config, device, "default" if compile_ else None)


def config_step(config: RunConfig, device: torch.device, compile_mode: str | None) -> Callable:
    """One ``optimizer_step`` of the model ``config`` builds, on synthetic views on ``device``,
    then the training hooks' ``after_optimizer_step`` (I-JEPA: its target's EMA update)."""
    model = build_model(config).to(device)
    batch, image = config.data.batch_size, config.data.image_size
    optimizer = build_optimizer(model, config.optim, batch)
    engine = Engine(device, config.train.precision, None, compile=compile_mode)
    hooks = attach_hooks(HookContext(config, model, 1_000_000, 1000, engine)).values()
    model = engine.setup(model, optimizer, channels_last=config.model.channels_last)
    fmt = torch.channels_last if config.model.channels_last else torch.contiguous_format
    views = [
        torch.randn(batch, 3, image, image, device=device).contiguous(memory_format=fmt)
        for _ in range(config.augment.num_views)
    ]
    keyed = METHODS.get(config.method.name).keyed
    steps = itertools.count(1)

    def step() -> None:
        number = next(steps)
        inputs = KeyedViews(views, 0, number, torch.arange(batch)) if keyed else views
        optimizer_step(engine, model, [inputs], accum=1)
        for hook in hooks:
            hook.after_optimizer_step(number)

    return step


def teacher_file(image_size: int) -> str:
    """A ResNet-50 teacher's weights file (random weights: speed does not depend on them)."""
    from selfsup.pipelines.checkpoint.weights import BackboneInfo, save_backbone

    path = Path(tempfile.gettempdir()) / f"selfsup-bench-teacher-r50-{image_size}.pt"
    if not path.is_file():
        data = load_config(None, []).data
        info = BackboneInfo("resnet50", "auto", False, image_size, list(data.mean),
                            list(data.std), None, str(path), None)  # fmt: skip
        save_backbone(path, info.build().trunk.state_dict(), info)
    return str(path)


# --- plain torch / timm -----------------------------------------------------------------


def resnet(name: str, cifar_stem: bool = False) -> nn.Module:
    trunk = getattr(torchvision.models, name)()
    trunk.fc = nn.Identity()
    if cifar_stem:  # 3x3 stride-1 first convolution, no max-pool (32 px images)
        trunk.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        trunk.maxpool = nn.Identity()
    return trunk


def mlp_head(features: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, out),
    )  # fmt: skip


class PlainSimCLR(nn.Module):
    def __init__(self, name: str = "resnet50", cifar_stem: bool = False) -> None:
        super().__init__()
        self.backbone = resnet(name, cifar_stem)
        features = 2048 if name == "resnet50" else 512
        self.head = mlp_head(features, 2048, 128)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        z = F.normalize(self.head(self.backbone(torch.cat(views))).float(), dim=1)
        n = views[0].shape[0]
        logits = z @ z.T / 0.1
        logits.fill_diagonal_(float("-inf"))
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(logits, targets)


class PlainDistill(nn.Module):
    """A frozen ResNet-50 teacher's embeddings regressed by a ResNet-18 student (cosine)."""

    def __init__(self) -> None:
        super().__init__()
        self.student = resnet("resnet18")
        self.head = mlp_head(512, 2048, 2048)
        self.teacher = [resnet("resnet50").eval().requires_grad_(False)]  # not a child: no state

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        images = torch.cat(views)
        with torch.no_grad():
            target = F.normalize(self.teacher[0](images).float(), dim=1)
        prediction = F.normalize(self.head(self.student(images)).float(), dim=1)
        return (1 - (prediction * target).sum(dim=1)).mean()

    def _apply(self, fn, *args, **kwargs):
        self.teacher[0]._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)


def plain_model(workload: str, s: Sizes) -> nn.Module:
    if workload == "simclr_r50":
        return PlainSimCLR("resnet50")
    if workload == "simclr_r18":
        return PlainSimCLR("resnet18")
    if workload == "distill_r50_r18":
        return PlainDistill()
    if workload == "ijepa_vitb16":
        return PlainIJEPA(s)
    return PlainMAE(s)


class PlainMAE(nn.Module):
    def __init__(self, s: Sizes) -> None:
        super().__init__()
        self.patch = s.patch
        self.encoder = timm.create_model(
            "vit_base_patch16_224", patch_size=s.patch, img_size=s.image, num_classes=0
        )
        num_patches = (s.image // s.patch) ** 2
        self.embed = nn.Linear(768, s.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, s.decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, num_patches + 1, s.decoder_dim))
        self.decoder = nn.Sequential(
            *[Block(s.decoder_dim, 16, qkv_bias=True) for _ in range(s.decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(s.decoder_dim)
        self.pred = nn.Linear(s.decoder_dim, s.patch * s.patch * 3)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        images = views[0]
        vit, b = self.encoder, images.shape[0]
        tokens = vit.patch_embed(images) + vit.pos_embed[:, 1:]
        n = tokens.shape[1]
        keep = int(n * 0.25)
        order = torch.rand(b, n, device=images.device).argsort(dim=1)
        restore = order.argsort(dim=1)
        visible = torch.gather(tokens, 1, order[:, :keep, None].expand(-1, -1, tokens.shape[2]))
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(b, -1, -1)
        x = vit.norm(vit.blocks(torch.cat([cls, visible], dim=1)))
        x = self.embed(x)
        filler = self.mask_token.expand(b, n - keep, -1)
        patches = torch.cat([x[:, 1:], filler], dim=1)
        patches = torch.gather(patches, 1, restore[:, :, None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos
        prediction = self.pred(self.decoder_norm(self.decoder(x)))[:, 1:]
        target = images.unfold(2, self.patch, self.patch).unfold(3, self.patch, self.patch)
        target = target.permute(0, 2, 3, 4, 5, 1).reshape(b, n, -1)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
        masked = torch.ones(b, n, device=images.device)
        masked[:, :keep] = 0
        masked = torch.gather(masked, 1, restore)
        per_patch = ((prediction.float() - target) ** 2).mean(-1)
        return (per_patch * masked).sum() / masked.sum()


class PlainIJEPA(nn.Module):
    """I-JEPA written with timm: EMA target, context encoder, predictor of timm Blocks."""

    def __init__(self, s: Sizes, heads: int = 12, targets: int = 4) -> None:
        super().__init__()
        self.encoder = timm.create_model(
            "vit_base_patch16_224", patch_size=s.patch, img_size=s.image, num_classes=0,
            global_pool="avg",
        )  # fmt: skip
        self.target = copy.deepcopy(self.encoder).requires_grad_(False)
        n, width = (s.image // s.patch) ** 2, s.decoder_dim
        self.embed = nn.Linear(768, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pred_pos = nn.Parameter(torch.zeros(1, n, width), requires_grad=False)
        self.blocks = nn.Sequential(*[Block(width, heads, qkv_bias=True)
                                      for _ in range(s.decoder_depth)])  # fmt: skip
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, 768)
        # Masks drawn beforehand (the reference's loader workers draw them): same rules.
        side = s.image // s.patch
        context, target_blocks = batch_masks(
            MultiBlock(side, side), 0, 0, torch.arange(s.batch, device="cpu")
        )
        self.register_buffer("context", context)
        self.register_buffer("targets", torch.stack(target_blocks))  # (targets, B, K_t)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        images, vit = views[0], self.encoder
        with torch.no_grad():
            wanted = self.target.fc_norm(self.target.forward_features(images)[:, 1:])
            wanted = F.layer_norm(wanted.float(), wanted.shape[-1:])
            wanted = torch.cat([_gather(wanted, t) for t in self.targets])
        tokens = _gather(vit.patch_embed(images) + vit.pos_embed[:, 1:], self.context)
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(len(images), -1, -1)
        encoded = vit.fc_norm(vit.blocks(torch.cat([cls, tokens], dim=1)))[:, 1:]
        x = self.embed(encoded) + _gather(self.pred_pos.expand(len(images), -1, -1), self.context)
        x = x.repeat(len(self.targets), 1, 1)
        pos = torch.cat([_gather(self.pred_pos.expand(len(images), -1, -1), t)
                         for t in self.targets])  # fmt: skip
        x = self.blocks(torch.cat([x, self.mask_token + pos], dim=1))
        predicted = self.proj(self.norm(x)[:, encoded.shape[1] :])
        return F.smooth_l1_loss(predicted.float(), wanted)

    @torch.no_grad()
    def after_step(self, momentum: float = 0.998) -> None:
        target = list(self.target.parameters())
        torch._foreach_mul_(target, momentum)
        torch._foreach_add_(target, list(self.encoder.parameters()), alpha=1 - momentum)


def _gather(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(tokens, 1, index[:, :, None].expand(-1, -1, tokens.shape[2]))


def plain_step(workload: str, s: Sizes, device: torch.device, compile_: bool) -> Callable:
    torch.manual_seed(0)
    if workload in TWO_VIEWS:
        model = plain_model(workload, s).to(device).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
        channels_last = True
    else:
        model = plain_model(workload, s).to(device)
        trained = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=1.5e-4, betas=(0.9, 0.95))
        channels_last = False
    forward = torch.compile(model) if compile_ else model
    views = make_views(workload, s, device, channels_last)
    after_step = getattr(model, "after_step", lambda: None)  # I-JEPA's EMA update

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(views)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        after_step()

    return step


# --- measuring --------------------------------------------------------------------------


def make_views(workload: str, s: Sizes, device: torch.device, channels_last: bool):
    count = 2 if workload in TWO_VIEWS else 1
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [
        torch.randn(s.batch, 3, s.image, s.image, device=device).contiguous(memory_format=fmt)
        for _ in range(count)
    ]


def step_flops(workload: str, s: Sizes) -> float | None:
    """FLOPs of one step of the plain model (the same computation as selfsup's)."""
    count = 2 if workload in TWO_VIEWS else 1

    with torch.device("meta"):  # shapes only: count_step_flops runs a meta copy
        model = AsStepOutput(plain_model(workload, s))
    return count_step_flops(
        model, lambda device: [torch.zeros(s.batch, 3, s.image, s.image, device=device)] * count
    )


class AsStepOutput(nn.Module):
    """Wraps a plain model's loss in the ``StepOutput`` that ``count_step_flops`` reads."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        return StepOutput(loss=self.model(views))


def time_steps(step: Callable, device: torch.device, steps: int) -> float:
    """Seconds per step over ``steps`` steps, waiting for the device at both ends."""
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - started) / steps


def _rate(images_per_second: float) -> str:
    return f"{images_per_second:,.0f}" if images_per_second >= 100 else f"{images_per_second:.1f}"


def measure(workload: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Median seconds per step of each side, alternating rounds."""
    s = sizes(args, workload)
    steps = {
        "selfsup": selfsup_step(workload, s, device, args.compile),
        "plain": plain_step(workload, s, device, args.compile),
    }
    for step in steps.values():  # compilation, allocator, cudnn autotuning
        for _ in range(args.warmup):
            step()
    # Alternating rounds, median per side: drifts of the machine (clocks,
    # other load) hit both sides alike.
    rounds: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for label, step in steps.items():
            rounds[label].append(time_steps(step, device, args.steps))
    del steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {k: statistics.median(v) for k, v in rounds.items()}


WORKLOAD_GROUPS = {"all": WORKLOADS, "distill": ("simclr_r18", "distill_r50_r18")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, *WORKLOAD_GROUPS], default="all")
    parser.add_argument("--batch-size", type=int, help="default 256 (SimCLR, distill), 512 (MAE)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check it runs")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    peak = peak_flops(device)
    print(f"# {name or device.type}, torch {torch.__version__}, compile={args.compile}")
    header = ["workload", "batch", "selfsup img/s", "plain img/s", "ratio", "selfsup MFU",
              "plain MFU"]  # fmt: skip
    print(*markdown_header(header), sep="\n")
    achieved: dict[str, float] = {}  # selfsup's FLOP/s by workload
    for workload in WORKLOAD_GROUPS.get(args.workload, (args.workload,)):
        batch, flops = sizes(args, workload).batch, step_flops(workload, sizes(args, workload))
        seconds = measure(workload, args, device)
        rate = {k: batch / v for k, v in seconds.items()}
        mfu = {
            k: (f"{100 * flops / v / peak:.1f}%" if flops and peak else "-")
            for k, v in seconds.items()
        }
        if flops:
            achieved[workload] = flops / seconds["selfsup"]
        ratio = f"{rate['selfsup'] / rate['plain']:.2f}x"
        cells = [workload, batch, _rate(rate["selfsup"]), _rate(rate["plain"]), ratio,
                 mfu["selfsup"], mfu["plain"]]  # fmt: skip
        print(markdown_row(cells), flush=True)
    if {"simclr_r18", "distill_r50_r18"} <= set(achieved):
        share = achieved["distill_r50_r18"] / achieved["simclr_r18"]
        print(f"distillation MFU (teacher FLOPs counted) / student SimCLR MFU: {100 * share:.0f}%")


if __name__ == "__main__":
    main()
