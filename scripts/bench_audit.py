#!/usr/bin/env python3
"""``ccup audit`` on the embedded model: its figures, and its cost against one ``ccup eval``.

    python scripts/bench_audit.py [--eval fashion-mnist] [--repeats 3]

Forget sandal,sneaker at α = 1 (default settings), then audit the output folder on the same
data with the class names' other names (the synonyms the embedded model was trained with, and
the held-out ones it never saw), the built-in unseen templates and 4- and 16-shot probes.
Eval and audit run alternately in one process with caches off; the audit's cost without
probes is its wall time less its probe phases (probe images, probes, LEACE).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import write_section  # noqa: E402

from ccup_cli.jobs.audit import PROBE_PHASES, AuditRequest, run_audit  # noqa: E402
from ccup_cli.jobs.eval import EvalRequest, run_eval  # noqa: E402
from ccup_cli.jobs.unlearn import run_unlearn  # noqa: E402
from ccup_cli.run.options import RunOptions  # noqa: E402
from ccup_cli.spec.schema import build_spec  # noqa: E402

# the embedded model's synonyms (scripts/train_tiny_clip.py): trained ones, then held-out ones
ALIASES = {"sandal": ["sandals", "flip flop", "open shoe", "strappy sandal", "beach sandal"],
           "sneaker": ["trainer", "running shoe", "sports shoe", "athletic sneaker", "tennis shoe"]}


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def pm(cell) -> str:
    return f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--eval", default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    forget = ["sandal", "sneaker"]
    options = RunOptions(device="cpu", use_cache=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "unlearned"
        run_unlearn(build_spec({}, {"forget": forget, "alpha": 1.0, "eval": args.eval, "data_root": args.data_root}),
                    options.but(out=folder))
        aliases = Path(tmp) / "aliases.yaml"
        aliases.write_text("".join(f"{c}: [{', '.join(a)}]\n" for c, a in ALIASES.items()))
        t_eval, t_audit, t_probe = [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run_eval(EvalRequest(eval=args.eval, data_root=args.data_root, forget=forget), options)
            t_eval.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            report = run_audit(AuditRequest(str(folder), eval=args.eval, data_root=args.data_root,
                                            aliases=str(aliases), probe_shots=[4, 16]), options)
            wall = time.perf_counter() - t0
            probes = sum(v for k, v in report["timings"].items() if k in PROBE_PHASES)
            t_audit.append(wall - probes)
            t_probe.append(probes)
    e, a, p = statistics.median(t_eval), statistics.median(t_audit), statistics.median(t_probe)
    ds = report["dataset"]
    zs_rows = "\n".join(f"| {r['names']} | {r['templates']} | {pct(r['before']['forget_top1'])} | "
                        f"{pct(r['after']['forget_top1'])} | {pct(r['before']['retain_top1'])} | "
                        f"{pct(r['after']['retain_top1'])} |" for r in report["zero_shot"])
    zs = report["zero_shot"][0]
    name_rows = "\n".join(
        f"| {c} (its name) | {pct(zs['before']['per_class'][c])} | {pct(zs['after']['per_class'][c])} | "
        f"{pct(zs['before']['forget_search'][c]['p_at_100'])} | {pct(m['p_at_100'])} | {pct(m['r_precision'])} | "
        f"{pct(m['bottom_100'])} | {m['auc']:.2f} |" for c, m in zs["after"]["forget_search"].items())
    alias_rows = name_rows + "\n" + "\n".join(
        f"| {r['class']} as \"{r['alias']}\" | {pct(r['before']['top1'])} | {pct(r['after']['top1'])} | "
        f"{pct(r['before']['p_at_100'])} | {pct(r['after']['p_at_100'])} | {pct(r['after']['r_precision'])} | "
        f"{pct(r['after']['bottom_100'])} | {r['after']['auc']:.2f} |" for r in report["alias_rows"])
    alias_after = [r["after"]["top1"] for r in report["alias_rows"]]
    alias_p100 = [r["after"]["p_at_100"] for r in report["alias_rows"]]
    probes = report["probes"]
    leace = {r["k"]: r for r in probes["leace"].get("rows") or []}
    probe_rows = "\n".join(
        f"| {p['k']} | {pm(o['forget'])} | {pm(p['forget'])} | {pm(leace[p['k']]['forget']) if leace else '—'} | "
        f"{pm(o['retain'])} | {pm(p['retain'])} | {pm(leace[p['k']]['retain']) if leace else '—'} |"
        for p, o in zip(probes["patched"], probes["original"]))
    body = f"""Embedded model, {ds['name']} {ds['split']} ({ds['n_images']} images), forget sandal,sneaker, α = 1,
default settings. Aliases: the synonyms the model was trained with and its held-out ones
({'; '.join(f'{c}: ' + ', '.join(a) for c, a in ALIASES.items())}).

**Verdict:** {report['verdict']['headline']}

| class names | templates | forget top-1 before % | after % | retain top-1 before % | after % |
|---|---|---|---|---|---|
{zs_rows}

| query | class top-1 before % | after % | search P@100 before % | after % | R-precision after % | bottom-100 after % | AUC after |
|---|---|---|---|---|---|---|---|
{alias_rows}

Search after unlearning, at every depth: R-precision is the precision within the class's own image count,
bottom-100 the class's share of the 100 images ranked *last* (chance: its share of the data, 0.10), AUC
the chance that one of its images outranks another image (0.50 = chance, 0 = always ranked below).

Worst alias after unlearning: top-1 {pct(max(alias_after))} % (target ≤ 2), search P@100 {pct(max(alias_p100))} %
(mean {pct(statistics.mean(alias_p100))} %; target ≤ 10).

k-shot linear probes, trained on {probes['train_on']}, tested on the {probes['test_on']}, mean ± std over
{probes['draws']} draws (seed {probes['seed']}), top-1 %. LEACE needs labelled images (fitted on the
probe's {probes['n_train_images']} training images); it is a comparison, not what ccup does:

| k | forget: original | forget: patched | forget: LEACE on patched | retain: original | retain: patched | retain: LEACE |
|---|---|---|---|---|---|---|
{probe_rows}

{report['statement']}

Cost (medians of {args.repeats}, caches off): `ccup eval` {e:.2f} s; `ccup audit` without probes {a:.2f} s
(**{a / e:.2f}×** eval); probes (probe images, probes, LEACE) {p:.2f} s more.
"""
    print(body)
    if not args.no_doc:
        write_section("bench_audit", f"python scripts/bench_audit.py --eval {args.eval} --repeats {args.repeats}",
                      body)


if __name__ == "__main__":
    main()
