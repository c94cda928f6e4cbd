"""Reading a user's YAML file defensively: a value tree too deep or too big is refused, not parsed into a crash.

``yaml.safe_load`` recurses once per nesting level (a file of 5,000 ``[`` ends in a
``RecursionError``), and aliases let a few lines expand to billions of values ("billion
laughs"). ``read_yaml`` turns both, and bytes that are not UTF-8, into ``NotReadable``, whose
message the caller puts after its own "not a valid ..." prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_DEPTH = 32  # specs, alias files and domain files are a few levels deep; far deeper is hostile
MAX_VALUES = 100_000  # values counted with aliases expanded


class NotReadable(ValueError):
    """The file is no YAML value tree ccup will read: nested too deeply, too many values, not UTF-8."""


def shape_problem(data: Any, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> str | None:
    """Why a parsed value tree is refused (too deep, too many values), else None.

    Walks without recursion; a value reached twice through aliases counts twice.
    """
    stack, count = [(data, 0)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if depth > max_depth:
            return "nested too deeply"
        if count > max_values:
            return f"more than {max_values:,} values"
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for pair in value.items() for v in pair)
        elif isinstance(value, (list, tuple, set)):
            stack.extend((v, depth + 1) for v in value)
    return None


def read_yaml(path: str | Path) -> Any:
    """``yaml.safe_load`` of a UTF-8 file, or ``NotReadable``; YAML syntax errors pass through as ``yaml.YAMLError``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise NotReadable(f"not UTF-8 text (byte {err.start})") from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise NotReadable("nested too deeply") from None
    problem = shape_problem(data)
    if problem is not None:
        raise NotReadable(problem)
    return data
