"""Zero-shot metrics of a domain dataset: the usual splits, and the same splits per domain.

With ``forget_domains`` the forget split is the images of the forgotten (class, domain)
cells; ``retain`` is every other image, the same classes in kept domains included. Each
``domains.<domain>`` entry holds the splits of ``zero_shot.zero_shot_metrics`` over that
domain's images alone, so ``domains.sketch.overall.per_class`` is the sketch row of the class
× domain grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .zero_shot import forget_ids, zero_shot_metrics


def forget_cells(dataset, forget: Sequence[str], forget_domains: Sequence[str] = ()) -> np.ndarray:
    """``[n]`` bool: images of a forget class (in a forgotten domain, when ``forget_domains`` is given)."""
    labels = np.asarray(dataset.labels)
    mask = np.isin(labels, forget_ids(dataset.classnames, forget))
    if forget_domains:
        wanted = [dataset.domain_names.index(d) for d in forget_domains]
        mask &= np.isin(np.asarray(dataset.domains), wanted)
    return mask


def domain_aware_metrics(image_features: torch.Tensor, class_embeddings: torch.Tensor, dataset,
                         forget: Sequence[str], forget_domains: Sequence[str] = ()) -> dict:
    """``zero_shot_metrics`` over all images with the cell-level forget split, plus ``domains``."""
    cells = forget_cells(dataset, forget, forget_domains)
    metrics = zero_shot_metrics(image_features, class_embeddings, dataset.labels, dataset.classnames, forget, cells)
    metrics["domains"] = {}
    domains = np.asarray(dataset.domains)
    for k, name in enumerate(dataset.domain_names):
        rows = np.flatnonzero(domains == k)
        if len(rows) == 0:
            continue
        metrics["domains"][name] = zero_shot_metrics(image_features[torch.as_tensor(rows)], class_embeddings,
                                                     dataset.labels[rows], dataset.classnames, forget, cells[rows])
    return metrics


def cell_grid(metrics: dict, classes: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """``{class: {domain: top-1}}`` from a metrics tree's ``domains.<d>.overall.per_class``."""
    grid = {}
    for c in classes:
        grid[c] = {d: m["overall"]["per_class"].get(c) for d, m in metrics.get("domains", {}).items()}
    return grid
