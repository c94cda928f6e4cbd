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
