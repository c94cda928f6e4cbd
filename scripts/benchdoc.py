"""Write one benchmark's section into docs/benchmarks.md, between its own markers."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Each section below is written by the script it names (`python scripts/bench_*.py`), with the
machine, the command and the date of its run. Ratios are measured within one run.
"""


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} threads={torch.get_num_threads()}{gpu}"


def write_section(name: str, command: str, body: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = f"{begin}\n## {name}\n\nCommand: `{command}`  \nMachine: {machine()}  \nDate: {stamp}\n\n{body.strip()}\n{end}"
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else HEADER
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text, encoding="utf-8")
