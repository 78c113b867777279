"""JPEG batches decoded in the training process (data.decode=gpu), run here on the CPU."""

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.errors import ConfigError, DataError
from selfsup.pipelines.config import load_config
from selfsup.pipelines.data.datasets import ArrayDataset, read_image_folder
from selfsup.pipelines.data.device_decode import (
    DeviceDecodeTrainLoader,
    _torchvision_decoder,
    jpeg_decoder,
)
from selfsup.pipelines.data.encoded import EncodedBeton, encoded_files
from selfsup.pipelines.data.loaders import TorchvisionTrainLoader, ViewSpec
from selfsup.pipelines.data.memory_loader import MemoryTrainLoader
from selfsup.pipelines.data.train_loader import build_train_loader

N = 24
CPU = torch.device("cpu")
STEP = 10  # red levels of the images: 0, 10, 20, ... (JPEG keeps flat colours within +-2)


def spec(rank: int = 0, world: int = 1, views: int = 2, batch: int = 6) -> ViewSpec:
    return ViewSpec(image_size=16, crop_scale=(0.1, 1.0), num_views=views, batch_size=batch,
                    num_workers=0, seed=11, rank=rank, world_size=world)  # fmt: skip


def write_flat_images(root: Path, odd: dict[int, str] | None = None) -> Path:
    """N flat-coloured images of different sizes in 3 class folders; red = 10 x index.

    ``odd`` saves image i in another form: ``png``, ``cmyk`` or ``gray`` (a
    gray image is written with red = green = blue).
    """
    rng = np.random.default_rng(0)
    for i in range(N):
        height, width = (int(v) for v in rng.integers(18, 60, 2))
        folder = root / "train" / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        kind = (odd or {}).get(i, "rgb")
        colour = (STEP * i,) * 3 if kind == "gray" else (STEP * i, 200, 40)
        picture = Image.new("RGB", (width, height), colour)
        if kind == "png":
            picture.save(folder / f"{i:03d}.png")
            continue
        picture = {"cmyk": picture.convert("CMYK"), "gray": picture.convert("L")}.get(kind, picture)
        picture.save(folder / f"{i:03d}.jpg", quality=95)
    return root / "train"


def ids(view: torch.Tensor) -> list[int]:
    """Which image each crop is of (its red level)."""
    return [round(v / STEP) for v in view[:, 0].float().mean((1, 2)).tolist()]


def assert_flat(view: torch.Tensor) -> None:
    """Every crop holds its own image's colour only: inside it, no padding, no neighbour."""
    spread = view.amax((2, 3)).int() - view.amin((2, 3)).int()
    assert int(spread.max()) <= 4


def test_batches_keep_the_contract_and_the_torchvision_loaders_order(tmp_path):
    dataset = read_image_folder(write_flat_images(tmp_path))
    ours = DeviceDecodeTrainLoader(encoded_files(dataset), spec(views=3), CPU)
    reference = TorchvisionTrainLoader(dataset, spec(views=3))
    assert ours.steps_per_epoch == reference.steps_per_epoch == N // 6
    for a, b in zip(ours.epoch_batches(1), reference.epoch_batches(1), strict=True):
        assert len(a.views) == 3
        assert all(v.shape == (6, 3, 16, 16) and v.dtype == torch.uint8 for v in a.views)
        assert ids(a.views[0]) == ids(b.views[0]) and torch.equal(a.labels, b.labels)
        for view in a.views:
            assert_flat(view)
            assert ids(view) == ids(a.views[0])


def test_two_ranks_get_disjoint_shards_and_resume_replays_crops_bit_for_bit(data_root, tmp_path):
    flat = encoded_files(read_image_folder(write_flat_images(tmp_path)))
    shards = [
        [i for b in DeviceDecodeTrainLoader(flat, spec(rank=r, world=2), CPU).epoch_batches(0)
         for i in ids(b.views[0])]
        for r in (0, 1)
    ]  # fmt: skip
    assert sorted(shards[0] + shards[1]) == list(range(N)) and len(shards[0]) == N // 2
    photos = encoded_files(read_image_folder(data_root / "imagenette" / "train"))
    whole = list(DeviceDecodeTrainLoader(photos, spec(batch=2), CPU).epoch_batches(3))
    resumed = list(DeviceDecodeTrainLoader(photos, spec(batch=2), CPU).epoch_batches(3, 4))
    assert len(resumed) == len(whole) - 4 == 2
    for a, b in zip(whole[4:], resumed, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views, strict=True))


def test_png_cmyk_and_gray_images_are_decoded_by_the_workers_and_counted(tmp_path, caplog):
    odd = {2: "png", 5: "cmyk", 7: "gray"}
    dataset = read_image_folder(write_flat_images(tmp_path, odd))
    loader = DeviceDecodeTrainLoader(encoded_files(dataset), spec(), CPU)
    with caplog.at_level(logging.INFO):
        batches = list(loader.epoch_batches(0))
    seen = sorted(i for b in batches for i in ids(b.views[0]))
    assert seen == list(range(N))
    for batch in batches:
        assert_flat(batch.views[1])
    assert "decode: 3 of 24 images of epoch 0 were not 8-bit RGB JPEGs" in caplog.text


def test_a_broken_jpeg_is_named_in_one_line(tmp_path):
    root = write_flat_images(tmp_path)
    broken = root / "class1" / "004.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # a valid header, then nothing
    loader = DeviceDecodeTrainLoader(encoded_files(read_image_folder(root)), spec(), CPU)
    with pytest.raises(DataError, match=rf"cannot decode image {broken} \(.*\); delete or replace"):
        list(loader.epoch_batches(0))


def test_decode_gpu_needs_jpegs_and_auto_stays_in_the_workers_on_the_cpu(data_root):
    pickles = [f"data.path={data_root / 'cifar-10-batches-py'}", "data.num_workers=0",
               "data.batch_size=8"]  # fmt: skip
    with pytest.raises(ConfigError, match="data.decode=gpu needs JPEG images; the cifar10"):
        build_train_loader(load_config(None, [*pickles, "data.decode=gpu"]))
    folder = [f"data.path={data_root / 'imagenette'}", "data.dataset=imagefolder",
              "data.num_workers=0", "data.batch_size=4"]  # fmt: skip
    assert isinstance(build_train_loader(load_config(None, folder)), TorchvisionTrainLoader)
    on_device = build_train_loader(load_config(None, [*folder, "data.decode=gpu"]))
    assert isinstance(on_device, DeviceDecodeTrainLoader)


@pytest.mark.ffcv
def test_a_jpg_beton_is_read_as_bytes_in_the_same_order_and_a_raw_one_bit_exactly(tmp_path):
    if os.environ.get("SELFSUP_REQUIRE_FFCV") != "1":
        pytest.importorskip("ffcv")
    from selfsup.pipelines.data.beton import WriteOptions, write_beton

    flat = np.empty((N, 24, 24, 3), np.uint8)
    flat[..., 0] = STEP * np.arange(N, dtype=np.uint8)[:, None, None]
    flat[..., 1:] = 90
    dataset = ArrayDataset(flat, np.arange(N) % 3, ["a", "b", "c"])
    for mode in ("jpg", "raw"):
        write_beton(dataset, tmp_path / f"{mode}.beton", WriteOptions(mode=mode, workers=1))
    jpg = DeviceDecodeTrainLoader(EncodedBeton(tmp_path / "jpg.beton"), spec(), CPU)
    reference = TorchvisionTrainLoader(dataset, spec())
    for a, b in zip(jpg.epoch_batches(0), reference.epoch_batches(0), strict=True):
        assert ids(a.views[0]) == ids(b.views[0]) and torch.equal(a.labels, b.labels)
        assert_flat(a.views[0])
    raw = DeviceDecodeTrainLoader(EncodedBeton(tmp_path / "raw.beton"), spec(), CPU)
    memory = MemoryTrainLoader(dataset, spec(), CPU)  # the same pixels, the same crops
    for a, b in zip(raw.epoch_batches(2), memory.epoch_batches(2), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views, strict=True))


def test_torchcodec_and_torchvisions_decoders_give_the_same_pixels(data_root):
    torchcodec = pytest.importorskip("torchcodec.decoders")
    files = sorted((data_root / "imagenette" / "train").rglob("*.JPEG"))
    data = [torch.from_numpy(np.fromfile(path, dtype=np.uint8)) for path in files]
    assert jpeg_decoder().__code__ is not _torchvision_decoder().__code__  # TorchCodec's
    ours = jpeg_decoder()(data, CPU)
    fallback = _torchvision_decoder()(data, CPU)
    direct = torchcodec.decode_jpeg(data, mode="RGB")
    for a, b, c in zip(ours, fallback, direct, strict=True):
        assert a.shape[0] == 3 and torch.equal(a, b) and torch.equal(a, c)


def test_a_jpeg_claiming_60000_by_60000_pixels_is_refused_before_any_decode():
    import io

    import numpy as np
    from PIL import Image

    from selfsup.errors import DataError
    from selfsup.pipelines.data.datasets import read_image
    from selfsup.pipelines.data.encoded import _item, device_frame

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, format="JPEG")
    data = np.frombuffer(buffer.getvalue(), dtype=np.uint8).copy()
    assert device_frame(data) == (8, 16, 16, 3)
    start = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xC0)
    data[start + 5 : start + 9] = [0xEA, 0x60, 0xEA, 0x60]  # height, width = 60000
    assert device_frame(data) == (8, 60000, 60000, 3)
    with pytest.raises(DataError, match="big.jpg claims 60000x60000 pixels, more than the"):
        _item(data, 0, 0, "big.jpg")  # the device path: refused from the header alone
    with pytest.raises(DataError, match="cannot read image big.jpg .*DecompressionBomb"):
        read_image(io.BytesIO(data.tobytes()), name="big.jpg")  # the CPU path
