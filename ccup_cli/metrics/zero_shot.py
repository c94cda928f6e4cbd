"""Zero-shot metrics from image features and class embeddings: classification and text search.

Plain functions of ``image_features [n, d]`` and ``class_embeddings [C, d]``; they never load
a model or an image. ``compare.metrics_for`` projects cached pre-projection features through a
fold site first; ``domains`` repeats these splits per domain.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

LOGIT_SCALE = 100.0


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


RANKING_KEYS = ("p_at_10", "p_at_100", "r_at_100", "r_precision", "bottom_100", "auc")
CLASS_CHUNK = 64  # classes ranked at once: bounds the [chunk, n] sort's memory at 1,000 classes


def ranking_metrics(scores: torch.Tensor, relevant: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where the relevant images sit in each query's ranking, at every depth.

    ``scores [q, n]`` (query against image), ``relevant [q, n]`` bool; every query has at
    least one relevant and one other image. Returns float64 tensors ``[q]``:

    - ``p_at_10`` / ``p_at_100``: share of relevant images among the 10 / 100 ranked first;
    - ``r_at_100``: share of the relevant images found among the 100 ranked first;
    - ``r_precision``: share of relevant images among the first ``n_rel`` (its own count);
    - ``bottom_100``: share of relevant images among the 100 ranked *last*: a class pushed
      below every other image is found by reading the ranking backwards;
    - ``auc``: the chance that a relevant image outranks another one (ties count half):
      1 found perfectly, 0.5 chance, 0 perfectly avoided.

    Chance, for precision at any depth, is the relevant share ``n_rel / n``. With fewer than
    100 images the cutoffs are n.
    """
    q, n = scores.shape
    k10, k100 = min(10, n), min(100, n)
    descending, order = scores.sort(dim=1, descending=True, stable=True)
    ranked = relevant.gather(1, order).double()  # [q, n], best first
    n_rel = ranked.sum(dim=1)
    hits = ranked.cumsum(dim=1)
    # Mann-Whitney U from ranks counted from the bottom (1 = lowest score), tied scores sharing their
    # mean rank: one pass over the sorted scores, no search
    ascending, relevant_up = descending.flip(1), ranked.flip(1)
    starts = torch.ones_like(ascending, dtype=torch.bool)
    starts[:, 1:] = ascending[:, 1:] != ascending[:, :-1]
    group = starts.long().cumsum(dim=1) - 1  # [q, n]: the tie group of each sorted position
    position = torch.arange(1, n + 1, dtype=torch.float64).expand(q, n)
    group_sum = torch.zeros(q, n, dtype=torch.float64).scatter_add_(1, group, position)
    group_size = torch.zeros(q, n, dtype=torch.float64).scatter_add_(1, group, torch.ones(q, n, dtype=torch.float64))
    mean_rank = (group_sum / group_size.clamp(min=1)).gather(1, group)
    rank_sum = (mean_rank * relevant_up).sum(dim=1)
    n_other = n - n_rel
    return {
        "p_at_10": hits[:, k10 - 1] / k10,
        "p_at_100": hits[:, k100 - 1] / k100,
        "r_at_100": hits[:, k100 - 1] / n_rel,
        "r_precision": hits.gather(1, n_rel.long().sub(1)[:, None])[:, 0] / n_rel,
        "bottom_100": (n_rel - (hits[:, n - k100 - 1] if n > k100 else 0.0)) / k100,
        "auc": (rank_sum - n_rel * (n_rel + 1) / 2) / (n_rel * n_other),
    }


def _retrieval_from_scores(
    scores: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str], forget_ids: Sequence[int]
) -> dict:
    """Text-to-image retrieval from ``scores [n, C]`` (image i against class c); see retrieval_metrics."""
    n, n_classes = scores.shape
    counts = torch.bincount(labels, minlength=n_classes)
    # a class with no image has nothing to find; one with every image has nothing to rank it against
    ranked_ids = [c for c in range(n_classes) if 0 < int(counts[c]) < n]
    per_class = {}
    for start in range(0, len(ranked_ids), CLASS_CHUNK):
        ids = torch.as_tensor(ranked_ids[start:start + CLASS_CHUNK])
        # rows contiguous: a sort along [chunk, n] is several times faster than along the transposed view
        chunk = ranking_metrics(scores[:, ids].T.contiguous(), labels[None, :].eq(ids[:, None]))
        for row, c in enumerate(ids.tolist()):
            per_class[classnames[c]] = {k: float(chunk[k][row]) for k in RANKING_KEYS}

    def means(ids) -> dict:
        rows = [per_class[classnames[c]] for c in ids if classnames[c] in per_class]
        return {k: (float(np.mean([r[k] for r in rows])) if rows else None) for k in RANKING_KEYS}

    forget_set = set(forget_ids)
    return {
        "per_class": per_class,
        "forget": means(sorted(forget_set)),
        "retain": means([c for c in range(n_classes) if c not in forget_set]),
    }


def _scores(image_features: torch.Tensor, class_embeddings: torch.Tensor, labels, scale: float = 1.0):
    """(``scale`` · normalise(f) · t_c ``[n, C]`` float32, labels ``[n]`` long): what both metrics read."""
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return scale * F.normalize(image_features.float(), dim=-1) @ class_embeddings.float().T, labels_t


def retrieval_metrics(image_features: torch.Tensor, class_embeddings: torch.Tensor, labels: np.ndarray | torch.Tensor,
                      classnames: Sequence[str], forget: Sequence[str] = ()) -> dict:
    """Text-to-image retrieval: each class's classifier vector used as a search query.

    ``image_features [n, d]`` (unnormalised), ``class_embeddings [C, d]`` (normalised: the
    same template-averaged vectors the zero-shot classifier uses). For every class with at
    least one image, all n images are ranked by cosine to its vector, and:

    - ``p_at_10``: fraction of the top 10 that are images of that class (chance: its share);
    - ``p_at_100``: the same over the top 100;
    - ``r_at_100``: fraction of that class's images found in the top 100;
    - ``r_precision``, ``bottom_100`` and ``auc``: the rest of the ranking (``ranking_metrics``).

    With fewer than k images the cutoff is n. Returns ``{"per_class": {name: {p_at_10,
    p_at_100, r_at_100, r_precision, bottom_100, auc}}, "forget": means, "retain": means}``;
    the means are over the forget (retain) classes that have images and are not every image
    (None when there are none).
    """
    scores, labels_t = _scores(image_features, class_embeddings, labels)
    return _retrieval_from_scores(scores, labels_t, classnames, forget_ids(classnames, forget))


def forget_ids(classnames: Sequence[str], forget: Sequence[str]) -> list[int]:
    lower = [c.lower() for c in classnames]
    return sorted(lower.index(f.lower()) for f in forget)


def zero_shot_metrics(
    image_features: torch.Tensor,
    class_embeddings: torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    classnames: Sequence[str],
    forget: Sequence[str] = (),
    forget_images: np.ndarray | None = None,
) -> dict:
    """Metrics of a zero-shot classifier: logits = 100 · normalise(f) · t_c.

    ``image_features [n, d]`` (unnormalised), ``class_embeddings [C, d]`` (normalised).
    Splits: ``forget`` (images of forget classes, every class a candidate), ``retain``
    (other images, every class a candidate), ``retain_only`` (other images, retain classes
    only as candidates), ``overall``. ``forget`` also carries the true class's mean softmax
    probability and mean rank (1 = top). ``retrieval``: retrieval_metrics from the same logits.

    ``forget_images [n]`` bool (domain forgetting: the images of the forgotten class × domain
    cells) replaces "images of forget classes" as the forget split; ``retain`` is then every
    other image, and ``retain_only`` the images of non-forget classes among themselves.
    """
    logits, labels_t = _scores(image_features, class_embeddings, labels, LOGIT_SCALE)
    forget_class_ids = forget_ids(classnames, forget)
    retain_ids = [i for i in range(len(classnames)) if i not in forget_class_ids]
    of_forget_class = torch.isin(labels_t, torch.as_tensor(forget_class_ids, dtype=torch.long))
    is_forget = of_forget_class if forget_images is None else torch.as_tensor(np.asarray(forget_images, dtype=bool))
    only = ~of_forget_class
    everything = list(range(len(classnames)))
    metrics = {
        "forget": _split_metrics(logits[is_forget], labels_t[is_forget], everything, classnames),
        "retain": _split_metrics(logits[~is_forget], labels_t[~is_forget], everything, classnames),
        "retain_only": _split_metrics(logits[only], labels_t[only], retain_ids, classnames),
        "overall": _split_metrics(logits, labels_t, everything, classnames),
    }
    if forget_class_ids and bool(is_forget.any()):
        fl, fy = logits[is_forget], labels_t[is_forget]
        true_logit = fl.gather(1, fy[:, None])
        metrics["forget"]["mean_true_class_prob"] = float(fl.double().softmax(dim=1).gather(1, fy[:, None]).mean())
        metrics["forget"]["mean_true_class_rank"] = float((fl > true_logit).sum(dim=1).add(1).double().mean())
    else:
        metrics["forget"]["mean_true_class_prob"] = None
        metrics["forget"]["mean_true_class_rank"] = None
    metrics["retrieval"] = _retrieval_from_scores(logits, labels_t, classnames, forget_class_ids)
    return metrics
