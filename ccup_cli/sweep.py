"""Strength sweeps: every method at every α from one pass over the images.

The full-strength map of each method is solved once; ``W_α = I − α(I − W)`` is then a
blend, folded into the fold-site tensors and applied to the cached pre-projection features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .api import TextEmbeddings
from .data import EvalDataset
from .evaluate import metrics_for
from .fold import FoldSite, fold
from .projector import blend, build_projector


@dataclass
class SweepInputs:
    """What a sweep needs, all computed once: features, classifier, embeddings, fold site."""

    site: FoldSite
    original_tensors: dict[str, torch.Tensor]
    pre_projection_features: torch.Tensor  # [n, width]
    classifier: torch.Tensor  # [C, d] class embeddings of the dataset
    dataset: EvalDataset
    forget: TextEmbeddings
    retain: TextEmbeddings
    feature_cache_hit: bool = False


def parse_alphas(text: str) -> list[float]:
    """``"0,0.1,...,1"`` (an arithmetic range spelled with ``...``) or a plain comma list."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if "..." in parts:
        i = parts.index("...")
        if i < 2 or i != len(parts) - 2:
            raise ValueError('write a range as "start,next,...,end", e.g. 0,0.1,...,1')
        start, step_to, end = float(parts[i - 2]), float(parts[i - 1]), float(parts[i + 1])
        step = step_to - start
        if step <= 0:
            raise ValueError("a range needs increasing values")
        n = int(round((end - start) / step))
        head = [float(p) for p in parts[: i - 2]]
        return head + [round(start + k * step, 10) for k in range(n + 1)]
    return [float(p) for p in parts]


def run_sweep(
    inputs: SweepInputs,
    methods: Sequence[str],
    alphas: Sequence[float],
    forget_names: Sequence[str],
    lambda_retain: float,
    lambda_identity: float,
    energy: float,
) -> list[dict]:
    """One row per (method, α): the metrics of that model, in the report's metric format."""
    rows = []
    for method in methods:
        forget_input = inputs.forget.per_class if method == "nullspace" else inputs.forget.per_template
        full = build_projector(method, forget_input, inputs.retain.per_template if len(inputs.retain.classnames)
                               else None, 1.0, lambda_retain, lambda_identity, energy)
        for alpha in alphas:
            W = blend(full.W, alpha)
            tensors = inputs.original_tensors if alpha == 0 else fold(inputs.site, inputs.original_tensors, W)
            metrics = metrics_for(inputs.site, tensors, inputs.pre_projection_features, inputs.classifier,
                                  inputs.dataset, forget_names)
            rows.append({"method": method, "alpha": alpha, "params": full.params, "metrics": metrics})
    return rows


def smallest_alpha_meeting(rows: list[dict], method: str, max_forget_acc: float) -> dict | None:
    """The row with the smallest α of ``method`` whose forget top-1 is at most ``max_forget_acc``."""
    candidates = [r for r in rows if r["method"] == method and r["metrics"]["forget"]["top1"] is not None
                  and r["metrics"]["forget"]["top1"] <= max_forget_acc]
    return min(candidates, key=lambda r: r["alpha"]) if candidates else None


def plot_tradeoff(rows: list[dict], path, title: str) -> None:
    """retain top-1 (x) against forget top-1 (y), one curve per method, α = 0 and 1 marked.

    Needs matplotlib (the ``plot`` extra); imported here so the core never needs it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["alpha"])
        xs = [r["metrics"]["retain"]["top1"] for r in pts]
        ys = [r["metrics"]["forget"]["top1"] for r in pts]
        (line,) = ax.plot(xs, ys, marker=".", label=method)
        for r, x, y in zip(pts, xs, ys):
            if r["alpha"] in (0.0, 1.0):
                ax.annotate(f"α={r['alpha']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8,
                            color=line.get_color())
    ax.set_xlabel("retain top-1 (all classes as candidates)")
    ax.set_ylabel("forget top-1")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
