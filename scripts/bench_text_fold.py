#!/usr/bin/env python3
"""The text-side fold beside the image-side fold, on the embedded model (which has both sites).

    python scripts/bench_text_fold.py [--data-root /usr/share/datasets/fashion-mnist] [--repeats 1]

For each forget set, ccup at α = 1 with default settings is folded once into ``visual.proj``
(``fold: image``) and once into ``text_projection`` (``fold: text``), and both are measured on the
full Fashion-MNIST test split from one pass per side:

- the report's metrics (zero-shot top-1, text search precision), which the two sides share up to
  where the normalisation sits: the raw logit ``tᵀ W f`` is the same;
- what a user can still reach: image-to-image search (each forget image as a query over the other
  images, precision@10 of its own class) and a text index built with the *original* text tower
  (the original class embeddings searched against the patched image features).

Then the cost of one pass with a text fold: ``ccup unlearn --fold text --eval`` against
``ccup eval`` on the same data, caches off, alternately in one process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import write_section  # noqa: E402

FORGET_SETS = [["sandal", "sneaker"], ["shirt", "t-shirt"], ["bag"], ["trouser", "dress"]]


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def image_to_image_p10(features, labels, classes) -> float:
    """Mean precision@10 of each image of ``classes`` used as a query over all other images (cosine)."""
    import torch
    import torch.nn.functional as F

    feats = F.normalize(features.float(), dim=-1)
    labels_t = torch.as_tensor(labels)
    queries = torch.nonzero(torch.isin(labels_t, torch.as_tensor(classes))).flatten()
    hits = []
    for chunk in queries.split(512):
        sims = feats[chunk] @ feats.T
        sims[torch.arange(len(chunk)), chunk] = -2.0  # not itself
        top = sims.topk(10, dim=1).indices
        hits.append(labels_t[top].eq(labels_t[chunk][:, None]).double().mean(dim=1))
    return float(torch.cat(hits).mean())


def side_by_side(data_root: str) -> tuple[list[str], list[dict]]:
    from ccup_cli.data.datasets import open_dataset
    from ccup_cli.methods.apply import apply_unlearning
    from ccup_cli.methods.table import get_method, method_params
    from ccup_cli.metrics.compare import features_at, metrics_for
    from ccup_cli.metrics.zero_shot import retrieval_metrics
    from ccup_cli.run.options import RunOptions
    from ccup_cli.run.provenance import PhaseTimer
    from ccup_cli.run.session import evaluation_inputs, open_session
    from ccup_cli.spec.schema import build_spec
    from ccup_cli.text.embeddings import default_retain
    from ccup_cli.text.templates import load_templates

    dataset = open_dataset("fashion-mnist", data_root, "test")
    defaults = build_spec({}, {"forget": "bag"})
    templates, retain_templates = load_templates(defaults.templates), load_templates(defaults.retain_templates)
    params = method_params(get_method("ccup"), defaults)
    rows = []
    for side in ("image", "text"):
        session = open_session(None, None, RunOptions(device="cpu"), "cpu", PhaseTimer(), fold=side)
        inputs = evaluation_inputs(session, dataset, templates, None, None)
        site, pre, classifier, prompts = session.site, inputs.pre_projection_features, inputs.classifier, \
            inputs.prompts_before_fold
        feats_before, class_before = features_at(site, session.original, pre, classifier, prompts)
        for forget in FORGET_SETS:
            retain = default_retain(forget, dataset.classnames)
            forget_emb, retain_emb = session.embed_sides(forget, retain, templates, retain_templates)
            result = apply_unlearning(session.loaded.model, site, session.original, forget_emb, retain_emb, "ccup",
                                      1.0, params, context=session.method_context())
            before = metrics_for(site, session.original, pre, classifier, dataset, forget, (), prompts)
            after = metrics_for(site, result.folded_tensors, pre, classifier, dataset, forget, (), prompts)
            feats_after, _ = features_at(site, result.folded_tensors, pre, classifier, prompts)
            ids = [dataset.classnames.index(c) for c in forget]
            old_index = retrieval_metrics(feats_after, class_before, dataset.labels, dataset.classnames, forget)
            rows.append({
                "side": side, "site": site.path, "forget": forget,
                "forget_top1": (before["forget"]["top1"], after["forget"]["top1"]),
                "retain_only_top1": (before["retain_only"]["top1"], after["retain_only"]["top1"]),
                "retain_top1": (before["retain"]["top1"], after["retain"]["top1"]),
                "search_p10": (before["retrieval"]["forget"]["p_at_10"], after["retrieval"]["forget"]["p_at_10"]),
                "retain_p100": (before["retrieval"]["retain"]["p_at_100"], after["retrieval"]["retain"]["p_at_100"]),
                "image_p10": (image_to_image_p10(feats_before, dataset.labels, ids),
                              image_to_image_p10(feats_after, dataset.labels, ids)),
                "original_index_p10": old_index["forget"]["p_at_10"],
            })
            print(rows[-1], flush=True)
    lines = ["| forget | fold | forget top-1 | retain-only top-1 | retain top-1 | forget text search P@10 "
             "| retain search P@100 | forget image-to-image P@10 | forget P@10, text index of the original tower |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{pct(r[k][0])} → {pct(r[k][1])}" for k in ("forget_top1", "retain_only_top1", "retain_top1",
                                                               "search_p10", "retain_p100", "image_p10")]
        lines.append(f"| {', '.join(r['forget'])} | {r['side']} (`{r['site']}`) | " + " | ".join(cells)
                     + f" | {pct(r['original_index_p10'])} |")
    return lines, rows


def cost(data_root: str, repeats: int) -> tuple[list[str], dict]:
    from ccup_cli.jobs.eval import EvalRequest, run_eval
    from ccup_cli.jobs.unlearn import run_unlearn
    from ccup_cli.run.options import RunOptions
    from ccup_cli.spec.schema import build_spec

    options = RunOptions(device="cpu", use_cache=False)
    times: dict[str, list[float]] = {"eval": [], "image": [], "text": []}
    for _ in range(repeats):
        for what in ("eval", "image", "text"):
            start = time.perf_counter()
            if what == "eval":
                run_eval(EvalRequest(eval="fashion-mnist", data_root=data_root), options)
            else:
                run_unlearn(build_spec({}, {"forget": "sandal,sneaker", "eval": "fashion-mnist",
                                            "data_root": data_root, "fold": what}), options)
            times[what].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [f"One pass with either fold, caches off, medians of {repeats} alternating run(s) in one process "
             "(full test split; noisy on 2 shared cores):", "",
             "| run | seconds | vs `ccup eval` |", "|---|---|---|",
             f"| `ccup eval` | {med['eval']:.1f} | 1.00× |",
             f"| `ccup unlearn --eval` (fold: image) | {med['image']:.1f} | {med['image'] / med['eval']:.2f}× |",
             f"| `ccup unlearn --eval --fold text` | {med['text']:.1f} | {med['text'] / med['eval']:.2f}× |"]
    return lines, med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    table, _ = side_by_side(args.data_root)
    timing, _ = cost(args.data_root, args.repeats)
    body = "\n".join([
        "The embedded model (`ccup-tiny-fashion`, which has both sites), full Fashion-MNIST test split, ccup at "
        "α = 1 with default settings; before → after, %:", "", *table, "",
        "Both folds give the same raw logit `tᵀ W f`; the figures differ only where each side normalises "
        "(the image feature `W f` on the image side, each prompt's `Wᵀ t` on the text side). What differs by "
        "construction is what stays reachable: with the text fold the image features are the original's, so "
        "image-to-image search does not move, and the original tower's text index still finds the class.", "",
        *timing])
    print(body)
    if not args.no_write:
        write_section("bench_text_fold", f"python scripts/bench_text_fold.py --repeats {args.repeats}", body)


if __name__ == "__main__":
    main()
