"""The metrics of one model state from cached features, and the difference of two states.

``metrics_for`` projects the cached pre-projection features through the fold-site tensors of
that state, then reads plain zero-shot metrics (``zero_shot``), per domain on a domain dataset
(``domains``). ``delta`` is after − before, field by field.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..backends.fold import FoldSite, project
from ..data.dataset import EvalDataset
from .domains import domain_aware_metrics
from .zero_shot import zero_shot_metrics


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
    forget_domains: Sequence[str] = (),
) -> dict:
    """Metrics of the model whose fold site holds ``tensors``, from cached features.

    A domain dataset adds ``domains.<domain>`` (``domains.domain_aware_metrics``); with
    ``forget_domains`` the forget split is the forgotten class × domain cells.
    """
    feats = project(site, tensors, pre_projection_features)
    if dataset.domains is None:
        return zero_shot_metrics(feats, class_embeddings, dataset.labels, dataset.classnames, forget)
    return domain_aware_metrics(feats, class_embeddings, dataset, forget, forget_domains)
