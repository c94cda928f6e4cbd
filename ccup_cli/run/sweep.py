"""Strength sweeps: every method at every α from one pass over the images.

The full-strength map of each method is solved once; ``W_α = I − α(I − W)`` is then a
blend, folded into the fold-site tensors and applied to the cached pre-projection features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..backends.fold import FoldSite, fold
from ..data.dataset import EvalDataset
from ..methods.projector import blend
from ..methods.table import MethodContext, solve_full_map, split_variant
from ..metrics.compare import metrics_for
from ..text.embeddings import TextEmbeddings


@dataclass
class SweepInputs:
    """What a sweep needs, all computed once: features, classifier, embeddings, fold site.

    ``pre_projection_features`` are the image features before an image-side site, or the image
    features themselves with a text-side site (then ``prompts_before_fold`` holds the classifier's side).
    """

    site: FoldSite
    original_tensors: dict[str, torch.Tensor]
    pre_projection_features: torch.Tensor  # [n, width]
    classifier: torch.Tensor  # [C, d] class embeddings of the dataset
    dataset: EvalDataset
    forget: TextEmbeddings
    retain: TextEmbeddings
    feature_cache_hit: bool = False
    forget_domains: tuple[str, ...] = ()  # domain forgetting: the forget split is these domains' cells
    forget_names: list[str] | None = None  # the classes of the forget split, when not the spec's forget list
    prompts_before_fold: torch.Tensor | None = None  # text-side site: classifier prompts before it [C, K, width]


def run_sweep(
    inputs: SweepInputs,
    methods: Sequence[str],
    alphas: Sequence[float],
    forget_names: Sequence[str],
    params: dict[str, dict],
    context: MethodContext | None = None,
) -> list[dict]:
    """One row per (method, α): the metrics of that model, in the report's metric format.

    ``methods`` holds method names or ``ccup:SINK`` variants; ``params[entry]`` holds each
    entry's parameters (``methods.table.method_params``, with the variant's override); ``context``
    is what the methods may ask of the model (``MethodContext``).
    """
    rows = []
    for method in methods:
        full = solve_full_map(split_variant(method)[0], inputs.forget, inputs.retain, params[method], context)
        for alpha in alphas:
            W = blend(full, alpha)
            tensors = inputs.original_tensors if alpha == 0 else fold(inputs.site, inputs.original_tensors, W)
            metrics = metrics_for(inputs.site, tensors, inputs.pre_projection_features, inputs.classifier,
                                  inputs.dataset, forget_names, inputs.forget_domains, inputs.prompts_before_fold)
            rows.append({"method": method, "alpha": alpha, "params": params[method], "metrics": metrics})
    return rows

