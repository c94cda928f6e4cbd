#!/usr/bin/env python3
"""Write ccup's embedded evaluation subset, ``fashion-mnist-mini``.

    python scripts/make_mini_subset.py --data-root /usr/share/datasets/fashion-mnist

200 images per class from the Fashion-MNIST *test* split, chosen by a seeded shuffle,
stored as one compressed uint8 ``.npz`` (images ``[2000, 28, 28]``, labels ``[2000]``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccup_cli.data.datasets import MINI_FILE  # noqa: E402
from ccup_cli.data.idx import load_idx_split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images, labels = load_idx_split(args.data_root, "test")
    rng = np.random.default_rng(args.seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: args.per_class] for c in range(10)]))
    MINI_FILE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(MINI_FILE, images=images[keep], labels=labels[keep].astype(np.uint8),
                        test_indices=keep.astype(np.int32))
    print(f"wrote {MINI_FILE} ({MINI_FILE.stat().st_size} bytes, {len(keep)} images)")


if __name__ == "__main__":
    main()
