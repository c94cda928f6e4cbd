"""Decoding and transforming evaluation images in worker processes.

Images go through a ``torch.utils.data.DataLoader``: with ``workers`` > 0, worker
processes open and transform images while the main process runs the model. Batches come
back in dataset order (the DataLoader keeps order), so features are identical for every
number of workers.

Worker processes are started with ``fork`` where the platform has it (Linux): the
dataset's ``load_image`` closures (lambdas over in-memory arrays or file lists) are then
inherited, never pickled. Where only ``spawn`` or ``forkserver`` exist (Windows, macOS by
torch's default), the dataset must pickle; if it does not, loading falls back to the main
process (``workers`` 0) rather than failing.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .dataset import EvalDataset

MAX_DEFAULT_WORKERS = 8
MIN_IMAGES_FOR_WORKERS = 512  # below this, starting workers costs more than it saves
WORKER_CHUNK = 32  # images a worker decodes per task: small, so workers share even a few batches


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(n_images: int) -> int:
    """The ``workers`` used when none is given: one per core but one, at most 8; 0 for small datasets.

    The main process keeps a core for the model's forward pass (torch's own threads); on
    2 cores that leaves 1 worker. In one run of ``scripts/bench_workers.py`` (1,500 JPEGs,
    embedded model) 1 worker gave 1.85x the images/s of in-process decoding and 2 workers
    1.06x; on the shared machine later runs ranged from 0.9x to 1.1x (docs/benchmarks.md).
    """
    if n_images < MIN_IMAGES_FOR_WORKERS:
        return 0
    cores = available_cores()
    return 0 if cores < 2 else min(cores - 1, MAX_DEFAULT_WORKERS)


class TransformedImages(Dataset):
    """``transform(dataset.load_image(i))`` for ``i`` in ``indices`` (all images by default)."""

    def __init__(self, dataset: EvalDataset, transform: Callable, indices: Sequence[int] | None = None):
        self.dataset = dataset
        self.transform = transform
        self.indices = range(len(dataset)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> torch.Tensor:
        return self.transform(self.dataset.load_image(int(self.indices[k])))


def _worker_context(images: TransformedImages):
    """(multiprocessing context, usable): fork where available, else the default if it pickles."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork"), True
    try:
        pickle.dumps(images)
    except Exception:  # noqa: BLE001 - lambdas, local functions, open handles: not picklable
        return None, False
    return None, True


def image_batches(dataset: EvalDataset, transform: Callable, batch_size: int = 256,
                  **loader_options) -> Iterator[torch.Tensor]:
    """Batches ``[b, 3, H, W]`` of transformed images, in order, ``batch_size`` at a time.

    ``loader_options`` go to ``image_loader``: ``workers`` (None picks ``default_workers``; 0
    decodes in this process), ``indices`` (a rank's shard, in the order given) and
    ``pin_memory``. Workers decode chunks of
    ``WORKER_CHUNK`` images, joined here into model batches, so the model sees the same
    batches whatever ``workers`` is.
    """
    loader = image_loader(dataset, transform, batch_size, **loader_options)
    pending: list[torch.Tensor] = []
    count = 0
    for chunk in loader:
        pending.append(chunk)
        count += len(chunk)
        if count >= batch_size:
            joined = torch.cat(pending) if len(pending) > 1 else pending[0]
            yield joined[:batch_size]
            pending = [joined[batch_size:]] if len(joined) > batch_size else []
            count = len(joined) - batch_size
    if count:
        yield torch.cat(pending) if len(pending) > 1 else pending[0]


def image_loader(
    dataset: EvalDataset,
    transform: Callable,
    batch_size: int = 256,
    workers: int | None = None,
    indices: Sequence[int] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """The DataLoader behind ``image_batches``: chunks of ``min(batch_size, WORKER_CHUNK)`` images."""
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, not {workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    images = TransformedImages(dataset, transform, indices)
    n_workers = default_workers(len(images)) if workers is None else workers
    context = None
    if n_workers > 0:
        context, usable = _worker_context(images)
        if not usable:
            n_workers = 0
    return DataLoader(images, batch_size=min(batch_size, WORKER_CHUNK), shuffle=False, num_workers=n_workers,
                      pin_memory=pin_memory, multiprocessing_context=context,
                      prefetch_factor=4 if n_workers > 0 else None)
