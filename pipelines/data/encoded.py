"""Encoded images for decoding on the training device: workers read bytes, nothing more.

With ``data.decode=gpu`` the loader workers hand the training process each
image's JPEG bytes (from image files, or from a ``.beton`` written in ``jpg``
mode, read straight from its memory map through ffcv's ``Reader``); the
training process decodes a whole batch at once on its device
(:mod:`selfsup.pipelines.data.device_decode`).

A batched device decoder takes 8-bit, three-component, Huffman-coded JPEGs
(baseline, extended or progressive): everything else (PNG, CMYK or grayscale
JPEGs, 12-bit or arithmetic-coded ones, raw ``.beton`` images) is decoded
here on the CPU, the PIL way the other loaders use, and travels decoded; the
loader counts them in its log.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup.errors import DataError
from selfsup.pipelines.data.datasets import (
    MAX_IMAGE_PIXELS,
    FolderDataset,
    ImageDataset,
    read_image,
    unwrap_subset,
)
from selfsup.pipelines.data.loaders import SampleKey

# Start-of-frame markers a batched decoder reads: baseline, extended, progressive (Huffman).
DEVICE_FRAMES = (0xC0, 0xC1, 0xC2)
# Every other start-of-frame marker (lossless, hierarchical, arithmetic coding).
OTHER_FRAMES = tuple(m for m in range(0xC3, 0xD0) if m not in (0xC4, 0xC8, 0xCC))
START_OF_SCAN = 0xDA


def device_decodable(data: np.ndarray) -> bool:
    """True for an 8-bit, three-component, Huffman-coded JPEG (read from its frame header)."""
    frame = device_frame(data)
    return frame is not None and frame[0] == 8 and frame[3] == 3


def device_frame(data: np.ndarray) -> tuple[int, int, int, int] | None:
    """(precision, height, width, components) of a JPEG a batched decoder reads, else None."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    position = 2
    while position + 9 < len(data):
        if data[position] != 0xFF:
            return None
        marker = int(data[position + 1])
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in DEVICE_FRAMES:
            height = (int(data[position + 5]) << 8) | int(data[position + 6])
            width = (int(data[position + 7]) << 8) | int(data[position + 8])
            return int(data[position + 4]), height, width, int(data[position + 9])
        if marker in OTHER_FRAMES or marker == START_OF_SCAN:
            return None
        length = (int(data[position + 2]) << 8) | int(data[position + 3])
        position += 2 + length
    return None


@dataclass
class EncodedItem:
    """One image as the workers hand it over: bytes to decode, or pixels already decoded."""

    payload: torch.Tensor  # uint8: encoded bytes (1-D), or a decoded (3, H, W) image
    encoded: bool
    label: int
    index: int
    name: str  # the file (or .beton sample) it came from, for error messages


@dataclass
class EncodedBatch:
    items: list[EncodedItem]
    labels: torch.Tensor
    indices: np.ndarray

    @property
    def fallbacks(self) -> int:
        return sum(not item.encoded for item in self.items)


def collate_encoded(items: list[EncodedItem]) -> EncodedBatch:
    labels = torch.tensor([item.label for item in items], dtype=torch.int64)
    return EncodedBatch(items, labels, np.array([item.index for item in items], dtype=np.int64))


def _item(data: np.ndarray, label: int, index: int, name: str) -> EncodedItem:
    """Bytes for the device, or the image decoded here when the device cannot take it."""
    if device_decodable(data):
        _, height, width, _ = device_frame(data) or (0, 0, 0, 0)
        if height * width > MAX_IMAGE_PIXELS:  # decoded on the device: PIL's limit, checked here
            raise DataError(
                f"{name} claims {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                "any image may have (PIL's MAX_IMAGE_PIXELS): it is damaged or hostile; remove it"
            )
        return EncodedItem(torch.from_numpy(data.copy()), True, label, index, name)
    image = read_image(io.BytesIO(data.tobytes()), name=name)
    return EncodedItem(image, False, label, index, name)


class EncodedFiles(Dataset):
    """Image files (class folders) as encoded bytes."""

    def __init__(self, samples: list[tuple[str, int]], positions: np.ndarray | None = None):
        self.samples = samples
        self.positions = positions  # a subset's file indices; None: every file

    def __len__(self) -> int:
        return len(self.samples) if self.positions is None else len(self.positions)

    def __getitem__(self, key: SampleKey) -> EncodedItem:
        index = key[0]
        position = index if self.positions is None else int(self.positions[index])
        path, label = self.samples[position]
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            raise DataError(
                f"cannot read image {path} ({exc}); delete or replace the file"
            ) from exc
        return _item(data, label, index, path)


class EncodedBeton(Dataset):
    """The ``image`` field of a ``.beton`` as stored bytes, read from the file's memory map."""

    def __init__(self, path: str | Path, positions: np.ndarray | None = None) -> None:
        from selfsup.pipelines.data.beton import IMAGE_FIELD, LABEL_FIELD, open_beton

        reader = open_beton(path)
        names = list(reader.field_names)
        self.path = str(path)
        self.images = reader.metadata[f"f{names.index(IMAGE_FIELD)}"]
        self.labels = reader.metadata[f"f{names.index(LABEL_FIELD)}"]
        table = np.sort(reader.alloc_table, order="ptr")
        self.pointers, self.sizes = table["ptr"], table["size"]
        self.positions = positions
        self._map: np.memmap | None = None  # opened in each worker

    def __len__(self) -> int:
        return len(self.images) if self.positions is None else len(self.positions)

    def jpeg_share(self) -> float:
        """The share of stored images that are JPEG (the rest are raw pixels)."""
        from ffcv.fields.rgb_image import IMAGE_MODES

        return float(np.mean(self.images["mode"] == IMAGE_MODES["jpg"]))

    def __getitem__(self, key: SampleKey) -> EncodedItem:
        index = key[0]
        position = index if self.positions is None else int(self.positions[index])
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        meta = self.images[position]
        pointer = meta["data_ptr"]
        size = self.sizes[np.searchsorted(self.pointers, pointer)]
        data = np.asarray(self._map[pointer : pointer + size])
        label, name = int(self.labels[position]), f"{self.path} sample {position}"
        if meta["mode"] != 0:  # raw pixels (ffcv IMAGE_MODES['raw'])
            height, width = int(meta["height"]), int(meta["width"])
            pixels = data[: height * width * 3].reshape(height, width, 3).copy()
            return EncodedItem(torch.from_numpy(pixels).permute(2, 0, 1), False, label, index, name)
        return _item(data, label, index, name)


def encoded_files(dataset: ImageDataset) -> EncodedFiles | None:
    """The encoded form of a class-folder dataset (or a subset of one); None for arrays."""
    dataset, positions = unwrap_subset(dataset)
    if not isinstance(dataset, FolderDataset):
        return None
    return EncodedFiles(dataset.samples, positions)
