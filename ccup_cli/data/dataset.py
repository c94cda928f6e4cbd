"""One evaluation split in memory: ``EvalDataset`` and the two ways to make one (arrays, image files).

The registry of named datasets (``datasets.py``) and the domain layouts (``domain_data.py``)
both build on this module, and it imports neither.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
LIMIT_SEED = 0


@dataclass
class EvalDataset:
    """Images and labels of one evaluation split; images load lazily as PIL images."""

    name: str
    split: str
    classnames: list[str]
    labels: np.ndarray  # [n] int64
    item_ids: list[str]  # one stable id per image (a path, or file#index)
    load_image: Callable[[int], Image.Image] = field(repr=False)
    content_id: str = ""  # identifies the bytes behind item_ids (file hashes, sizes)
    domains: np.ndarray | None = None  # [n] int64 index into domain_names; None: a single-domain dataset
    domain_names: list[str] | None = None  # e.g. ["photo", "sketch", "silhouette"]
    image_file: Callable[[int], Path] | None = field(default=None, repr=False)  # image i's file, if it is one

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.labels, minlength=len(self.classnames))
        return {c: int(n) for c, n in zip(self.classnames, found)}

    def file_list_sha256(self) -> str:
        h = hashlib.sha256()
        for item, label in zip(self.item_ids, self.labels.tolist()):
            h.update(f"{item}\t{label}\n".encode())
        return h.hexdigest()

    def identity(self) -> str:
        """What the feature cache keys a dataset on: name, split, file list and content."""
        return hashlib.sha256(f"{self.name}|{self.split}|{self.file_list_sha256()}|{self.content_id}".encode()).hexdigest()

    def subset(self, indices: np.ndarray) -> EvalDataset:
        indices = np.asarray(indices, dtype=np.int64)
        parent, parent_file = self.load_image, self.image_file
        return EvalDataset(self.name, self.split, self.classnames, self.labels[indices],
                           [self.item_ids[i] for i in indices], lambda i: parent(int(indices[i])), self.content_id,
                           None if self.domains is None else self.domains[indices], self.domain_names,
                           None if parent_file is None else (lambda i: parent_file(int(indices[i]))))

    def limit_per_class(self, limit: int, seed: int = LIMIT_SEED) -> EvalDataset:
        """At most ``limit`` images per class (per class and domain in a domain dataset), chosen by a
        seeded shuffle, in original order."""
        rng = np.random.default_rng(seed)
        keep = []
        cells = [None] if self.domains is None else range(len(self.domain_names))
        for c in range(len(self.classnames)):
            for d in cells:
                idx = np.flatnonzero((self.labels == c) & (True if d is None else self.domains == d))
                keep.append(np.sort(rng.permutation(idx)[:limit]))
        return self.subset(np.sort(np.concatenate(keep)) if keep else np.array([], dtype=np.int64))


def array_dataset(name, split, classnames, images: np.ndarray, labels: np.ndarray, source: str) -> EvalDataset:
    content = hashlib.sha256(images.tobytes()).hexdigest()[:16] + hashlib.sha256(labels.tobytes()).hexdigest()[:16]
    return EvalDataset(name, split, classnames, labels.astype(np.int64),
                       [f"{source}#{i}" for i in range(len(labels))],
                       lambda i: Image.fromarray(images[i]), content)


def files_dataset(path: Path, name: str, classnames: list[str], files: list[Path], labels: list[int],
                  **extra) -> EvalDataset:
    """An ``EvalDataset`` of image files under ``path`` (keyed on their sizes and times); ``extra``: domains."""
    if not files:
        raise DatasetError(f"dataset folder {path} holds no images", "put .png or .jpg files in its class folders")
    sizes = hashlib.sha256("".join(f"{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files).encode()).hexdigest()

    def load(i: int) -> Image.Image:
        with Image.open(files[i]) as img:
            img.load()
            return img

    return EvalDataset(name, "folder", classnames, np.asarray(labels, dtype=np.int64),
                       [str(f.relative_to(path)) for f in files], load, sizes, image_file=files.__getitem__, **extra)
