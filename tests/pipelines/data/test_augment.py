import pytest
import torch
import torchvision.transforms.v2.functional as TF

from selfsup.pipelines.config import AugmentConfig
from selfsup.pipelines.data.augment import (
    LUMA,
    BatchAugment,
    blur_kernel_size,
    blur_probability,
    colour_matrices,
    gaussian_blur,
)
from selfsup.pipelines.data.normalize import Normalize


def uint8_views(n=8, size=32, views=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        for _ in range(views)
    ]


def test_output_is_normalised_float_of_the_same_shape():
    augment = BatchAugment(AugmentConfig(), 32, [0.5] * 3, [0.25] * 3)
    out = augment(uint8_views(), seed=0)
    assert len(out) == 2 and out[0].shape == (8, 3, 32, 32) and out[0].dtype == torch.float32
    assert out[0].min() >= -2.1 and out[0].max() <= 2.1  # (x/255 - 0.5) / 0.25


def test_same_seed_same_output_other_seed_other_output():
    augment = BatchAugment(AugmentConfig(), 32, [0.5] * 3, [0.25] * 3)
    views = uint8_views()
    a, b, c = augment(views, seed=7), augment(views, seed=7), augment(views, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_the_callers_rng_stream_is_untouched():
    augment = BatchAugment(AugmentConfig(), 32, [0.5] * 3, [0.25] * 3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    augment(uint8_views(), seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_parameters_are_drawn_per_sample():
    # Eight copies of one image must come out different: each sample gets its own draw.
    image = uint8_views(n=1)[0]
    batch = image.repeat(8, 1, 1, 1)
    cfg = AugmentConfig(color_jitter_prob=1.0, hflip_prob=0.5)
    out = BatchAugment(cfg, 32, [0.5] * 3, [0.25] * 3)([batch, batch], seed=3)[0]
    distinct = {tuple(out[i].flatten()[:50].tolist()) for i in range(8)}
    assert len(distinct) == 8


def test_no_ops_configured_means_only_normalisation():
    cfg = AugmentConfig(hflip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    views = uint8_views()
    out = BatchAugment(cfg, 32, [0.0] * 3, [1.0] * 3)(views, seed=0)
    assert torch.allclose(out[0], views[0].float() / 255, atol=1e-6)


def test_grayscale_with_probability_one_equalises_channels():
    cfg = AugmentConfig(hflip_prob=0, color_jitter_prob=0, grayscale_prob=1.0, blur_prob=0)
    out = BatchAugment(cfg, 32, [0.0] * 3, [1.0] * 3)(uint8_views(), seed=0)[0]
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5)


@pytest.mark.parametrize("size, expected", [(32, 0.0), (64, 0.5), (224, 0.5)])
def test_blur_is_on_only_where_it_fits_the_resolution(size, expected):
    assert blur_probability(AugmentConfig(), size) == expected
    assert blur_probability(AugmentConfig(blur_prob=0.3), size) == 0.3
    assert blur_kernel_size(size) % 2 == 1


def test_normalize_channels_last():
    out = Normalize([0.0] * 3, [1.0] * 3, channels_last=True)(
        torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    )
    assert out.is_contiguous(memory_format=torch.channels_last)


def smooth_batch(n=4, size=24):
    """Mid-range colours, so that no factor below 1 pushes a value out of [0, 1]."""
    g = torch.Generator().manual_seed(0)
    return 0.25 + 0.5 * torch.rand(n, 3, size, size, generator=g)


@pytest.mark.parametrize(
    "name, factors, reference",
    [
        ("brightness", dict(brightness=0.7), lambda x: TF.adjust_brightness(x, 0.7)),
        ("contrast", dict(contrast=0.6), lambda x: TF.adjust_contrast(x, 0.6)),
        ("saturation", dict(saturation=0.5), lambda x: TF.adjust_saturation(x, 0.5)),
        ("grayscale", dict(grayscale=1.0), lambda x: TF.rgb_to_grayscale(x, 3)),
    ],
)
def test_colour_twist_matches_torchvision_formulas(name, factors, reference):
    x = smooth_batch()
    n = len(x)
    values = dict(brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0, grayscale=0.0) | factors
    params = {k: torch.full((n,), float(v)) for k, v in values.items()}
    luma = torch.einsum("bchw,c->b", x, torch.tensor(LUMA)) / x[0, 0].numel()
    matrix, offset = colour_matrices(**params, mean_luma=luma)
    out = torch.einsum("bij,bjhw->bihw", matrix, x) + offset[..., None, None]
    assert torch.allclose(out, reference(x), atol=1e-4), name


def test_hue_rotation_keeps_luma_and_zero_is_identity():
    x = smooth_batch()
    n = len(x)
    ones, zeros = torch.ones(n), torch.zeros(n)
    luma = torch.einsum("bchw,c->b", x, torch.tensor(LUMA)) / x[0, 0].numel()
    identity, offset = colour_matrices(ones, ones, ones, zeros, zeros, luma)
    assert (
        torch.allclose(identity, torch.eye(3).expand(n, 3, 3), atol=1e-6)
        and offset.abs().max() < 1e-6
    )
    rotated, _ = colour_matrices(ones, ones, ones, torch.full((n,), 0.25), zeros, luma)
    out = torch.einsum("bij,bjhw->bihw", rotated, x)
    y = lambda t: torch.einsum("bchw,c->bhw", t, torch.tensor(LUMA))  # noqa: E731
    assert torch.allclose(y(out), y(x), atol=1e-5) and not torch.allclose(out, x, atol=1e-2)


def test_blur_matches_torchvision_gaussian_blur():
    x = smooth_batch(n=3, size=32)
    sigmas = torch.tensor([0.5, 1.0, 2.0])
    out = gaussian_blur(x, sigmas, 7)
    for i, sigma in enumerate(sigmas.tolist()):
        expected = TF.gaussian_blur(x[i : i + 1], [7, 7], [sigma, sigma])
        assert torch.allclose(out[i : i + 1], expected, atol=1e-5)


def test_flip_and_solarize_with_probability_one():
    cfg = AugmentConfig(
        hflip_prob=1.0, color_jitter_prob=0, grayscale_prob=0, blur_prob=0, solarize_prob=1.0
    )
    views = uint8_views(n=2)
    out = BatchAugment(cfg, 32, [0.0] * 3, [1.0] * 3)(views, seed=0)[0]
    x = views[0].float().flip(-1) / 255
    assert torch.allclose(out, torch.where(x >= 0.5, 1 - x, x), atol=1e-6)
