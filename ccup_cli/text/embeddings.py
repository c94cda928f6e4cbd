"""Text embeddings of class names under templates: the forget side, the retain side, the classifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.catalog import generic_vocabulary
from ..runtime.progress import Progress, step_counter
from .encode import cached_encode_prompts, class_embeddings, text_cache_key
from .templates import build_prompts


@dataclass
class TextEmbeddings:
    """Per-template (``[k * n_templates, d]``) and per-class (``[k, d]``) normalised embeddings."""

    classnames: list[str]
    templates: list[str]
    per_template: torch.Tensor
    per_class: torch.Tensor
    cache_hit: bool = False
    keys: list[str] | None = None  # the class each per_class row is about (a domain group's class); None: classnames

    @property
    def class_keys(self) -> list[str]:
        return list(self.keys) if self.keys is not None else list(self.classnames)


def embed_classes(
    encode: Callable[..., torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    cache_id: str | None = None,
    model_name: str = "",
    progress: Callable[[int], None] | None = None,
    batch_size: int = 256,
    cache: Callable[..., tuple[torch.Tensor, bool]] = cached_encode_prompts,
) -> TextEmbeddings:
    """Encode every (class, template) prompt once; return per-template and per-class embeddings.

    ``encode(prompts, batch_size, progress) -> [n, d]`` is a backend's ``encode_prompts``;
    ``cache`` runs it through the on-disk cache (``encode.cached_encode_prompts``, or the
    torchrun-aware one of ``run.session.Session``).
    """
    prompts = build_prompts(classnames, templates)
    key = text_cache_key(cache_id, model_name, prompts) if cache_id else None
    feats, hit = cache(encode, prompts, key, batch_size=batch_size, progress=progress)
    per_template = F.normalize(feats.float(), dim=-1)
    per_class = class_embeddings(feats, len(classnames), len(templates))
    return TextEmbeddings(list(classnames), list(templates), per_template, per_class, hit)


def default_retain(forget: Sequence[str], dataset_classnames: Sequence[str] | None = None) -> list[str]:
    """The eval dataset's other classes, else ImageNet-1k class names less the forget classes."""
    pool = list(dataset_classnames) if dataset_classnames else generic_vocabulary()
    lowered = {f.lower() for f in forget}
    return [c for c in pool if c.lower() not in lowered]


def close_retain_classes(forget: TextEmbeddings, retain: TextEmbeddings, threshold: float) -> list[dict]:
    """Retain classes whose class embedding is within ``threshold`` cosine of a forget class."""
    if not retain.classnames:
        return []
    sims = retain.per_class @ forget.per_class.T  # [k_r, k_f]
    best, where = sims.max(dim=1)
    found = [
        {"retain": retain.classnames[i], "forget": forget.classnames[int(where[i])], "cosine": float(best[i])}
        for i in torch.nonzero(best > threshold).flatten().tolist()
    ]
    return sorted(found, key=lambda d: -d["cosine"])


def embed_forget_and_retain(
    encode: Callable[..., torch.Tensor],
    forget: Sequence[str],
    retain: Sequence[str],
    forget_templates: Sequence[str],
    retain_templates: Sequence[str],
    cache_id: str | None = None,
    model_name: str = "",
    progress: Progress | None = None,
    cache: Callable[..., tuple[torch.Tensor, bool]] = cached_encode_prompts,
) -> tuple[TextEmbeddings, TextEmbeddings]:
    """Text embeddings of both sides; an empty retain list gives empty ``[0, d]`` tensors."""
    forget_emb = embed_classes(encode, forget, forget_templates, cache_id, model_name,
                               step_counter(progress, "forget prompts", len(forget) * len(forget_templates)),
                               cache=cache)
    if retain:
        retain_emb = embed_classes(encode, retain, retain_templates, cache_id, model_name,
                                   step_counter(progress, "retain prompts", len(retain) * len(retain_templates)),
                                   cache=cache)
    else:
        empty = torch.empty(0, forget_emb.per_class.shape[1])
        retain_emb = TextEmbeddings([], list(retain_templates), empty, empty)
    return forget_emb, retain_emb
