"""Image features of any ``Backend``, encoded once, up to the final linear map, and cached.

Only the image tower's final linear map changes, so each image is encoded once, up to
``pre_projection_features [n, width]``. The original model, the patched model and any
strength α are then a matrix product away (``fold.project``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..data.dataset import EvalDataset
from ..data.loader import image_batches
from ..output.cache import cached_tensor
from ..runtime.precision import encoder_precision
from .fold import FoldSite


def feature_cache_key(checkpoint_sha256: str | None, site: FoldSite, dataset: EvalDataset, transform,
                      precision: str = "fp32", indices: Sequence[int] | None = None,
                      decode: str = "pil") -> str | None:
    """The feature cache's key; ``precision``, ``indices`` (a shard) and ``decode`` enter only when
    not their defaults (so existing keys stay valid)."""
    if checkpoint_sha256 is None:
        return None
    blob = f"{checkpoint_sha256}|{site.path}|{dataset.identity()}|{transform!r}"
    if precision != "fp32":
        blob += f"|precision={precision}"
    if indices is not None:
        shard = (f"{indices.start}:{indices.stop}:{indices.step}" if isinstance(indices, range)
                 else hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest())
        blob += f"|indices={shard}"
    if decode != "pil":
        blob += f"|decode={decode}"
    return hashlib.sha256(blob.encode()).hexdigest()


def encode_pre_projection(
    backend,
    dataset: EvalDataset,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
    cache_key: str | None = None,
    workers: int | None = None,
    indices: Sequence[int] | None = None,
    precision: str = "fp32",
    decode: str = "pil",
) -> tuple[torch.Tensor, bool]:
    """``pre_projection_features [n, width]`` float32 on the CPU, and whether the cache served them.

    ``backend`` is a ``base.Backend``: its ``preprocess`` turns each image into a tensor and
    its ``encode_images`` runs the tower up to the final map. Images are decoded by
    ``workers`` DataLoader processes (None: ``data.loader.default_workers``; 0: in this process);
    the result is the same for every ``workers``. ``indices`` encodes only those images, in
    that order (``n`` = ``len(indices)``; key the cache with the same ``indices``).
    ``precision`` fp16/bf16 runs the tower under autocast (``runtime.precision.encoder_precision``).
    ``decode`` names how images become tensors (``data.decode.DECODERS``): ``pil``, the default,
    is the model's own open_clip transform; the others change pixels (key the cache with it too).
    On CUDA, batches are joined in page-locked memory and copied without blocking.
    """
    n_rows = len(dataset) if indices is None else len(indices)

    def encode() -> torch.Tensor:
        pin = torch.device(device).type == "cuda"
        chunks = []
        batches = image_batches(dataset, backend.preprocess, batch_size, decode=decode, device=device,
                                pin_memory=pin, workers=workers, indices=indices)
        with torch.inference_mode(), encoder_precision(precision, device):
            for batch in batches:
                chunks.append(backend.encode_images(batch.to(device, non_blocking=pin)).float().cpu())
                if progress is not None:
                    progress(len(batch))
        site = backend.site  # with a text-side site the image features are the final ones [n, d]
        return torch.cat(chunks) if chunks else torch.empty(0, site.in_features if site.side == "image"
                                                            else site.out_features)

    feats, hit = cached_tensor("features", cache_key, n_rows, encode)
    if hit and progress is not None:
        progress(n_rows)
    return feats, hit
