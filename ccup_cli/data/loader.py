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

Each worker runs torch with one intra-op thread (``one_thread_per_worker``): a worker decodes
one image at a time, and torch's default (one thread per core in every worker) oversubscribes
the cores the main process needs for the model. While workers decode, the main process runs
the model with the cores they leave (``threads_beside_workers``: cores minus workers, at least
one) and gets its own thread count back when the images are done; with no workers it keeps its
threads. Otherwise its intra-op threads spin on the cores the workers decode on (issue 31, on 2 cores: 2 workers beside 2
model threads made the encode phase 1.28x of in-process decoding, and 1.60x with one thread;
docs/benchmarks.md, section hardening, for the runs of this policy).
Workers stack their chunks straight into shared memory; the main process joins chunks into
model batches with one copy, into page-locked memory when the model is on CUDA. How an image
becomes a tensor is the decoder's business (``decode.py``; the default is open_clip's own
transform).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .dataset import EvalDataset
from .decode import DEFAULT_DECODER, make_decoder

MAX_DEFAULT_WORKERS = 16
MIN_IMAGES_FOR_WORKERS = 512  # below this, starting workers costs more than it saves
WORKER_CHUNK = 32  # images a worker decodes per task: small, so workers share even a few batches
PREFETCH_CHUNKS = 4  # chunks each worker decodes ahead


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(n_images: int) -> int:
    """The ``workers`` used when none is given: one per core, at most 16; 0 for small datasets or one core.

    With one intra-op thread per worker, a worker is one core's worth of decoding. The model's
    threads in the main process share the cores with them: while the model is the slower side
    the workers' prefetch queues fill and they sleep, and while decoding is the slower side the
    model waits anyway. On 2 cores, 2 workers beat 1 on decode-bound folders
    (``scripts/bench_workers.py``, docs/benchmarks.md).
    """
    if n_images < MIN_IMAGES_FOR_WORKERS:
        return 0
    cores = available_cores()
    return 0 if cores < 2 else min(cores, MAX_DEFAULT_WORKERS)


def one_thread_per_worker(worker_id: int) -> None:
    """``worker_init_fn``: one intra-op torch thread in each worker process (the main process keeps its own)."""
    torch.set_num_threads(1)


def main_threads_beside(workers: int, cores: int | None = None) -> int:
    """Intra-op threads for the main process while ``workers`` decode: the cores they leave, at least 1."""
    return max(1, (available_cores() if cores is None else cores) - workers)


@contextlib.contextmanager
def threads_beside_workers(workers: int):
    """Run the body with ``main_threads_beside(workers)`` intra-op threads (never more than now), then
    restore the thread count. No workers: the body keeps the model's threads."""
    before = torch.get_num_threads()
    wanted = min(before, main_threads_beside(workers)) if workers > 0 else before
    if wanted == before:
        yield before
        return
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(before)


class DecodedImages(Dataset):
    """``decoder.item(dataset, i)`` for ``i`` in ``indices`` (all images by default)."""

    def __init__(self, dataset: EvalDataset, decoder, indices: Sequence[int] | None = None):
        self.dataset = dataset
        self.decoder = decoder
        self.indices = range(len(dataset)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        return self.decoder.item(self.dataset, int(self.indices[k]))


def _worker_context(images: DecodedImages):
    """(multiprocessing context, usable): fork where available, else the default if it pickles."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork"), True
    try:
        pickle.dumps(images)
    except Exception:  # noqa: BLE001 - lambdas, local functions, open handles: not picklable
        return None, False
    return None, True


def image_batches(dataset: EvalDataset, transform: Callable, batch_size: int = 256, decode: str = DEFAULT_DECODER,
                  device: str | torch.device = "cpu", pin_memory: bool = False, decoder=None,
                  **loader_options) -> Iterator[torch.Tensor]:
    """Batches ``[b, 3, H, W]`` of transformed images, in order, ``batch_size`` at a time.

    ``transform`` is the model's open_clip transform; ``decode`` names the decoder
    (``decode.DECODERS``; ``pil`` applies ``transform`` itself), or ``decoder`` passes one made by
    ``decode.make_decoder``. Batches are CPU tensors (``pin_memory``: page-locked) except under
    the ``gpu`` decoder, which returns them on ``device``. ``loader_options`` go to
    ``image_loader``: ``workers`` (None picks ``default_workers``; 0 decodes in this process) and
    ``indices`` (a rank's shard, in the order given). Workers decode chunks of ``WORKER_CHUNK``
    images, joined here into model batches, so the model sees the same batches whatever
    ``workers`` is. While workers run, torch in this process has ``main_threads_beside(workers)``
    intra-op threads (``threads_beside_workers``), restored when the generator finishes or closes.
    """
    decoder = decoder or make_decoder(decode, transform)
    loader = image_loader(dataset, transform, batch_size, decoder=decoder, **loader_options)
    pending: list = []
    count = 0
    with threads_beside_workers(loader.num_workers):  # the model runs between the yields, beside the workers
        for chunk in loader:
            items = decoder.unpack(chunk)
            while count + len(items) >= batch_size:
                take = batch_size - count
                yield decoder.join([*pending, items[:take]], device, pin_memory)
                items, pending, count = items[take:], [], 0
            if len(items):
                pending.append(items)
                count += len(items)
        if count:
            yield decoder.join(pending, device, pin_memory)


def image_loader(
    dataset: EvalDataset,
    transform: Callable,
    batch_size: int = 256,
    workers: int | None = None,
    indices: Sequence[int] | None = None,
    decoder=None,
) -> DataLoader:
    """The DataLoader behind ``image_batches``: chunks of ``min(batch_size, WORKER_CHUNK)`` images.

    ``decoder`` defaults to the ``pil`` decoder of ``transform``; workers start with one torch thread.
    """
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, not {workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    decoder = decoder or make_decoder(DEFAULT_DECODER, transform)
    images = DecodedImages(dataset, decoder, indices)
    n_workers = default_workers(len(images)) if workers is None else workers
    context = None
    if n_workers > 0:
        context, usable = _worker_context(images)
        if not usable:
            n_workers = 0
    return DataLoader(images, batch_size=min(batch_size, WORKER_CHUNK), shuffle=False, num_workers=n_workers,
                      collate_fn=decoder.collate, multiprocessing_context=context,
                      worker_init_fn=one_thread_per_worker if n_workers > 0 else None,
                      prefetch_factor=PREFETCH_CHUNKS if n_workers > 0 else None)
