#!/usr/bin/env python3
"""How long ccup takes to answer when it needs no model: help, version, errors at the door.

    python scripts/bench_startup.py --repeats 5

Each command runs as a fresh process; the baseline is ``python -c "import typer, rich, yaml,
pydantic"``, measured in the same run. Target: every command within 3x the baseline.
``--interleaved`` times the baseline beside each case, run by run, and ``--only TEXT`` picks
cases: both print and leave docs/benchmarks.md alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import write_section  # noqa: E402

CCUP = [sys.executable, "-m", "ccup_cli.cli"]
CASES = [
    ("ccup --help", ["--help"], 0),
    ("ccup unlearn --help", ["unlearn", "--help"], 0),
    ("ccup version", ["version"], 0),
    ("unknown spec key", ["unlearn", "SPEC"], 2),
    ("alpha out of range", ["unlearn", "--forget", "sandal", "--alpha", "2"], 2),
    ("missing spec file", ["unlearn", "/nonexistent/spec.yaml"], 2),
    ("bad threshold", ["eval", "--forget", "sandal", "--max-forget-acc", "3"], 2),
    ("threshold out of range, no --forget (issue 31)", ["eval", "--max-forget-acc", "7"], 2),
    ("audit: bad --probe-shots", ["audit", "/nonexistent/out", "--probe-shots", "0"], 2),
    ("unknown dataset name", ["unlearn", "--forget", "cat", "--eval", "cifar11"], 2),
    ("forget class not in a named dataset", ["unlearn", "--forget", "dgo", "--eval", "cifar10"], 2),
    ("forget class not in the embedded set", ["unlearn", "--forget", "sandl"], 2),
]


def timed(cmd: list[str], expect: int) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}, not {expect}: {done.stderr[-300:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--only", default=None, help="only the cases whose label holds this text")
    parser.add_argument("--interleaved", action="store_true", help="time the baseline beside each case, run by "
                        "run (a ratio that holds better on a loaded machine)")
    args = parser.parse_args()
    spec = Path("/tmp/ccup-bench-startup.yaml")
    spec.write_text("alhpa: 0.3\nforget: [sandal]\n")
    base = statistics.median(timed([sys.executable, "-c", "import typer, rich, yaml, pydantic"], 0)
                             for _ in range(args.repeats))
    rows = []
    floor = [sys.executable, "-c", "import typer, rich, yaml, pydantic"]
    for label, argv, code in CASES:
        if args.only is not None and args.only not in label:
            continue
        argv = [str(spec) if a == "SPEC" else a for a in argv]
        if args.interleaved:
            pairs = [(timed(floor, 0), timed(CCUP + argv, code)) for _ in range(args.repeats)]
            t = statistics.median(c for _, c in pairs)
            case_base = statistics.median(b for b, _ in pairs)
            rows.append(f"| {label} | {t:.2f} s | {t / case_base:.1f}x (baseline beside it: {case_base:.2f} s) |")
            continue
        t = statistics.median(timed(CCUP + argv, code) for _ in range(args.repeats))
        rows.append(f"| {label} | {t:.2f} s | {t / base:.1f}x |")
    load = os.getloadavg()[0]
    body = "\n".join([
        f"Baseline `python -c \"import typer, rich, yaml, pydantic\"`: {base:.2f} s (median of {args.repeats}); "
        f"load average {load:.1f} when the run ended. Target: each ≤ 3x the baseline.", "",
        "| command (fresh process, no model needed) | median | × baseline |", "|---|---|---|", *rows])
    print(body)
    if not args.no_doc and args.only is None and not args.interleaved:  # a partial run prints only
        write_section("bench_startup", f"python scripts/bench_startup.py --repeats {args.repeats}", body)


if __name__ == "__main__":
    main()
