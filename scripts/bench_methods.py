#!/usr/bin/env python3
"""CCUP against the nullspace baseline and fine-tuning, on the embedded model.

    python scripts/bench_methods.py [--data-root /usr/share/datasets/fashion-mnist] [--finetune-steps 300]

Full Fashion-MNIST test split (10,000 images), encoded once to pre-projection features.
For each forget set: CCUP and nullspace at α = 1 (and a sweep for the plot) from those
features; fine-tuning trains on the train split (step budget, batch 128, AdamW, early stop
once a held-out slice of forget images is at ≤ 2 % top-1), then the test split is re-encoded.
Wall time is the unlearning itself (text encoding, solve and fold; or training), caches off,
model already loaded; evaluation is not included for any method.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import write_section  # noqa: E402

from ccup_cli import defaults  # noqa: E402
from ccup_cli.api import unlearn  # noqa: E402
from ccup_cli.backends.features import encode_pre_projection  # noqa: E402
from ccup_cli.backends.fold import site_tensors  # noqa: E402
from ccup_cli.backends.open_clip import load_model  # noqa: E402
from ccup_cli.data.datasets import open_dataset  # noqa: E402
from ccup_cli.methods.finetune import finetune_unlearn  # noqa: E402
from ccup_cli.metrics.compare import metrics_for  # noqa: E402
from ccup_cli.run.sweep import SweepInputs, run_sweep  # noqa: E402
from ccup_cli.text.embeddings import embed_classes, embed_forget_and_retain  # noqa: E402
from ccup_cli.text.templates import load_templates  # noqa: E402

FORGET_SETS = [["sandal"], ["sandal", "sneaker"], ["shirt", "t-shirt"],
               ["trouser", "bag", "dress", "coat", "ankle boot"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()

    test = open_dataset("fashion-mnist", args.data_root, "test")
    train = open_dataset("fashion-mnist", args.data_root, "train")
    loaded = load_model()
    site = loaded.site
    original = site_tensors(loaded.model, site)
    pre, _ = encode_pre_projection(loaded, test)
    forget_t, retain_t = load_templates("openai"), load_templates("simple")
    classifier = embed_classes(loaded.encode_prompts, test.classnames, forget_t).per_class

    rows, sweeps = [], {}
    for forget in FORGET_SETS:
        retain = [c for c in test.classnames if c not in forget]
        before = metrics_for(site, original, pre, classifier, test, forget)
        rows.append(("original", forget, before, 0.0, 0))
        for method in ("ccup", "nullspace"):
            t0 = time.perf_counter()
            result = unlearn(loaded.model, loaded.tokenizer, forget, retain, alpha=1.0, method=method,
                             templates=forget_t, retain_templates=retain_t)
            seconds = time.perf_counter() - t0
            rows.append((method, forget, metrics_for(site, result.folded_tensors, pre, classifier, test, forget),
                         seconds, 0))
        emb = embed_forget_and_retain(loaded.encode_prompts, forget, retain, forget_t, retain_t)
        inputs = SweepInputs(site, original, pre, classifier, test, *emb)
        sweeps["+".join(forget)] = run_sweep(inputs, ["ccup", "nullspace"], [i / 10 for i in range(11)], forget,
                                             {"ccup": {"lambda_retain": defaults.LAMBDA_RETAIN,
                                                       "lambda_identity": defaults.LAMBDA_IDENTITY,
                                                       "sink": defaults.SINK},
                                              "nullspace": {"energy": defaults.ENERGY}})
        if args.finetune_steps > 0:
            tuned = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
            forget_ids = [test.classnames.index(f) for f in forget]
            t0 = time.perf_counter()
            ft = finetune_unlearn(tuned, train, classifier, forget_ids, steps=args.finetune_steps,
                                  target_forget_acc=0.02)
            seconds = time.perf_counter() - t0
            pre_ft, _ = encode_pre_projection(tuned, test)
            m = metrics_for(site, site_tensors(tuned.model, site), pre_ft, classifier, test, forget)
            rows.append((f"finetune ({ft.steps} steps)", forget, m, seconds, ft.images_seen))
            sweeps["+".join(forget)].append({"method": "finetune", "alpha": 1.0, "params": {}, "metrics": m})
        print(f"done: {'+'.join(forget)}", flush=True)

    lines = ["| forget | method | forget top-1 | retain top-1 | retain-only top-1 | forget mean rank | forget P@10 "
             "| forget P@100 | retain mean P@100 | wall time (s) | images used |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, forget, m, seconds, images in rows:
        search = m["retrieval"]
        lines.append(f"| {', '.join(forget)} | {method} | {m['forget']['top1']:.4f} | {m['retain']['top1']:.4f} | "
                     f"{m['retain_only']['top1']:.4f} | {m['forget']['mean_true_class_rank']:.2f} | "
                     f"{search['forget']['p_at_10']:.2f} | {search['forget']['p_at_100']:.2f} | "
                     f"{search['retain']['p_at_100']:.3f} | {seconds:.3f} | {images} |")
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 3.6), dpi=110)
        for ax, (name, sweep_rows) in zip(axes, sweeps.items()):
            for method, marker in (("ccup", "."), ("nullspace", "."), ("finetune", "*")):
                pts = [r for r in sweep_rows if r["method"] == method]
                ax.plot([r["metrics"]["retain"]["top1"] for r in pts], [r["metrics"]["forget"]["top1"] for r in pts],
                        marker=marker, markersize=10 if method == "finetune" else 6,
                        linestyle="-" if method != "finetune" else "none", label=method)
            ax.set_title(f"forget {name}", fontsize=9)
            ax.set_xlabel("retain top-1")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("forget top-1")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(docs / "bench_methods_tradeoff.png")
        plot_note = "\n\n![trade-off curves, α from 0 to 1](bench_methods_tradeoff.png)"
    except ImportError:
        plot_note = ""
    body = "\n".join(lines) + (
        f"\n\nFull Fashion-MNIST test split ({len(test)} images), embedded ccup-tiny-fashion, α = 1 for CCUP "
        f"(defaults: λ_r = {defaults.LAMBDA_RETAIN:g}, λ_i = {defaults.LAMBDA_IDENTITY:g}) and nullspace "
        f"(energy {defaults.ENERGY:g}). Fine-tuning: budget {args.finetune_steps} steps of "
        "128 train images (half forget, half retain), AdamW lr 1e-4, last block + ln_post + proj, early stop at "
        "≤ 2 % forget top-1 on 100 held-out train images; images used counts every image it encoded.") + plot_note
    print(body)
    if not args.no_doc:
        write_section("bench_methods", f"python scripts/bench_methods.py --finetune-steps {args.finetune_steps}",
                      body)


if __name__ == "__main__":
    main()
