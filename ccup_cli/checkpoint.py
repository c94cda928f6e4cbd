"""A deterministic safetensors writer.

The ``safetensors`` library writes ``__metadata__`` in hash-map order, so two runs with the
same inputs can differ in their header bytes. This writer emits the same format with sorted
keys, streams tensor bytes straight to the file (no second copy of the state dict in memory)
and returns the file's sha256, computed on a second thread while the bytes are written.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from pathlib import Path

import torch

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> str:
    """Write ``tensors`` with string ``metadata`` to ``path``; return the file's sha256 (hex)."""
    # widest elements first keeps every tensor aligned to its element size
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict = {"__metadata__": {str(k): str(v) for k, v in sorted(metadata.items())}}
    offset = 0
    for key in order:
        t = tensors[key]
        if t.dtype not in _DTYPES:
            raise TypeError(f"cannot store {key} of dtype {t.dtype} in safetensors")
        nbytes = t.numel() * t.element_size()
        header[key] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    blob += b" " * (-len(blob) % 8)
    digest = hashlib.sha256()
    # hashing runs on a second thread (hashlib releases the GIL), overlapping the file writes;
    # tensor bytes go out as zero-copy memoryviews
    pending: queue.Queue = queue.Queue(maxsize=16)

    def hash_worker() -> None:
        while (chunk := pending.get()) is not None:
            digest.update(chunk)

    worker = threading.Thread(target=hash_worker, daemon=True)
    worker.start()
    try:
        with open(path, "wb") as f:
            for chunk in (len(blob).to_bytes(8, "little"), blob):
                f.write(chunk)
                pending.put(chunk)
            for key in order:
                flat = tensors[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                view = memoryview(flat.numpy())
                f.write(view)
                pending.put(view)
    finally:
        pending.put(None)
        worker.join()
    return digest.hexdigest()
