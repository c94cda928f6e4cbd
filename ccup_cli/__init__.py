"""ccup: make a CLIP model forget chosen classes with a closed-form projection (CCUP).

Library entry points: ``unlearn`` (patch an in-memory open_clip model) and
``encode_prompts`` (fast exact text encoding). They are imported on first use, so the
command line starts without loading torch.
"""

from __future__ import annotations

__all__ = ["unlearn", "UnlearnResult", "encode_prompts"]

_LAZY = {"unlearn": "api", "UnlearnResult": "api", "encode_prompts": "text.encode"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
