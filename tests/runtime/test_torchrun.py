"""``ccup`` under torchrun: 2 gloo ranks on CPU give the single-process results, rank 0 alone writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ..conftest import TINY_VIT

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun's standalone rendezvous on loopback")


def ccup(*args, ranks: int = 1, cwd=None) -> subprocess.CompletedProcess:
    """One process, or ``ranks`` processes under torchrun, each at one thread as torchrun sets it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CCUP_DIST_TIMEOUT": "120"}
    launch = [sys.executable, "-m", "ccup_cli.cli"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
        "-m", "ccup_cli.cli"]
    return subprocess.run([*launch, *map(str, args)], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def flags(tiny_models, tiny_vit_file, tmp_path_factory):
    from ..conftest import FASHION, make_image_folder

    # 7 images per class: 70 images split 35/35, the prompts' batches split unevenly between the ranks
    folder = make_image_folder(tmp_path_factory.mktemp("tr") / "fashion", FASHION, per_class=7)
    # a fresh process knows the tiny architecture by its config file
    return ["--model", tiny_models / f"{TINY_VIT}.json", "--pretrained", tiny_vit_file, "--eval", folder,
            "--templates", "photo", "--no-cache", "--workers", "0", "--batch-size", "16"]


def test_unlearn_on_two_ranks_equals_one_process_byte_for_byte(flags, tiny_models, tmp_path):
    flags = [*flags, "--retain-templates", "simple"]  # 8 classes x 18 templates: uneven prompt batches
    one = ccup("unlearn", *flags, "--forget", "sandal,sneaker", "--out", tmp_path / "one", "--json")
    two = ccup("unlearn", *flags, "--forget", "sandal,sneaker", "--out", tmp_path / "two", "--json", ranks=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr[-2000:]
    assert (tmp_path / "one" / "model.safetensors").read_bytes() == (tmp_path / "two" / "model.safetensors").read_bytes()
    first, second = json.loads(one.stdout), json.loads(two.stdout)  # rank 1 prints nothing
    assert first["metrics"] == second["metrics"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # nothing else was written


def test_eval_on_two_ranks_equals_one_process(flags, tiny_models, tmp_path):
    one = ccup("eval", *flags, "--forget", "sandal", "--json")
    two = ccup("eval", *flags, "--forget", "sandal", "--json", "--out", tmp_path / "r.json", ranks=2)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert json.loads(one.stdout)["metrics"] == json.loads(two.stdout)["metrics"]
    assert json.loads((tmp_path / "r.json").read_text())["metrics"] == json.loads(one.stdout)["metrics"]


def test_bad_input_ends_every_rank_and_the_first_to_fail_exits_2(flags, tiny_models):
    """torchrun itself exits 1 when a rank fails, and stops the others; its summary names the first failure."""
    two = ccup("eval", *flags, "--forget", "sandl", ranks=2)
    assert two.returncode == 1
    root_cause = two.stderr.split("Root Cause (first observed failure):")[1]
    assert "exitcode  : 2 " in root_cause, two.stderr[-2000:]  # bad input, not a crash (1) or a hang
    assert two.stderr.count('"sandl" is not a class') == 2  # each rank says it once, then stops
