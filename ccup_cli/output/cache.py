"""The on-disk cache for text embeddings and pre-projection image features.

Entries live under ``~/.cache/ccup/<kind>/<key>.safetensors`` (``CCUP_CACHE_DIR`` moves the
root). Keys are sha256 digests of everything the tensor depends on. A corrupt or
mismatched entry is recomputed, never trusted; a cache that cannot be written is skipped.
Two runs that miss the same entry at once both compute it; the first to finish writes it and
the other keeps it (entries are never replaced unless they were found unusable).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from .atomic import atomic_path


def cache_root() -> Path:
    return Path(os.environ.get("CCUP_CACHE_DIR", Path.home() / ".cache" / "ccup"))


def _entry(kind: str, key: str) -> Path:
    return cache_root() / kind / f"{key}.safetensors"


def load_cached(kind: str, key: str | None, n_rows: int) -> torch.Tensor | None:
    """The cached tensor if an intact entry with ``n_rows`` rows exists, else None. Never writes."""
    from safetensors.torch import load_file

    path = _entry(kind, key) if key else None
    if path is None or not path.is_file():
        return None
    try:
        cached = load_file(str(path))["features"]
    except Exception:  # noqa: BLE001 - a corrupt entry is recomputed
        return None
    return cached if cached.shape[0] == n_rows else None


def store_cached(kind: str, key: str | None, value: torch.Tensor, replace: bool | None = None) -> None:
    """Write an entry atomically; a cache that cannot be written is skipped silently.

    ``replace``: whether an existing entry may be replaced (True where the caller found it
    unusable); None decides by whether one exists now. Otherwise an entry another run wrote in
    the meantime is kept and this one dropped: both hold the same rows.
    """
    from safetensors.torch import save_file

    if not key:
        return
    path = _entry(kind, key)
    if replace is None:
        replace = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, overwrite=replace) as tmp:
            save_file({"features": value.detach().cpu().contiguous()}, str(tmp))
    except Exception:  # noqa: BLE001 - the cache is an optimisation, never a failure
        pass


def cached_tensor(kind: str, key: str | None, n_rows: int,
                  compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """``compute()`` through the cache: (tensor on the CPU, whether the cache served it).

    ``key`` None bypasses the cache. An entry is used only if it has ``n_rows`` rows.
    """
    found = bool(key) and _entry(kind, key).exists()  # unusable, or load_cached would have served it
    cached = load_cached(kind, key, n_rows)
    if cached is not None:
        return cached, True
    value = compute()
    store_cached(kind, key, value, replace=found)
    return value, False
