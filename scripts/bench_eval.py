#!/usr/bin/env python3
"""Cost of ``ccup unlearn --eval X`` and ``ccup sweep`` against a plain ``ccup eval --eval X``.

    python scripts/bench_eval.py [--eval fashion-mnist] [--repeats 3]

Same model (the embedded one), same data, caches off, in one process, alternating the two
jobs and taking medians. ``unlearn`` also encodes its prompts, solves, folds and writes the
patched checkpoint; with one pass over the images (before and after both computed from the
cached pre-projection features) it should cost at most 1.25x ``eval``; a naive
before/after evaluation would cost about 2x.
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

from ccup_cli.jobs.eval import EvalRequest, run_eval  # noqa: E402
from ccup_cli.jobs.sweep import run_sweep_job  # noqa: E402
from ccup_cli.jobs.unlearn import run_unlearn  # noqa: E402
from ccup_cli.run.options import RunOptions  # noqa: E402
from ccup_cli.spec.schema import build_spec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--eval", default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    options = RunOptions(device="cpu", use_cache=False)
    forget = ["sandal", "sneaker"]
    t_eval, t_unlearn, t_sweep, phases = [], [], [], {}
    alphas = [k / 10 for k in range(11)]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            t0 = time.perf_counter()
            report, _ = run_eval(EvalRequest(eval=args.eval, data_root=args.data_root, forget=forget), options)
            t_eval.append(time.perf_counter() - t0)
            n_images = report["dataset"]["n_images"]
            spec = build_spec({}, {"forget": forget, "eval": args.eval, "data_root": args.data_root})
            out = RunOptions(device="cpu", use_cache=False, out=Path(tmp) / f"out{i}")
            t0 = time.perf_counter()
            unlearn_report = run_unlearn(spec, out)
            t_unlearn.append(time.perf_counter() - t0)
            phases = unlearn_report["timings"]
            sweep_out = RunOptions(device="cpu", use_cache=False, out=Path(tmp) / f"sweep{i}")
            t0 = time.perf_counter()
            run_sweep_job(spec, alphas, ["ccup", "nullspace"], sweep_out)
            t_sweep.append(time.perf_counter() - t0)
    e, u, sw = statistics.median(t_eval), statistics.median(t_unlearn), statistics.median(t_sweep)
    body = f"""| job (embedded model, {args.eval}, {n_images} images, caches off) | median of {args.repeats} |
|---|---|
| `ccup eval` | {e:.2f} s |
| `ccup unlearn --eval` (forget sandal,sneaker; writes the checkpoint) | {u:.2f} s |
| **ratio unlearn / eval** (target ≤ 1.25) | **{u / e:.2f}** |
| `ccup sweep` (11 strengths × ccup, nullspace; JSONL + plot) | {sw:.2f} s |
| **ratio sweep / eval** (target ≤ 1.3) | **{sw / e:.2f}** |

Phases of the last unlearn run (s): {", ".join(f"{k} {v:.2f}" for k, v in phases.items())}."""
    print(body)
    if not args.no_doc:
        write_section("bench_eval", f"python scripts/bench_eval.py --eval {args.eval} --repeats {args.repeats}", body)


if __name__ == "__main__":
    main()
