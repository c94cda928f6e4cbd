"""The metrics of one model state from cached features, and the difference of two states.

Only one final linear map changes. With the fold on the image side, each image is encoded once,
up to ``pre_projection_features [n, width]``; with the fold on the text side, the image features
do not change and the classifier's prompts are encoded once up to the text site
(``prompts_before_fold [C, K, width]``). ``metrics_for`` puts the cached features of that state
through its fold-site tensors (``features_at``), then reads plain zero-shot metrics
(``zero_shot``), per domain on a domain dataset (``domains``). ``delta`` is after − before,
field by field.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..backends.fold import FoldSite, project
from ..data.dataset import EvalDataset
from ..text.encode import class_embeddings as template_average
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


def features_at(
    site: FoldSite,
    tensors: dict[str, torch.Tensor],
    pre_projection_features: torch.Tensor,
    class_embeddings: torch.Tensor,
    prompts_before_fold: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image features ``[n, d]``, class embeddings ``[C, d]``) of the model whose fold site holds ``tensors``.

    Image side: the class embeddings stay and the images go through the site. Text side:
    ``pre_projection_features`` are the image features as they are, and the classifier is
    rebuilt from ``prompts_before_fold [C, K, width]`` by the usual recipe (normalise each
    template, average, renormalise) after the site. Without them, ``class_embeddings`` is
    taken as the loaded model's own classifier (``tensors`` must then be its own).
    """
    if site.side == "image":
        return project(site, tensors, pre_projection_features), class_embeddings
    if prompts_before_fold is None:
        return pre_projection_features, class_embeddings
    n_classes, n_templates, width = prompts_before_fold.shape
    prompts = project(site, tensors, prompts_before_fold.reshape(-1, width))
    return pre_projection_features, template_average(prompts, n_classes, n_templates).to(pre_projection_features.device)


def metrics_for(
    site: FoldSite,
    tensors: dict[str, torch.Tensor],
    pre_projection_features: torch.Tensor,
    class_embeddings: torch.Tensor,
    dataset: EvalDataset,
    forget: Sequence[str],
    forget_domains: Sequence[str] = (),
    prompts_before_fold: torch.Tensor | None = None,
) -> dict:
    """Metrics of the model whose fold site holds ``tensors``, from cached features.

    A domain dataset adds ``domains.<domain>`` (``domains.domain_aware_metrics``); with
    ``forget_domains`` the forget split is the forgotten class × domain cells. A text-side
    site needs ``prompts_before_fold`` (see ``features_at``).
    """
    feats, class_embeddings = features_at(site, tensors, pre_projection_features, class_embeddings,
                                          prompts_before_fold)
    if dataset.domains is None:
        return zero_shot_metrics(feats, class_embeddings, dataset.labels, dataset.classnames, forget)
    return domain_aware_metrics(feats, class_embeddings, dataset, forget, forget_domains)
