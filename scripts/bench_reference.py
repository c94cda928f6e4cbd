#!/usr/bin/env python3
"""Three-way tables: original, each unlearning method, and a reference model that never learnt the classes.

    python scripts/bench_reference.py --reference /work/models/ccup-tiny-fashion-without-sandal-sneaker

Unlearns FORGET from the model with every method (CCUP with each sink, nullspace, fine-tuning),
then runs ``ccup audit --reference`` on each output on the full test split, with the held-out
names as aliases (the synonyms ``scripts/train_tiny_clip.py`` holds out of training, which
neither model ever saw) and 4- and 16-shot probes. Writes the section ``bench_reference`` of
docs/benchmarks.md (``--no-doc``: print only) and, with ``--json``, every audit's ``reference``
section. The reference is trained by ``scripts/train_tiny_clip.py --without FORGET``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import write_section  # noqa: E402

from ccup_cli.audit.reference import (  # noqa: E402
    AS_IF_NEVER_LEARNT,
    LESS_FORGOTTEN,
    MORE_FORGOTTEN,
    TOLERANCES,
    UNLIKE,
    verdict_groups,
)
from ccup_cli.audit.reference_page import _gap, _shares, _value  # noqa: E402
from ccup_cli.errors import CcupError  # noqa: E402
from ccup_cli.jobs.audit import AuditRequest, run_audit  # noqa: E402
from ccup_cli.jobs.unlearn import run_unlearn  # noqa: E402
from ccup_cli.run.options import RunOptions  # noqa: E402
from ccup_cli.spec.schema import build_spec  # noqa: E402

METHODS = ["ccup:zero", "ccup:retain-mean", "ccup:retain-mean-orthogonal", "ccup:text-chance", "ccup:neutral",
           "ccup:neutral-orthogonal", "nullspace", "finetune"]
# the held-out synonyms of ccup-tiny-fashion (never in a training caption of it or of its references)
HELD_OUT_FILE = ROOT / "configs" / "aliases" / "fashion-mnist-held-out.yaml"
MARK = {AS_IF_NEVER_LEARNT: "=", MORE_FORGOTTEN: "↓", LESS_FORGOTTEN: "↑", UNLIKE: "≠", None: "?"}


def method_spec(method: str, forget: list[str], args) -> dict:
    name, _, sink = method.partition(":")
    spec = {"forget": forget, "alpha": 1.0, "eval": args.eval, "data_root": args.data_root, "method": name}
    if args.model:
        spec["model"] = args.model
    if sink:
        spec["sink"] = sink
    if name == "finetune":
        spec["finetune_steps"] = args.finetune_steps
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--reference", required=True)
    parser.add_argument("--model", default=None, help="the original model (default: the embedded one)")
    parser.add_argument("--forget", default="sandal,sneaker")
    parser.add_argument("--eval", default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--eval-limit", type=int, default=None, help="images per class (smoke runs only)")
    parser.add_argument("--json", default=None, help="write every audit's reference section here")
    parser.add_argument("--keep", default=None, help="write each audit's folder (audit.json, audit.md) under here")
    parser.add_argument("--from-kept", default=None, help="render the audit.json files a --keep run left here "
                        "instead of running (methods without one are listed as not run)")
    parser.add_argument("--section", default="bench_reference", help="the docs/benchmarks.md section to write")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    forget = [c.strip() for c in args.forget.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    options = RunOptions(device="cpu")
    results, seconds, skipped = {}, {}, {}
    if args.from_kept:
        for method in methods:
            found = Path(args.from_kept) / method.replace(":", "-") / "audit.json"
            if found.is_file():
                results[method] = json.loads(found.read_text())
            else:
                skipped[method] = "no audit was kept for it; see that run's log"
    with tempfile.TemporaryDirectory() as tmp:
        held_out = yaml.safe_load(HELD_OUT_FILE.read_text())
        aliases = Path(tmp) / "held-out.yaml"  # the forget classes' entries only: the others are not judged
        aliases.write_text(yaml.safe_dump({c: held_out[c] for c in forget if c in held_out}))
        for method in [] if args.from_kept else methods:
            t0 = time.perf_counter()
            folder = Path(tmp) / method.replace(":", "-")
            spec = method_spec(method, forget, args)
            if args.eval_limit:
                spec["eval_limit"] = args.eval_limit
            try:
                run_unlearn(build_spec({}, spec), options.but(out=folder))
            except CcupError as err:  # a method this model does not take: said, not hidden
                skipped[method] = err.one_line()
                print(f"{method}: not run: {skipped[method]}", flush=True)
                continue
            try:
                report = run_audit(AuditRequest(str(folder), eval=args.eval, data_root=args.data_root,
                                                eval_limit=args.eval_limit, aliases=str(aliases), probe_shots=[4, 16],
                                                reference=args.reference),
                                   options.but(out=Path(args.keep) / folder.name, overwrite=True) if args.keep else options)
            except CcupError as err:  # e.g. an audit that cannot load this model's fine-tuned weights
                skipped[method] = f"audit failed: {err.one_line()}"
                print(f"{method}: {skipped[method]}", flush=True)
                continue
            results[method] = report
            seconds[method] = time.perf_counter() - t0
            print(f"{method}: {report['reference']['headline']} ({seconds[method]:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({m: r["reference"] for m, r in results.items()}, indent=1) + "\n")
    methods = [m for m in methods if m in results]
    body = render(results, methods, forget, args)
    body += "".join(f"\n\n{m}: not run on this model ({why})." for m, why in skipped.items())
    print(body)
    if not args.no_doc:
        command = f"python scripts/bench_reference.py --reference {args.reference} --forget {args.forget}"
        if args.model:
            command += f" --model {args.model}"
        if args.section != "bench_reference":
            command += f" --section {args.section}"
        write_section(args.section, command, body)


def render(results: dict, methods: list[str], forget: list[str], args) -> str:
    first = results[methods[0]]
    ref = first["reference"]
    ds = first["dataset"]
    lines = [f"{args.model or 'Embedded ccup-tiny-fashion'}, forget {', '.join(forget)}, α = 1 (default λ), "
             f"{ds['name']} {ds['split']} ({ds['n_images']} images). Reference: `{Path(args.reference).name}` "
             "(the same training script, recipe and seed, never shown those classes), each model measured with "
             "its own towers. Held-out names: "
             + "; ".join(f"{c}: {', '.join(names)}" for c, names in first["aliases"].items())
             + f". Fine-tuning: {args.finetune_steps} steps.", "",
             "Verdict per measure against the reference: = as if never learnt (within the tolerance), "
             "↓ more forgotten than a retrained model, ↑ less forgotten, ≠ unlike a retrained model (where the "
             "images go). Tolerances (absolute): " + ", ".join(f"{k} {v:g}" for k, v in TOLERANCES.items()) + ".",
             "", "| method | = as if never learnt | ↓ more forgotten | ↑ less forgotten | ≠ unlike | ↓ where | ↑ where |",
             "|---|---|---|---|---|---|---|"]
    for m in methods:
        s, rows = results[m]["reference"]["summary"], results[m]["reference"]["rows"]
        lines.append(f"| {m} | {s[AS_IF_NEVER_LEARNT]} of {s['measured']} | {s[MORE_FORGOTTEN]} | "
                     f"{s[LESS_FORGOTTEN]} | {s[UNLIKE]} | {'; '.join(verdict_groups(rows, MORE_FORGOTTEN)) or '–'} | "
                     f"{'; '.join(verdict_groups(rows, LESS_FORGOTTEN)) or '–'} |")
    lines += ["", "Every measure (values in %, AUC and distances as decimals), the original, the reference and "
              "each method's value with its verdict mark:", "",
              "| class | measure | original | reference | " + " | ".join(methods) + " |",
              "|---|---|---|---|" + "---|" * len(methods)]
    for i, row in enumerate(ref["rows"]):
        key = row["key"]
        cells = []
        for m in methods:
            r = results[m]["reference"]["rows"][i]
            cells.append(f"{_value(r['unlearned'], key)} {MARK[r['verdict']]}")
        lines.append(f"| {row['subject']} | {row['group']}: {row['measure']} | {_value(row['original'], key)} | "
                     f"{_value(row['reference'], key)} | " + " | ".join(cells) + " |")
    lines += ["", "Where the forgotten images go (top predictions, %):", "",
              "| class | original | reference | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    for c, v in ref["confusion"].items():
        lines.append(f"| {c} | {_shares(v['original'])} | {_shares(v['reference'])} | "
                     + " | ".join(_shares(results[m]["reference"]["confusion"][c]["unlearned"]) for m in methods)
                     + " |")
    per_class = ref["per_class_top1"]
    lines += ["", "Per-class zero-shot top-1 %, every class (✗ forgotten):", "",
              "| class | original | reference | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    for c, v in per_class.items():
        lines.append(f"| {c}{' ✗' if v['forgotten'] else ''} | {_value(v['original'], 'zero_shot_top1')} | "
                     f"{_value(v['reference'], 'zero_shot_top1')} | "
                     + " | ".join(f"{_value(results[m]['reference']['per_class_top1'][c]['unlearned'], 'zero_shot_top1')}"
                                  f" ({_gap(results[m]['reference']['per_class_top1'][c]['gap'], 'zero_shot_top1')})"
                                  for m in methods) + " |")
    lines += ["", "Zero-shot top-1 is ten-way for every model: the reference, too, is offered the names of the "
              "classes it never saw. A probe row reads what a linear probe trained on 4 or 16 labelled images per "
              "class decodes; a model retrained without the class still decodes part of it, which is what \"as if "
              "never learnt\" means for probes."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
