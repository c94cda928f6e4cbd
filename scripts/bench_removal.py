#!/usr/bin/env python3
"""What each fold and setting removes, on one forgotten class: the README's one table.

    python scripts/bench_removal.py [--data-root /usr/share/datasets/fashion-mnist] [--forget sandal]

The embedded model (which has both fold sites), full Fashion-MNIST test split, ccup at default
lambdas. Rows: the image fold with the default sink, with the paper's zero sink, and at the
strength `--alpha auto --max-forget-acc 0.05 --max-forget-auc-gap 0.15` would take (the smallest
alpha on a 0.01 grid whose forget top-1 is at most 5 % and whose search AUC is within 0.15 of
chance, read on this same split, as a user's CI job reads its own labelled images); and the text
fold with the default sink. Columns: zero-shot top-1 of the class; its own text search at the top
(P@10) and at the bottom (share of the 100 ranked last, and AUC: 0.50 is chance); image-to-image
search (each image of the class as a query, P@10 of its class); and a text index built with the
original text tower searched over the new image features (P@10). Probes are not run here:
`ccup audit` measures them (the commands under "bench_removal: the audits").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_text_fold import image_to_image_p10  # noqa: E402
from benchdoc import write_section  # noqa: E402


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def measure(data_root: str, forget: list[str]) -> list[dict]:
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
    ids = [dataset.classnames.index(c) for c in forget]
    rows = []
    for side in ("image", "text"):
        session = open_session(None, None, RunOptions(device="cpu"), "cpu", PhaseTimer(), fold=side)
        spec = build_spec({}, {"forget": ",".join(forget)})
        templates, retain_templates = load_templates(spec.templates), load_templates(spec.retain_templates)
        inputs = evaluation_inputs(session, dataset, templates, None, None)
        site, pre, classifier, prompts = session.site, inputs.pre_projection_features, inputs.classifier, \
            inputs.prompts_before_fold
        feats_before, class_before = features_at(site, session.original, pre, classifier, prompts)
        retain = default_retain(forget, dataset.classnames)
        forget_emb, retain_emb = session.embed_sides(forget, retain, templates, retain_templates)
        sinks = ["retain-mean-orthogonal", "zero", "auto"] if side == "image" else ["retain-mean-orthogonal"]
        before = metrics_for(site, session.original, pre, classifier, dataset, forget, (), prompts)
        for sink in sinks:
            params = method_params(get_method("ccup"), build_spec({}, {"forget": ",".join(forget),
                                                                      "sink": "retain-mean-orthogonal"
                                                                      if sink == "auto" else sink}))

            def at(alpha, session=session, site=site, pre=pre, classifier=classifier, prompts=prompts,
                   forget_emb=forget_emb, retain_emb=retain_emb, params=params):
                result = apply_unlearning(session.loaded.model, site, session.original, forget_emb, retain_emb,
                                          "ccup", alpha, params, context=session.method_context())
                return result, metrics_for(site, result.folded_tensors, pre, classifier, dataset, forget, (), prompts)

            alpha = 1.0
            if sink == "auto":
                alpha = None
                for step in range(0, 101):
                    _, m = at(step / 100)
                    aucs = [m["retrieval"]["per_class"][c]["auc"] for c in forget]
                    if m["forget"]["top1"] <= 0.05 and all(abs(a - 0.5) <= 0.15 for a in aucs):
                        alpha = step / 100
                        break
                if alpha is None:
                    rows.append({"side": side, "sink": sink, "alpha": None})
                    continue
            result, after = at(alpha)
            feats_after, _ = features_at(site, result.folded_tensors, pre, classifier, prompts)
            old_index = retrieval_metrics(feats_after, class_before, dataset.labels, dataset.classnames, forget)
            per = [after["retrieval"]["per_class"][c] for c in forget]
            rows.append({
                "side": side, "sink": sink, "alpha": alpha,
                "top1": (before["forget"]["top1"], after["forget"]["top1"]),
                "retain_only": (before["retain_only"]["top1"], after["retain_only"]["top1"]),
                "p10": (before["retrieval"]["forget"]["p_at_10"], after["retrieval"]["forget"]["p_at_10"]),
                "bottom_100": max(m["bottom_100"] for m in per), "auc": (min(m["auc"] for m in per),
                                                                          max(m["auc"] for m in per)),
                "image_p10": (image_to_image_p10(feats_before, dataset.labels, ids),
                              image_to_image_p10(feats_after, dataset.labels, ids)),
                "old_index_p10": old_index["forget"]["p_at_10"],
            })
            print(rows[-1], flush=True)
    return rows


def table(rows: list[dict], forget: list[str]) -> str:
    lines = [f"Forget `{','.join(forget)}`; before → after in %, AUC as a probability (0.50 = chance):", "",
             "| fold / setting | α | zero-shot top-1 | retain-only top-1 | search top: P@10 | search bottom: "
             "bottom-100, AUC | image-to-image P@10 | old text index P@10 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"{r['side']} / {'alpha auto, AUC gap 0.15' if r['sink'] == 'auto' else 'sink ' + r['sink']}"
        if r["alpha"] is None:
            lines.append(f"| {name} | none holds | | | | | | |")
            continue
        auc = r["auc"]
        auc_text = f"{auc[0]:.2f}" if auc[0] == auc[1] else f"{auc[0]:.2f}–{auc[1]:.2f}"
        lines.append(f"| {name} | {r['alpha']:g} | {pct(r['top1'][0])} → {pct(r['top1'][1])} | "
                     f"{pct(r['retain_only'][0])} → {pct(r['retain_only'][1])} | "
                     f"{pct(r['p10'][0])} → {pct(r['p10'][1])} | {pct(r['bottom_100'])}, {auc_text} | "
                     f"{pct(r['image_p10'][0])} → {pct(r['image_p10'][1])} | {pct(r['old_index_p10'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--forget", default="sandal")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    forget = args.forget.split(",")
    body = (__doc__.split("\n\n", 2)[2].strip() + "\n\n" + table(measure(args.data_root, forget), forget))
    print(body)
    if not args.no_write:
        write_section("bench_removal", f"python scripts/bench_removal.py --forget {args.forget}", body)


if __name__ == "__main__":
    main()
