"""Comma-separated lists as flags give them; apart from the schema so that commands that need no
spec (``ccup eval``, ``ccup audit``) split their flags without building the pydantic model."""

from __future__ import annotations

from typing import Any


def split_csv(value: Any) -> Any:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; anything but a string is returned as it is."""
    if isinstance(value, str):
        return [v for v in (p.strip() for p in value.split(",")) if v]
    return value
