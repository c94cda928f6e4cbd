"""Reading checkpoints with one-line errors, and a deterministic safetensors writer.

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

from ..errors import CheckpointError


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, with a one-line error for every way it can be bad.

    Pickles (``.pt``/``.bin``) are read with ``weights_only=True``: one that tries to run
    code is refused.
    """
    if not path.is_file():
        raise CheckpointError(f"pretrained file {path} does not exist", "check the path given to --pretrained")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({str(err).splitlines()[0]})",
                                  "re-download or re-export it") from err
    else:
        import pickle

        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            reason = str(err).splitlines()[0] if str(err) else "unsupported content"
            if "weights_only" in str(err) or "global" in str(err).lower():
                raise CheckpointError(
                    f"refused to load {path}: the pickle tries to run code or load non-tensor objects",
                    "convert it to .safetensors in a trusted environment",
                ) from err
            raise CheckpointError(f"checkpoint {path} is corrupt ({reason})", "re-download or re-export it") from err
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            if "TorchScript" in str(err):  # OpenAI's original release: a TorchScript archive, not a state dict
                raise CheckpointError(
                    f"refused to load {path}: it is a TorchScript archive (OpenAI's original .pt release), which "
                    "cannot be read with weights_only=True",
                    "convert it once in a trusted environment: open_clip.load_openai_model(PATH, device='cpu'), then "
                    "save its state_dict() with safetensors.torch.save_file; or pass --pretrained openai") from err
            raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({str(err).splitlines()[0]})",
                                  "re-download or re-export it") from err
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors", "pass an open_clip checkpoint file")
    if next(iter(state)).startswith("module."):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _check_architecture(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise CheckpointError(
                f"{path} does not fit {name}: tensor {key} {tuple(tensor.shape)} is missing from the checkpoint",
                "pass the --model the checkpoint was trained as",
            )
        got = state[key]
        if tuple(got.shape) != tuple(tensor.shape) and got.numel() != tensor.numel():
            raise CheckpointError(
                f"{path} does not fit {name}: tensor {key} has shape {tuple(got.shape)} in the checkpoint, "
                f"{tuple(tensor.shape)} in the model",
                "pass the --model the checkpoint was trained as",
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise CheckpointError(f"{path} does not fit {name}: unexpected tensor {extra[0]}",
                              "pass the --model the checkpoint was trained as")


def load_weights(model: torch.nn.Module, path: Path, name: str) -> dict[str, torch.Tensor]:
    """Load ``path`` into ``model``; return the checkpoint's own tensors (dtypes as stored)."""
    state = read_state_dict(path)
    if set(state) != set(model.state_dict()):
        # third-party layouts (OpenAI JIT, big_vision, ...) go through open_clip's converters
        try:
            import open_clip

            open_clip.load_checkpoint(model, str(path))
            return {k: v.detach().clone() for k, v in model.state_dict().items()}
        except Exception:  # noqa: BLE001 - fall through to a precise mismatch message
            pass
    _check_architecture(model, state, path, name)
    fitted = {}
    for key, tensor in model.state_dict().items():
        fitted[key] = state[key].reshape(tensor.shape) if state[key].shape != tensor.shape else state[key]
    model.load_state_dict(fitted, strict=True)
    return state


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
