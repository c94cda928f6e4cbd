"""Readers for the MNIST-family idx files, gzipped (as Debian ships them) or plain."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ..errors import DatasetError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# file stems as the original distribution (and torchvision's raw/ folder) names them
_SPLIT_STEMS = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (``.gz`` or plain) into an array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"cannot read idx file {path}: {err}", "re-download or reinstall the dataset") from err
    if len(data) < 4 or data[0:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an idx file", "point --data-root at the dataset's idx files")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(dims))
    body = data[4 + 4 * ndim :]
    if len(body) < count * dtype.itemsize:
        raise DatasetError(f"{path} is truncated", "re-download or reinstall the dataset")
    return np.frombuffer(body, dtype=dtype, count=count).reshape(dims)


def find_idx_file(root: Path, split: str, kind: str) -> Path | None:
    """Locate ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` under root, root/raw, root/*/raw."""
    stem = f"{_SPLIT_STEMS[split]}-{'images-idx3' if kind == 'images' else 'labels-idx1'}-ubyte"
    for folder in (root, root / "raw", *sorted(root.glob("*/raw"))):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_idx_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[n, 28, 28]`` uint8 and labels ``[n]`` int64 of an MNIST-style split."""
    root = Path(root)
    paths = {kind: find_idx_file(root, split, kind) for kind in ("images", "labels")}
    missing = [kind for kind, p in paths.items() if p is None]
    if missing:
        raise DatasetError(
            f"no {split} {' and '.join(missing)} idx files under {root}",
            "point --data-root at the folder holding them (for Fashion-MNIST: apt-get install -y "
            "dataset-fashion-mnist, then --data-root /usr/share/datasets/fashion-mnist) or pass --download",
        )
    images = read_idx(paths["images"])
    labels = read_idx(paths["labels"]).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise DatasetError(f"idx files under {root} disagree: {images.shape} images, {labels.shape} labels",
                           "re-download the dataset")
    return images, labels
