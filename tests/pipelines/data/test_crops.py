import numpy as np
import torch

from selfsup.pipelines.data.crops import (
    DRAWS_PER_VIEW,
    cut_crops,
    pad_to_batch,
    resized_crop_boxes,
    sample_uniforms,
    view_boxes,
)


def test_a_samples_draws_depend_on_its_index_only():
    alone = sample_uniforms(7, np.array([5]), 4)
    in_batch = sample_uniforms(7, np.array([9, 5, 1]), 4)
    assert np.array_equal(alone[0], in_batch[1])
    assert not np.array_equal(in_batch[0], in_batch[1])
    assert not np.array_equal(sample_uniforms(8, np.array([5]), 4), alone)  # another epoch
    many = sample_uniforms(1, np.arange(20_000), 2)
    assert many.min() >= 0 and many.max() < 1 and abs(many.mean() - 0.5) < 0.01


def test_boxes_lie_inside_images_of_any_size_and_keep_the_area_share():
    rng = np.random.default_rng(0)
    heights, widths = rng.integers(5, 400, 5000), rng.integers(5, 400, 5000)
    boxes = view_boxes(3, np.arange(5000), heights, widths, 2, (0.2, 0.6))
    left, top, w, h = boxes.T
    heights, widths = np.tile(heights, 2), np.tile(widths, 2)
    assert (left >= 0).all() and (top >= 0).all() and (w > 0).all() and (h > 0).all()
    assert (left + w <= widths).all() and (top + h <= heights).all()
    share = w * h / (heights * widths)
    # Rounding to whole pixels moves small images' shares a little.
    assert np.median(share) > 0.2 and np.quantile(share[heights * widths > 10_000], 0.99) < 0.62


def test_no_fitting_try_falls_back_to_the_centred_clamped_ratio_crop():
    never_fits = np.ones((1, DRAWS_PER_VIEW))  # largest area at the widest ratio: too wide
    box = resized_crop_boxes(never_fits, np.array([10]), np.array([100]), (1.0, 1.0))
    assert box.tolist() == [[43, 0, 13, 10]]  # 10 * 4/3 wide, centred: (100 - 13) // 2


def test_a_full_size_box_is_an_exact_copy_and_a_larger_one_averages():
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    same = cut_crops(images, np.array([[0, 0, 16, 16]] * 4), 16)
    assert torch.equal(same, images)
    halved = cut_crops(images, np.array([[0, 0, 16, 16]] * 4), 8)
    mean = images.float().reshape(4, 3, 8, 2, 8, 2).mean((3, 5))
    assert (halved.float() - mean).abs().max() <= 0.5


def test_crops_of_a_padded_batch_never_read_the_padding_or_another_image():
    images = [torch.full((3, h, w), 10 + 40 * i, dtype=torch.uint8)
              for i, (h, w) in enumerate([(20, 50), (64, 17), (33, 33)])]  # fmt: skip
    batch = pad_to_batch(images)
    assert batch.shape == (3, 3, 65, 51)
    heights, widths = np.array([20, 64, 33]), np.array([50, 17, 33])
    boxes = view_boxes(0, np.arange(3), heights, widths, 4, (0.05, 1.0))
    crops = cut_crops(batch, boxes, 24)
    for k, crop in enumerate(crops):
        assert crop.unique().tolist() == [10 + 40 * (k % 3)]
