import pytest
import torch
from lightly.models import utils

from selfsup.ssl.backbones import build_backbone
from selfsup.ssl.mae import MAE
from selfsup.ssl.simmim import SimMIM


def small_mae(**kwargs) -> MAE:
    torch.manual_seed(0)
    backbone = build_backbone("vit_tiny", image_size=32, patch_size=4)
    options = dict(decoder_dim=32, decoder_depth=1, decoder_heads=4) | kwargs
    return MAE(backbone, **options)


def test_mae_loss_is_mse_on_masked_normalised_patches():
    model = small_mae().eval()
    images = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    loss = model([images]).loss
    torch.manual_seed(1)
    prediction, target, _, _ = model._predict(images)
    expected = torch.nn.functional.mse_loss(prediction, utils.normalize_mean_var(target, dim=-1))
    assert torch.allclose(loss, expected, atol=1e-6)
    assert prediction.shape == (2, 48, 4 * 4 * 3)  # 75% of 64 patches


def test_mae_encoder_sees_only_visible_patches():
    model = small_mae(mask_ratio=0.75)
    seen = []
    hook = model.backbone.trunk.blocks[0].register_forward_hook(
        lambda m, i, o: seen.append(o.shape[1])
    )
    model([torch.randn(2, 3, 32, 32)])
    hook.remove()
    assert seen == [1 + 16]  # class token + 25% of 64 patches


def test_mae_weights_are_stored_once_under_the_backbone():
    keys = list(small_mae().state_dict())
    assert any(k.startswith("backbone.trunk.blocks.0") for k in keys)
    assert not any(k.startswith("encoder.") for k in keys)


def test_mae_reconstruction_keeps_visible_patches():
    model = small_mae().eval()
    images = torch.randn(2, 3, 32, 32)
    panels = model.reconstruct(images)
    assert panels["reconstruction"].shape == images.shape
    # a quarter of the patches are visible and copied through unchanged
    same = (panels["reconstruction"] == images).all(dim=1).float().mean().item()
    assert 0.2 < same < 0.3


def test_simmim_masks_whole_patches_and_scores_only_them():
    torch.manual_seed(0)
    model = SimMIM(
        build_backbone("resnet18", cifar_stem=True),
        image_size=32,
        mask_ratio=0.5,
        mask_patch_size=8,
    )
    mask = model.random_mask(3, torch.device("cpu"))
    assert mask.shape == (3, 1, 32, 32) and mask.mean().item() == pytest.approx(0.5)
    cells = mask[:, 0].unfold(1, 8, 8).unfold(2, 8, 8)  # every 8x8 cell is all 0 or all 1
    assert (cells.amin((-1, -2)) == cells.amax((-1, -2))).all()
    out = model([torch.randn(2, 3, 32, 32)])
    out.loss.backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    panels = model.reconstruct(torch.randn(2, 3, 32, 32))
    assert panels["reconstruction"].shape == (2, 3, 32, 32)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_mask_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(ValueError, match="mask_ratio must be strictly between 0 and 1"):
        small_mae(mask_ratio=ratio)
    with pytest.raises(ValueError, match="mask_ratio must be strictly between 0 and 1"):
        SimMIM(build_backbone("resnet18"), image_size=32, mask_ratio=ratio)


def test_methods_refuse_the_wrong_backbone_family():
    with pytest.raises(ValueError, match="needs a ViT backbone"):
        MAE(build_backbone("resnet18"))
    with pytest.raises(ValueError, match="use method=mae"):
        SimMIM(build_backbone("vit_tiny", image_size=32), image_size=32)
