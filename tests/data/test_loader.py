"""Parallel decoding: the DataLoader path gives the same features for every ``workers``, in order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccup_cli.backends.features import encode_pre_projection, feature_cache_key
from ccup_cli.backends.open_clip import load_model
from ccup_cli.data import loader
from ccup_cli.data.datasets import open_dataset

from ..conftest import TINY_VIT


@pytest.fixture(scope="module")
def tiny(tiny_vit_file):
    return load_model(TINY_VIT, str(tiny_vit_file))


@pytest.fixture(scope="module")
def folder_ds(fashion_folder):
    return open_dataset(str(fashion_folder))


def encode(tiny, ds, **kw):
    feats, hit = encode_pre_projection(tiny, ds, batch_size=4, **kw)
    assert not hit
    return feats


def test_workers_0_and_2_give_identical_features_in_order(tiny, folder_ds):
    in_process = encode(tiny, folder_ds, workers=0)
    two_workers = encode(tiny, folder_ds, workers=2)
    assert in_process.shape == (len(folder_ds), 64)
    assert torch.equal(in_process, two_workers)
    # in dataset order: image 5 encoded alone gives row 5
    alone = encode(tiny, folder_ds, workers=0, indices=[5])
    assert torch.equal(alone[0], in_process[5])
    assert not torch.equal(in_process[5], in_process[6])


def test_in_memory_dataset_closures_survive_workers(tiny):
    mini = open_dataset("fashion-mnist-mini").subset(np.arange(0, 2000, 100))
    assert torch.equal(encode(tiny, mini, workers=0), encode(tiny, mini, workers=2))


def test_indices_encode_a_shard_in_the_given_order(tiny, folder_ds):
    full = encode(tiny, folder_ds, workers=0)
    shard = encode(tiny, folder_ds, workers=2, indices=range(10, 17))
    assert torch.equal(shard, full[10:17])
    reordered = encode(tiny, folder_ds, workers=0, indices=[3, 1])
    assert torch.equal(reordered, full[[3, 1]])
    assert encode(tiny, folder_ds, workers=0, indices=range(4, 4)).shape == (0, 64)


def test_progress_counts_every_image(tiny, folder_ds):
    seen = []
    encode(tiny, folder_ds, workers=2, progress=seen.append)
    assert sum(seen) == len(folder_ds)
    assert seen[0] == 4


def test_model_batches_do_not_depend_on_workers(folder_ds, tiny, monkeypatch):
    sizes = {w: [len(b) for b in loader.image_batches(folder_ds, tiny.preprocess, batch_size=70, workers=w)]
             for w in (0, 2)}
    assert sizes[0] == sizes[2] == [30]
    sizes = [len(b) for b in loader.image_batches(folder_ds, tiny.preprocess, batch_size=7, workers=2)]
    assert sizes == [7, 7, 7, 7, 2]
    monkeypatch.setattr(loader, "WORKER_CHUNK", 8)
    chunks = [len(c) for c in loader.image_loader(folder_ds, tiny.preprocess, batch_size=70, workers=0)]
    assert chunks == [8, 8, 8, 6]
    batches = list(loader.image_batches(folder_ds, tiny.preprocess, batch_size=20, workers=2))
    assert [len(b) for b in batches] == [20, 10]
    whole = next(iter(loader.image_batches(folder_ds, tiny.preprocess, batch_size=30, workers=0)))
    assert torch.equal(torch.cat(batches), whole)


def test_shard_and_precision_change_the_cache_key(tiny, folder_ds):
    site = tiny.site
    base = feature_cache_key("abc", site, folder_ds, tiny.preprocess)
    assert feature_cache_key("abc", site, folder_ds, tiny.preprocess, precision="fp32", indices=None) == base
    keys = {base, feature_cache_key("abc", site, folder_ds, tiny.preprocess, precision="bf16"),
            feature_cache_key("abc", site, folder_ds, tiny.preprocess, indices=range(0, 15)),
            feature_cache_key("abc", site, folder_ds, tiny.preprocess, indices=range(15, 30))}
    assert len(keys) == 4


def test_default_workers(monkeypatch):
    monkeypatch.setattr(loader, "available_cores", lambda: 2)
    assert loader.default_workers(3000) == 2
    assert loader.default_workers(10) == 0
    monkeypatch.setattr(loader, "available_cores", lambda: 4)
    assert loader.default_workers(3000) == 4
    monkeypatch.setattr(loader, "available_cores", lambda: 64)
    assert loader.default_workers(3000) == loader.MAX_DEFAULT_WORKERS
    monkeypatch.setattr(loader, "available_cores", lambda: 1)
    assert loader.default_workers(3000) == 0


def test_without_fork_an_unpicklable_dataset_loads_in_process(monkeypatch, folder_ds, tiny):
    """Where only spawn exists, the lambdas of a dataset cannot reach workers: fall back to 0."""
    monkeypatch.setattr(loader.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    batches = loader.image_loader(folder_ds, tiny.preprocess, batch_size=4, workers=2)
    assert batches.num_workers == 0
    monkeypatch.setattr(loader.multiprocessing, "get_all_start_methods", lambda: ["fork", "spawn"])
    assert loader.image_loader(folder_ds, tiny.preprocess, batch_size=4, workers=2).num_workers == 2


def test_negative_workers_refused(folder_ds, tiny):
    with pytest.raises(ValueError, match="workers"):
        loader.image_loader(folder_ds, tiny.preprocess, workers=-1)


@pytest.mark.parametrize("cores, workers, beside", [(2, 2, 1), (4, 2, 2), (8, 2, 6), (1, 3, 1)])
def test_the_main_process_runs_the_cores_the_workers_leave(cores, workers, beside):
    assert loader.main_threads_beside(workers, cores) == beside


def test_threads_beside_workers_while_they_decode_then_restored(tiny, folder_ds, monkeypatch):
    """While workers decode, the model gets cores - workers threads; after (or on an early stop), its own again."""
    before = torch.get_num_threads()
    monkeypatch.setattr(loader, "available_cores", lambda: 3)
    torch.set_num_threads(3)
    try:
        seen = [torch.get_num_threads() for _ in loader.image_batches(folder_ds, tiny.preprocess, 4, workers=2)]
        assert seen and set(seen) == {1} and torch.get_num_threads() == 3
        batches = loader.image_batches(folder_ds, tiny.preprocess, 4, workers=1)
        next(batches)
        assert torch.get_num_threads() == 2
        batches.close()  # a consumer that stops early
        assert torch.get_num_threads() == 3
        seen = [torch.get_num_threads() for _ in loader.image_batches(folder_ds, tiny.preprocess, 4, workers=0)]
        assert set(seen) == {3}  # no workers: the model keeps its threads
        torch.set_num_threads(1)
        assert {torch.get_num_threads() for _ in loader.image_batches(folder_ds, tiny.preprocess, 4, workers=2)} \
            == {1}  # never raised above what the caller set
    finally:
        torch.set_num_threads(before)
