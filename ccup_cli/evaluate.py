"""Zero-shot metrics from cached pre-projection features.

Only the image tower's final linear map changes, so each image is encoded once, up to
``pre_projection_features [n, width]``. The original model, the patched model and any
strength α are then a matrix product away (``fold.project``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import EvalDataset
from .fold import FoldSite, identity_projection, project

LOGIT_SCALE = 100.0


def feature_cache_key(checkpoint_sha256: str | None, site: FoldSite, dataset: EvalDataset, transform,
                      precision: str = "fp32", indices: Sequence[int] | None = None) -> str | None:
    """The feature cache's key; ``precision`` and ``indices`` (a shard) enter only when given."""
    if checkpoint_sha256 is None:
        return None
    blob = f"{checkpoint_sha256}|{site.path}|{dataset.identity()}|{transform!r}"
    if precision != "fp32":
        blob += f"|precision={precision}"
    if indices is not None:
        shard = (f"{indices.start}:{indices.stop}:{indices.step}" if isinstance(indices, range)
                 else hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest())
        blob += f"|indices={shard}"
    return hashlib.sha256(blob.encode()).hexdigest()


def encode_pre_projection(
    model: torch.nn.Module,
    site: FoldSite,
    dataset: EvalDataset,
    transform: Callable,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
    cache_key: str | None = None,
    workers: int | None = None,
    indices: Sequence[int] | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, bool]:
    """``pre_projection_features [n, width]`` float32 on the CPU, and whether the cache served them.

    Images go through ``transform`` (open_clip's own eval transform for the model), decoded by
    ``workers`` DataLoader processes (None: ``loader.default_workers``; 0: in this process);
    the result is the same for every ``workers``. ``indices`` encodes only those images, in
    that order (``n`` = ``len(indices)``; key the cache with the same ``indices``).
    ``precision`` fp16/bf16 runs the tower under autocast (``precision.encoder_precision``).
    """
    from .cache import cached_tensor
    from .loader import image_batches
    from .precision import encoder_precision

    n_rows = len(dataset) if indices is None else len(indices)

    def encode() -> torch.Tensor:
        pin = torch.device(device).type == "cuda"
        chunks = []
        batches = image_batches(dataset, transform, batch_size, workers, indices, pin_memory=pin)
        with torch.inference_mode(), identity_projection(model, site), encoder_precision(precision, device):
            for batch in batches:
                chunks.append(model.encode_image(batch.to(device, non_blocking=pin)).float().cpu())
                if progress is not None:
                    progress(len(batch))
        return torch.cat(chunks) if chunks else torch.empty(0, site.in_features)

    feats, hit = cached_tensor("features", cache_key, n_rows, encode)
    if hit and progress is not None:
        progress(n_rows)
    return feats, hit


def _split_metrics(logits: torch.Tensor, labels: torch.Tensor, candidates: list[int], classnames: Sequence[str]):
    """top-1, top-5 (None below 5 candidates), mean per-class recall and per-class accuracy."""
    if len(labels) == 0:
        return {"n": 0, "top1": None, "top5": None, "mean_per_class_recall": None, "per_class": {}}
    cand = torch.as_tensor(candidates)
    sub = logits[:, cand]
    # map true labels to their positions among the candidates
    position = torch.full((int(max(candidates)) + 1,), -1, dtype=torch.long)
    position[cand] = torch.arange(len(candidates))
    target = position[labels]
    pred = sub.argmax(dim=1)
    correct = pred.eq(target)
    top5 = None
    if len(candidates) >= 5:
        top5 = float(sub.topk(5, dim=1).indices.eq(target[:, None]).any(dim=1).double().mean())
    per_class = {}
    hits = torch.bincount(labels, weights=correct.double(), minlength=len(classnames))
    counts = torch.bincount(labels, minlength=len(classnames))
    for c in torch.nonzero(counts).flatten().tolist():
        per_class[classnames[c]] = float(hits[c] / counts[c])
    return {
        "n": int(len(labels)),
        "top1": float(correct.double().mean()),
        "top5": top5,
        "mean_per_class_recall": float(np.mean(list(per_class.values()))),
        "per_class": per_class,
    }


def zero_shot_metrics(
    image_features: torch.Tensor,
    class_embeddings: torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    classnames: Sequence[str],
    forget: Sequence[str] = (),
) -> dict:
    """Metrics of a zero-shot classifier: logits = 100 · normalise(f) · t_c.

    ``image_features [n, d]`` (unnormalised), ``class_embeddings [C, d]`` (normalised).
    Splits: ``forget`` (images of forget classes, every class a candidate), ``retain``
    (other images, every class a candidate), ``retain_only`` (other images, retain classes
    only as candidates), ``overall``. ``forget`` also carries the true class's mean softmax
    probability and mean rank (1 = top).
    """
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    logits = LOGIT_SCALE * F.normalize(image_features.float(), dim=-1) @ class_embeddings.float().T
    lower = [c.lower() for c in classnames]
    forget_ids = sorted(lower.index(f.lower()) for f in forget)
    retain_ids = [i for i in range(len(classnames)) if i not in forget_ids]
    is_forget = torch.isin(labels_t, torch.as_tensor(forget_ids, dtype=torch.long))
    everything = list(range(len(classnames)))
    metrics = {
        "forget": _split_metrics(logits[is_forget], labels_t[is_forget], everything, classnames),
        "retain": _split_metrics(logits[~is_forget], labels_t[~is_forget], everything, classnames),
        "retain_only": _split_metrics(logits[~is_forget], labels_t[~is_forget], retain_ids, classnames),
        "overall": _split_metrics(logits, labels_t, everything, classnames),
    }
    if forget_ids and bool(is_forget.any()):
        fl, fy = logits[is_forget], labels_t[is_forget]
        true_logit = fl.gather(1, fy[:, None])
        metrics["forget"]["mean_true_class_prob"] = float(fl.double().softmax(dim=1).gather(1, fy[:, None]).mean())
        metrics["forget"]["mean_true_class_rank"] = float((fl > true_logit).sum(dim=1).add(1).double().mean())
    else:
        metrics["forget"]["mean_true_class_prob"] = None
        metrics["forget"]["mean_true_class_rank"] = None
    return metrics


def delta(after: dict, before: dict) -> dict:
    """``after − before`` for every number the two metric trees share (None stays None)."""
    out = {}
    for key, a in after.items():
        b = before.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out[key] = delta(a, b)
        elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and key != "n":
            out[key] = a - b
        elif key != "n":
            out[key] = None
    return out


def metrics_for(
    site: FoldSite,
    tensors: dict[str, torch.Tensor],
    pre_projection_features: torch.Tensor,
    class_embeddings: torch.Tensor,
    dataset: EvalDataset,
    forget: Sequence[str],
) -> dict:
    """Metrics of the model whose fold site holds ``tensors``, from cached features."""
    feats = project(site, tensors, pre_projection_features)
    return zero_shot_metrics(feats, class_embeddings, dataset.labels, dataset.classnames, forget)
