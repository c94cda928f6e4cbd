"""2 ranks with gloo on CPU, started as torchrun would (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ccup_cli.backends.features import encode_pre_projection
from ccup_cli.backends.open_clip import load_model
from ccup_cli.data.datasets import open_dataset
from ccup_cli.errors import CcupError
from ccup_cli.runtime import distributed as D
from ccup_cli.text.encode import encode_prompts

from ..conftest import TINY_VIT

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(mode: str, tiny_models, tiny_vit_file, out: Path, world_size: int = 2):
    """Start ``world_size`` ranks of tests/runtime/dist_worker.py; (exit codes, stderr per rank, seconds)."""
    port = free_port()
    procs = []
    t0 = time.perf_counter()
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CCUP_DIST_TIMEOUT="20",
                   PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.runtime.dist_worker", mode, str(tiny_models),
                                       str(tiny_vit_file), str(out)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    codes, errors = [], []
    try:
        for p in procs:
            _, err = p.communicate(timeout=LAUNCH_TIMEOUT_S)
            codes.append(p.returncode)
            errors.append(err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return codes, errors, time.perf_counter() - t0


def test_shard_indices_cover_everything_in_order():
    assert [D.shard_indices(7, r, 2) for r in range(2)] == [range(0, 4), range(4, 7)]
    assert [D.shard_indices(5, r, 4) for r in range(4)] == [range(0, 2), range(2, 4), range(4, 5), range(5, 5)]
    for n in range(0, 12):
        for world_size in range(1, 5):
            joined = [i for r in range(world_size) for i in D.shard_indices(n, r, world_size)]
            assert joined == list(range(n))
    with pytest.raises(ValueError):
        D.shard_indices(3, 2, 2)


def test_single_process_world(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert D.world() == D.World(0, 1, 0) and D.is_main()
    assert D.init_if_needed("cpu") == D.World(0, 1, 0)
    rows = torch.arange(6.0).reshape(3, 2)
    assert D.gather_rows(rows, 3) is rows
    assert D.on_main(lambda: 42, "x") == 42
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert D.world() == D.World(1, 2, 1) and not D.is_main()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(CcupError, match="RANK=2 does not fit WORLD_SIZE=2"):
        D.world()


def test_two_ranks_gather_exactly_the_single_process_features(tiny_models, tiny_vit_file, tmp_path):
    codes, errors, _ = launch("ok", tiny_models, tiny_vit_file, tmp_path)
    assert codes == [0, 0], errors
    from safetensors.torch import load_file

    gathered = load_file(str(tmp_path / "gathered.safetensors"))
    loaded = load_model(TINY_VIT, str(tiny_vit_file))
    ds = open_dataset("fashion-mnist-mini").subset(np.arange(0, 700, 100))
    prompts = [f"a photo of a {c}" for c in ds.classnames] + ["a long prompt about a shirt with stripes"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks run with OMP_NUM_THREADS=1, as under torchrun
    try:
        single, _ = encode_pre_projection(loaded, ds, workers=0)
        single_text = encode_prompts(loaded.model, loaded.tokenizer, prompts, batch_size=3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(gathered["images"], single)  # exact, and in dataset order
    assert torch.equal(gathered["again"], single)
    assert torch.equal(gathered["text"], single_text)  # batches of the single-process plan, shared out
    # rank 0 encoded and stored; the second pass was served from the cache on both ranks
    assert (tmp_path / "hits.txt").read_text() == "False True"
    assert (tmp_path / "rank0.txt").read_text() == "written 7 False"
    assert (tmp_path / "rank1.txt").read_text() == "None 7 True"  # rank 1 wrote nothing, got no text rows


@pytest.mark.parametrize("mode, failing", [("fail", 1), ("fail-main", 0), ("die", 1)])
def test_a_failing_rank_ends_every_rank_non_zero(mode, failing, tiny_models, tiny_vit_file, tmp_path):
    codes, errors, seconds = launch(mode, tiny_models, tiny_vit_file, tmp_path)
    assert all(code != 0 for code in codes), (codes, errors)
    assert not (tmp_path / "written.txt").exists()
    if mode != "die":
        other = 1 - failing
        assert f"rank {failing} failed during" in errors[other], errors[other]
    assert seconds < LAUNCH_TIMEOUT_S
