"""One rank of the 2-rank gloo runs in test_distributed.py (started with torchrun's variables).

    python -m tests.runtime.dist_worker MODE CONFIG_DIR WEIGHTS OUT_DIR

Exit codes mimic the CLI boundary: a CcupError (RankFailed included) exits with its code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np


def failing(mode: str, out: Path) -> int:
    """No model: a rank raises inside a phase, rank 0 fails on its own, or rank 1 vanishes."""
    import torch

    from ccup_cli.runtime import distributed as D

    here = D.init_if_needed("cpu")
    if mode == "die" and here.rank == 1:
        os._exit(3)  # a rank that ends without a word
    with D.phase("encoding features"):
        if mode == "fail" and here.rank == 1:
            raise ValueError("rank 1 cannot read image 5")
        local = torch.ones(len(D.shard_indices(7, here.rank, here.world_size)), 2)
    rows = D.gather_rows(local, 7)

    def write():
        if mode == "fail-main":
            raise RuntimeError("disk full")
        (out / "written.txt").write_text(str(rows.shape))

    D.on_main(write, "writing outputs")
    return 0


def main(mode: str, config_dir: str, weights: str, out_dir: str) -> int:
    if mode != "ok":
        return failing(mode, Path(out_dir))
    import open_clip
    from safetensors.torch import save_file

    from ccup_cli.backends.features import encode_pre_projection, feature_cache_key
    from ccup_cli.backends.open_clip import load_model
    from ccup_cli.data.datasets import open_dataset
    from ccup_cli.runtime import distributed as D
    from ccup_cli.text.encode import encode_prompts_sharded

    here = D.init_if_needed("cpu")
    out = Path(out_dir)
    open_clip.add_model_config(Path(config_dir))
    loaded = load_model("ccup-test-vit", weights)
    site = loaded.site
    ds = open_dataset("fashion-mnist-mini").subset(np.arange(0, 700, 100))  # 7 images: shards of 4 and 3

    def encode_shard(shard: range):
        feats, _ = encode_pre_projection(loaded, ds, batch_size=2,
                                         workers=2 if here.rank == 0 else 0, indices=shard)
        return feats

    key = feature_cache_key(loaded.cache_id, site, ds, loaded.preprocess)
    images, hit = D.cached_gather("features", key, len(ds), encode_shard)
    again, hit_again = D.cached_gather("features", key, len(ds), encode_shard, all_ranks=True)
    prompts = [f"a photo of a {c}" for c in ds.classnames] + ["a long prompt about a shirt with stripes"]
    text = encode_prompts_sharded(loaded.model, loaded.tokenizer, prompts, batch_size=3)

    def write():
        save_file({"images": images, "again": again, "text": text}, str(out / "gathered.safetensors"))
        (out / "hits.txt").write_text(f"{hit} {hit_again}")
        return "written"

    result = D.on_main(write, "writing outputs")
    (out / f"rank{here.rank}.txt").write_text(f"{result} {again.shape[0]} {text is None}")
    return 0


if __name__ == "__main__":
    from ccup_cli.errors import CcupError

    try:
        code = main(*sys.argv[1:])
    except CcupError as err:
        print(f"error: {err.one_line()}", file=sys.stderr)
        code = err.exit_code
    sys.exit(code)
