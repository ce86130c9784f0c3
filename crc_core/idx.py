"""The IDX file format in which MNIST and Fashion-MNIST are distributed: names, reading, writing.

An IDX file is a big-endian header followed by raw unsigned bytes:

* images: ``magic = 2051``, count ``N``, rows ``28``, columns ``28`` (four ``uint32``), then
  ``N · 784`` pixel bytes, row-major;
* labels: ``magic = 2049``, count ``N`` (two ``uint32``), then ``N`` label bytes.

Each data set comes as four such files, named in :data:`FILES`. This module knows the format
only; checksums, locations and fetching are :mod:`crc_core.data`'s.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_labels(d / "labels", np.array([7, 2], dtype=np.uint8))
    >>> parse_labels(bytearray((d / "labels").read_bytes()), d / "labels").tolist()
    [7, 2]
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, Tuple

import torch

Tensor = torch.Tensor

__all__ = ["FILES", "N_PIXELS", "IMAGES_MAGIC", "LABELS_MAGIC",
           "parse_images", "parse_labels", "write_images", "write_labels"]

#: IDX file names for each split: ``split -> (images, labels)``.
FILES: Dict[str, Tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Pixels per image, 28 × 28.
N_PIXELS = 28 * 28
#: Magic number of an image file (unsigned bytes, three dimensions).
IMAGES_MAGIC = 2051
#: Magic number of a label file (unsigned bytes, one dimension).
LABELS_MAGIC = 2049


def parse_images(buf: bytearray, path: Path) -> Tensor:
    """The pixels of an IDX image file's bytes, without copying them.

    Args:
        buf: the whole file's bytes (kept alive by, and shared with, the result).
        path: the file's path, named in the error message.

    Returns:
        uint8 tensor of shape (N, 784): image ``i`` is row ``i``, 28 rows of 28 pixels.

    Raises:
        ValueError: the header is not that of N 28×28 images or the length does not match it.
    """
    magic, n, rows, cols = struct.unpack_from(">IIII", buf, 0)
    if magic != IMAGES_MAGIC or rows * cols != N_PIXELS or len(buf) != 16 + n * N_PIXELS:
        raise ValueError(f"{path} is not a 28x28 IDX image file")
    return torch.frombuffer(buf, dtype=torch.uint8, offset=16).view(n, N_PIXELS)


def parse_labels(buf: bytearray, path: Path) -> Tensor:
    """The labels of an IDX label file's bytes, without copying them.

    Args:
        buf: the whole file's bytes (kept alive by, and shared with, the result).
        path: the file's path, named in the error message.

    Returns:
        uint8 tensor of shape (N,).

    Raises:
        ValueError: the header is not that of a label file or the length does not match it.
    """
    magic, n = struct.unpack_from(">II", buf, 0)
    if magic != LABELS_MAGIC or len(buf) != 8 + n:
        raise ValueError(f"{path} is not an IDX label file")
    return torch.frombuffer(buf, dtype=torch.uint8, offset=8)


def write_images(path: Path, pixels) -> None:
    """Write an IDX image file.

    Args:
        path: file to create (overwritten if present).
        pixels: uint8 numpy array of shape (N, 784), one image per row.
    """
    with open(path, "wb") as f:
        f.write(struct.pack(">IIII", IMAGES_MAGIC, pixels.shape[0], 28, 28))
        f.write(pixels.tobytes())


def write_labels(path: Path, labels) -> None:
    """Write an IDX label file.

    Args:
        path: file to create (overwritten if present).
        labels: uint8 numpy array of shape (N,).
    """
    with open(path, "wb") as f:
        f.write(struct.pack(">II", LABELS_MAGIC, labels.shape[0]))
        f.write(labels.tobytes())
