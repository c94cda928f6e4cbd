#!/usr/bin/env python3
"""Forgetting on ``ccup-lit-fashion`` (issue 27): the full Fashion-MNIST test split, α = 1, defaults.

    python scripts/bench_lit.py --data-root /usr/share/datasets/fashion-mnist --out runs/bench-lit

For each forget set: ``ccup unlearn`` (the job, default settings), then checks on the written folder
(reloads with plain ``VisionTextDualEncoderModel.from_pretrained`` offline; which tensors differ from
the assembled original), then ``ccup audit --aliases configs/aliases/ccup-lit-fashion.yaml`` without
probes: the held-out names the original recognises (class top-1 ≥ 0.5 in the 10-way contest) and how
many of them are gone after (≤ 0.05). Prints a markdown section and writes ``<out>/bench_lit.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = ["sandal,sneaker", "shirt,t-shirt", "bag", "trouser", "pullover,coat", "ankle boot", "dress",
        "sandal,sneaker,ankle boot"]
ALIASES = ROOT / "configs" / "aliases" / "ccup-lit-fashion.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-lit"))
    parser.add_argument("--sets", default=";".join(SETS), help="forget sets, ';'-separated")
    parser.add_argument("--eval-limit", type=int, default=0)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"

    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, VisionTextDualEncoderModel

    from ccup_cli.backends.lit import assemble
    from ccup_cli.jobs.audit import AuditRequest, run_audit
    from ccup_cli.jobs.unlearn import run_unlearn
    from ccup_cli.run.options import RunOptions
    from ccup_cli.spec.schema import build_spec

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    original = load_file(str(assemble("ccup-lit-fashion") / "model.safetensors"))
    rows = []
    for forget in args.sets.split(";"):
        folder = out / forget.replace(",", "+").replace(" ", "-")
        fields = {"model": "ccup-lit-fashion", "forget": forget, "eval": "fashion-mnist", "data_root": args.data_root,
                  "alpha": 1.0}
        if args.eval_limit:
            fields["eval_limit"] = args.eval_limit
        report = run_unlearn(build_spec({}, fields), RunOptions(device="cpu", out=folder, overwrite=True))
        b, a = report["metrics"]["before"], report["metrics"]["after"]
        patched = load_file(str(folder / "model.safetensors"))
        differ = sorted(k for k in original if not torch.equal(original[k], patched[k]))
        VisionTextDualEncoderModel.from_pretrained(str(folder))  # plain transformers, offline
        AutoTokenizer.from_pretrained(str(folder))
        audit = run_audit(AuditRequest(patched=str(folder), aliases=str(ALIASES), probe_shots=[],
                                       data_root=args.data_root, eval_limit=args.eval_limit or None),
                          RunOptions(device="cpu"))
        v = audit["verdict"]
        mine = [r for r in audit["alias_rows"] if r["class"] in audit["forget"]]
        rows.append({
            "forget": forget, "overall_top1_before": b["overall"]["top1"],
            "forget_top1_before": b["forget"]["top1"], "forget_top1_after": a["forget"]["top1"],
            "retain_only_before": b["retain_only"]["top1"], "retain_only_after": a["retain_only"]["top1"],
            "tensors_changed": differ, "aliases_recognised_before": v["aliases_recognised_before"],
            "aliases_gone_after": v["aliases_gone_after"], "aliases_still_recognised": v["aliases_still_recognised"],
            "alias_rows": [{"class": r["class"], "alias": r["alias"], "before": r["before"]["top1"],
                            "after": r["after"]["top1"]} for r in mine],
            "worst_alias_after_among_recognised": max((r["after"]["top1"] for r in mine
                                                       if r["before"]["top1"] >= 0.5), default=None),
        })
        print(json.dumps(rows[-1]), flush=True)
    (out / "bench_lit.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| forget | forget top-1 before → after | retain-only top-1 before → after (drop, pt) | tensors changed "
          "| held-out names recognised before (≥ 0.5) | gone after (≤ 0.05) | worst of those after |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        drop = 100 * (r["retain_only_before"] - r["retain_only_after"])
        worst = r["worst_alias_after_among_recognised"]
        print(f"| {r['forget']} | {r['forget_top1_before']:.4f} → {r['forget_top1_after']:.4f} | "
              f"{r['retain_only_before']:.4f} → {r['retain_only_after']:.4f} ({drop:+.2f}) | "
              f"{', '.join(r['tensors_changed'])} | {r['aliases_recognised_before']} | {r['aliases_gone_after']} | "
              f"{'—' if worst is None else f'{worst:.4f}'} |")


if __name__ == "__main__":
    main()
