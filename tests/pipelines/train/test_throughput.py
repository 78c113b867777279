import pytest
import torch
import torchvision

from selfsup.pipelines.config import load_config
from selfsup.pipelines.train.throughput import (
    Throughput,
    count_step_flops,
    peak_flops,
    peak_flops_of,
)
from selfsup.ssl.outputs import StepOutput


def resnet18_training_flops(batch: int) -> float:
    return count_step_flops(
        _SimpleStep(torchvision.models.resnet18()),
        lambda device: [torch.randn(batch, 3, 224, 224, device=device)],
    )


class _SimpleStep(torch.nn.Module):
    """A classifier step with the same interface as a method: views in, .loss out."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, views):
        return StepOutput(loss=self.net(views[0]).float().pow(2).mean())


def test_forward_flops_match_torchvisions_published_count():
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = torchvision.models.resnet18()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(1, 3, 224, 224, device="meta"))
    published_gmacs = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["_ops"]  # 1.814
    assert abs(counter.get_total_flops() / 2e9 - published_gmacs) / published_gmacs < 0.01


def test_a_training_step_costs_about_three_forward_passes_and_scales_with_batch():
    one, four = resnet18_training_flops(1), resnet18_training_flops(4)
    published = 2e9 * torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["_ops"]
    assert 2.8 < one / published < 3.05  # backward ~ 2x forward (no input gradient)
    assert abs(four / one - 4) < 1e-6


def test_method_step_flops_are_counted_without_memory():
    from selfsup.pipelines.train.build import build_model

    config = load_config(None, ["model.backbone=resnet50", "data.image_size=224"])
    with torch.device("meta"):
        model = build_model(config)
    flops = count_step_flops(model, lambda d: [torch.zeros(8, 3, 224, 224, device=d)] * 2)
    # 16 images through ResNet-50 (4.09 GMACs each), forward and backward: ~390 GFLOP
    assert 3.7e11 < flops < 4.1e11


def test_mfu_of_a_step_whose_flops_are_known_by_hand():
    # One linear layer, no input gradient: forward (2 B I O) + weight gradient (2 B I O) FLOPs,
    # counted by FlopCounterMode on a meta copy; MFU is that x steps/s over the given peak.
    batch, fan_in, fan_out = 32, 64, 16
    layer = torch.nn.Linear(fan_in, fan_out, bias=False)
    flops = count_step_flops(_SimpleStep(layer), lambda d: [torch.zeros(batch, fan_in, device=d)])
    assert flops == 4 * batch * fan_in * fan_out  # FlopCounterMode counts matrix products only
    throughput = Throughput(flops, device=torch.device("cpu"), peak_tflops=1e-6)
    assert throughput.mfu(steps_per_second=2.0) == pytest.approx(2 * flops / 1e6)
    assert layer.weight.device.type == "cpu" and layer.weight.grad is None  # the model untouched
    assert peak_flops(torch.device("cpu")) is None
    assert Throughput(2e12, torch.device("cpu")).mfu(5.0) is None  # CPU: FLOP/s only
    # CUDA's device names: the specific entry wins over the general one.
    assert peak_flops_of("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_of("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_of("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_of("Tesla T4") is None
    with_peak = Throughput(2e12, torch.device("cpu"), peak_tflops=989.0)
    assert with_peak.mfu(steps_per_second=100.0) == pytest.approx(2e14 / 989e12)
