"""The on-disk cache for text embeddings and pre-projection image features.

Entries live under ``~/.cache/ccup/<kind>/<key>.safetensors`` (``CCUP_CACHE_DIR`` moves the
root). Keys are sha256 digests of everything the tensor depends on. A corrupt or
mismatched entry is recomputed, never trusted; a cache that cannot be written is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch


def cache_root() -> Path:
    return Path(os.environ.get("CCUP_CACHE_DIR", Path.home() / ".cache" / "ccup"))


def cached_tensor(kind: str, key: str | None, n_rows: int,
                  compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """``compute()`` through the cache: (tensor on the CPU, whether the cache served it).

    ``key`` None bypasses the cache. An entry is used only if it has ``n_rows`` rows.
    """
    from safetensors.torch import load_file, save_file

    from .atomic import atomic_path

    path = cache_root() / kind / f"{key}.safetensors" if key else None
    if path is not None and path.is_file():
        try:
            cached = load_file(str(path))["features"]
            if cached.shape[0] == n_rows:
                return cached, True
        except Exception:  # noqa: BLE001 - a corrupt entry is recomputed
            pass
    value = compute()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({"features": value.detach().cpu().contiguous()}, str(tmp))
        except Exception:  # noqa: BLE001 - the cache is an optimisation, never a failure
            pass
    return value, False
