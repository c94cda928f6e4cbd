"""``unlearn``: the library entry point for an in-memory open_clip model.

    import open_clip, ccup_cli
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained="openai")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    result = ccup_cli.unlearn(model, tokenizer, forget=["cat", "dog"], alpha=0.9)
    result.model  # a patched copy (or the same model with inplace=True)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .data import generic_vocabulary
from .fold import FoldSite, fold, locate_fold_site, site_tensors
from .projector import (
    DEFAULT_ENERGY,
    DEFAULT_LAMBDA_IDENTITY,
    DEFAULT_LAMBDA_RETAIN,
    Projector,
    build_projector,
)
from .spec import DEFAULT_FORGET_TEMPLATES, DEFAULT_RETAIN_TEMPLATES, DEFAULT_RETAIN_WARN_COSINE
from .text import build_prompts, cached_encode_prompts, class_embeddings, load_templates, text_cache_key


@dataclass
class TextEmbeddings:
    """Per-template (``[k * n_templates, d]``) and per-class (``[k, d]``) normalised embeddings."""

    classnames: list[str]
    templates: list[str]
    per_template: torch.Tensor
    per_class: torch.Tensor
    cache_hit: bool = False


@dataclass
class UnlearnResult:
    """What ``unlearn`` computed: the map, where it went, and the patched model."""

    projector: Projector
    site: FoldSite
    original_tensors: dict[str, torch.Tensor]  # fold-site tensors before, in the model's dtype
    folded_tensors: dict[str, torch.Tensor]  # fold-site tensors after
    model: nn.Module
    forget: TextEmbeddings
    retain: TextEmbeddings
    close_retain: list[dict] = field(default_factory=list)  # retain classes near a forget class
    embedding_mode: dict = field(default_factory=dict)

    @property
    def W(self) -> torch.Tensor:
        return self.projector.W

    def text_side(self) -> dict:
        """For each class, cos(t_c, W t_c): how much of its own direction the image map keeps.

        Before unlearning W = I, so the value is 1.0 for every class.
        """
        W = self.projector.W
        out = {}
        for role, emb in (("forget", self.forget), ("retain", self.retain)):
            t = emb.per_class.to(W.device, torch.float64)
            response = t @ W.T  # rows: W t_c
            cos = F.cosine_similarity(response, t, dim=-1).clamp(-1, 1)
            out[role] = {c: {"before": 1.0, "after": float(v)} for c, v in zip(emb.classnames, cos.cpu())}
        return out


def _templates(value: str | Sequence[str]) -> list[str]:
    return load_templates(value) if isinstance(value, str) else list(value)


def embed_classes(
    model: nn.Module,
    tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str],
    cache_id: str | None = None,
    model_name: str = "",
    progress: Callable[[int], None] | None = None,
    batch_size: int = 256,
) -> TextEmbeddings:
    """Encode every (class, template) prompt once; return per-template and per-class embeddings."""
    prompts = build_prompts(classnames, templates)
    key = text_cache_key(cache_id, model_name, prompts) if cache_id else None
    feats, hit = cached_encode_prompts(model, tokenizer, prompts, key, batch_size=batch_size, progress=progress)
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
    sims = retain.per_class @ forget.per_class.T  # [k_r, k_f]
    best, where = sims.max(dim=1)
    found = [
        {"retain": retain.classnames[i], "forget": forget.classnames[int(where[i])], "cosine": float(best[i])}
        for i in torch.nonzero(best > threshold).flatten().tolist()
    ]
    return sorted(found, key=lambda d: -d["cosine"])


def embed_forget_and_retain(
    model: nn.Module,
    tokenizer,
    forget: Sequence[str],
    retain: Sequence[str],
    forget_templates: Sequence[str],
    retain_templates: Sequence[str],
    cache_id: str | None = None,
    model_name: str = "",
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[TextEmbeddings, TextEmbeddings]:
    """Text embeddings of both sides; an empty retain list gives empty ``[0, d]`` tensors."""

    def phase(name: str, total: int):
        if progress is None:
            return None
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            progress(name, done[0], total)

        return step

    was_training = model.training
    model.eval()
    forget_emb = embed_classes(model, tokenizer, forget, forget_templates, cache_id, model_name,
                               phase("forget prompts", len(forget) * len(forget_templates)))
    if retain:
        retain_emb = embed_classes(model, tokenizer, retain, retain_templates, cache_id, model_name,
                                   phase("retain prompts", len(retain) * len(retain_templates)))
    else:
        empty = torch.empty(0, forget_emb.per_class.shape[1])
        retain_emb = TextEmbeddings([], list(retain_templates), empty, empty)
    model.train(was_training)
    return forget_emb, retain_emb


def unlearn(
    model: nn.Module,
    tokenizer,
    forget: Sequence[str],
    retain: Sequence[str] | None = None,
    alpha: float = 1.0,
    method: str = "ccup",
    templates: str | Sequence[str] = DEFAULT_FORGET_TEMPLATES,
    retain_templates: str | Sequence[str] = DEFAULT_RETAIN_TEMPLATES,
    lambda_retain: float = DEFAULT_LAMBDA_RETAIN,
    lambda_identity: float = DEFAULT_LAMBDA_IDENTITY,
    energy: float = DEFAULT_ENERGY,
    inplace: bool = False,
    retain_warn_cosine: float = DEFAULT_RETAIN_WARN_COSINE,
    original_tensors: dict[str, torch.Tensor] | None = None,
    cache_id: str | None = None,
    model_name: str = "",
    progress: Callable[[str, int, int], None] | None = None,
    device: str | torch.device | None = None,
    embeddings: tuple[TextEmbeddings, TextEmbeddings] | None = None,
) -> UnlearnResult:
    """Make ``model`` forget ``forget`` by folding a closed-form map into its image tower.

    ``retain`` defaults to ImageNet-1k class names less the forget classes. ``templates``
    and ``retain_templates`` are a set name (openai, simple, photo), a file, or a list of
    ``"{}"`` strings. CCUP uses per-template embeddings on both sides; nullspace uses the
    forget classes' template-averaged embeddings. ``original_tensors`` lets a caller pass the
    fold-site tensors as stored in the checkpoint (their dtype is kept). ``progress(phase,
    done, total)`` reports text encoding. ``embeddings`` passes (forget, retain) embeddings
    already computed with ``embed_classes``. Returns an ``UnlearnResult``.
    """
    forget = list(forget)
    if not forget:
        raise ValueError("forget must name at least one class")
    retain = default_retain(forget) if retain is None else list(retain)
    site = locate_fold_site(model)
    forget_templates, keep_templates = _templates(templates), _templates(retain_templates)

    if embeddings is not None:
        forget_emb, retain_emb = embeddings
    else:
        forget_emb, retain_emb = embed_forget_and_retain(
            model, tokenizer, forget, retain, forget_templates, keep_templates, cache_id, model_name, progress)
    if method == "nullspace":
        forget_input, mode = forget_emb.per_class, {"forget": "per-class (template average)", "retain": "unused"}
    else:
        forget_input, mode = forget_emb.per_template, {"forget": "per-template", "retain": "per-template"}
    projector = build_projector(
        method, forget_input, retain_emb.per_template if len(retain) else None, alpha=alpha,
        lambda_retain=lambda_retain, lambda_identity=lambda_identity, energy=energy,
        device=device or forget_emb.per_template.device,
    )
    original = original_tensors if original_tensors is not None else site_tensors(model, site)
    folded = fold(site, original, projector.W)
    target = model if inplace else copy.deepcopy(model)
    with torch.no_grad():
        state = {k: v.to(target.state_dict()[k].dtype) for k, v in folded.items()}
        target.load_state_dict(state, strict=False)
    close = close_retain_classes(forget_emb, retain_emb, retain_warn_cosine) if len(retain) else []
    return UnlearnResult(projector, site, original, folded, target, forget_emb, retain_emb, close, mode)
