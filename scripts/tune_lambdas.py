#!/usr/bin/env python3
"""Choose CCUP's default λ_retain and λ_identity on the embedded model's validation split.

    python scripts/tune_lambdas.py

The 5,000 Fashion-MNIST *train* images that ``train_tiny_clip.py`` held out of training
(same seed) are encoded once to pre-projection features; every (λ_r, λ_i) on the grid is
then a d x d solve plus a matrix product. The test split is never read here.

Score per forget set at α = 1: forget top-1 + drop in retain top-1 + drop in
retain-only top-1 (all as fractions); the defaults minimise the mean score over the sets.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import write_section  # noqa: E402
from train_tiny_clip import split_indices  # noqa: E402

from ccup_cli.backends.features import encode_pre_projection  # noqa: E402
from ccup_cli.backends.fold import fold, site_tensors  # noqa: E402
from ccup_cli.backends.open_clip import load_model  # noqa: E402
from ccup_cli.data.catalog import preset_classnames  # noqa: E402
from ccup_cli.data.dataset import array_dataset  # noqa: E402
from ccup_cli.data.idx import load_idx_split  # noqa: E402
from ccup_cli.methods.projector import ccup_map  # noqa: E402
from ccup_cli.metrics.compare import metrics_for  # noqa: E402
from ccup_cli.text.embeddings import embed_classes  # noqa: E402
from ccup_cli.text.templates import load_templates  # noqa: E402

FORGET_SETS = [["sandal", "sneaker"], ["shirt", "t-shirt"], ["sandal"], ["trouser", "bag", "dress", "coat", "ankle boot"]]
LAMBDA_RETAIN = [0.1, 0.3, 1.0, 3.0, 10.0]
LAMBDA_IDENTITY = [1e-5, 1e-4, 0.001, 0.01, 0.1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()

    images, labels = load_idx_split(args.data_root, "train")
    _, val_idx = split_indices(len(images), args.seed)
    classnames = preset_classnames("fashion-mnist")
    ds = array_dataset("fashion-mnist-val", "validation", classnames, images[val_idx], labels[val_idx], "val")
    loaded = load_model()
    site = loaded.site
    pre, _ = encode_pre_projection(loaded, ds)
    original = site_tensors(loaded.model, site)
    forget_t, retain_t = load_templates("openai"), load_templates("simple")
    classifier = embed_classes(loaded.encode_prompts, classnames, forget_t).per_class
    before = {tuple(f): metrics_for(site, original, pre, classifier, ds, f) for f in FORGET_SETS}

    rows = []
    for lr, li in itertools.product(LAMBDA_RETAIN, LAMBDA_IDENTITY):
        scores, detail = [], []
        for forget in FORGET_SETS:
            retain = [c for c in classnames if c not in forget]
            fe = embed_classes(loaded.encode_prompts, forget, forget_t)
            re = embed_classes(loaded.encode_prompts, retain, retain_t)
            W = ccup_map(fe.per_template, re.per_template, lr, li)
            m = metrics_for(site, fold(site, original, W), pre, classifier, ds, forget)
            b = before[tuple(forget)]
            drop_r = b["retain"]["top1"] - m["retain"]["top1"]
            drop_ro = b["retain_only"]["top1"] - m["retain_only"]["top1"]
            scores.append(m["forget"]["top1"] + max(drop_r, 0) + max(drop_ro, 0))
            detail.append(f"{m['forget']['top1']:.3f}/{-drop_r:+.3f}/{-drop_ro:+.3f}")
        rows.append((float(np.mean(scores)), lr, li, detail))
    rows.sort()
    lines = ["| λ_retain | λ_identity | mean score | " + " | ".join("+".join(f) for f in FORGET_SETS) + " |",
             "|---|---|---|" + "---|" * len(FORGET_SETS)]
    lines += [f"| {lr} | {li} | {score:.4f} | " + " | ".join(detail) + " |" for score, lr, li, detail in rows]
    body = "\n".join(lines) + (
        f"\n\nBest on the grid: λ_retain = {rows[0][1]}, λ_identity = {rows[0][2]}. Cells: forget top-1 / Δ retain "
        f"top-1 / Δ retain-only top-1 at α = 1 on the {len(ds)}-image validation split (held out of training; the "
        "test split is never read). Score = forget top-1 + retain drops, averaged over the forget sets.")
    print(body)
    if not args.no_doc:
        write_section("tune_lambdas", "python scripts/tune_lambdas.py", body)


if __name__ == "__main__":
    main()
