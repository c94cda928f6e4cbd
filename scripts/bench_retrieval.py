#!/usr/bin/env python3
"""What the retrieval metrics (every depth: P@k, R-precision, bottom-100, AUC) add to zero_shot_metrics,
which runs once per α in a sweep.

    python scripts/bench_retrieval.py

Random features and class embeddings (the cost does not depend on the values): median time of
``zero_shot_metrics`` (which now includes retrieval) and of the retrieval part alone, on the
logits zero_shot_metrics already has.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import write_section  # noqa: E402

from ccup_cli.metrics.zero_shot import LOGIT_SCALE, _retrieval_from_scores, zero_shot_metrics  # noqa: E402

SHAPES = [(10_000, 10, 64), (10_000, 100, 512), (50_000, 1000, 512)]  # (images, classes, d)


def median_seconds(repeats: int, fn, *args) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    lines = ["| images × classes (d) | zero_shot_metrics | of which retrieval | share |", "|---|---|---|---|"]
    for n, n_classes, d in SHAPES:
        g = torch.Generator().manual_seed(0)
        feats = torch.randn(n, d, generator=g)
        classes = F.normalize(torch.randn(n_classes, d, generator=g), dim=-1)
        labels = torch.randint(0, n_classes, (n,), generator=g)
        names = [f"class{i}" for i in range(n_classes)]
        logits = LOGIT_SCALE * F.normalize(feats, dim=-1) @ classes.T
        total = median_seconds(args.repeats, zero_shot_metrics, feats, classes, labels.numpy(), names, ["class0", "class1"])
        part = median_seconds(args.repeats, _retrieval_from_scores, logits, labels, names, [0, 1])
        lines.append(f"| {n:,} × {n_classes:,} ({d}) | {1000 * total:.0f} ms | {1000 * part:.0f} ms | "
                     f"{100 * part / total:.0f} % |")
    body = "\n".join(lines) + (
        f"\n\nMedian of {args.repeats}. Retrieval works on the [classes, images] logits the classifier already "
        "computed, so it adds no pass over the images. Since issue 21 it ranks every image for every class (one "
        "sort per class, in chunks of 64 classes) to give AUC, R-precision and the bottom of the ranking, not only "
        "the top 100: that sort is most of its cost at 1,000 classes.")
    print(body)
    if not args.no_doc:
        write_section("bench_retrieval", "python scripts/bench_retrieval.py", body)


if __name__ == "__main__":
    main()
