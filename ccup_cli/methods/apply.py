"""Solve a method and fold its map into a model: the step the library and the unlearn job share.

``apply_unlearning`` takes embeddings already computed and the fold-site tensors as stored,
solves the method (``table.build_projector``), folds W (``backends.fold``) and returns an
``UnlearnResult``: the map, the site, the tensors before and after, and the patched model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..backends.fold import FoldSite, fold, fold_affine, offset_carrier
from ..presets import defaults
from ..text.embeddings import TextEmbeddings, close_retain_classes
from .erasure import Erasure
from .projector import Projector
from .table import MethodContext, build_projector, get_method


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
    erasure: Erasure | None = None  # erase: probe, composed after W (the fold holds M W and c)

    @property
    def W(self) -> torch.Tensor:
        return self.projector.W

    def text_side(self) -> dict:
        """For each class, cos(t_c, Wᵀ t_c): how much of its own direction the class's query keeps.

        A zero-shot logit is ``t_cᵀ W f = (Wᵀ t_c)ᵀ f``, so ``Wᵀ t_c`` is the query the patched
        model effectively scores images with. Before unlearning W = I, so the value is 1.0.
        """
        W = self.projector.W
        out = {}
        for role, emb in (("forget", self.forget), ("retain", self.retain)):
            t = emb.per_class.to(W.device, torch.float64)
            query = t @ W  # rows: Wᵀ t_c
            cos = F.cosine_similarity(query, t, dim=-1).clamp(-1, 1)
            out[role] = {c: {"before": 1.0, "after": float(v)} for c, v in zip(emb.classnames, cos.cpu())}
        return out


def apply_unlearning(
    model: nn.Module,
    site: FoldSite,
    original_tensors: dict[str, torch.Tensor],
    forget: TextEmbeddings,
    retain: TextEmbeddings,
    method: str,
    alpha: float,
    params: dict,
    inplace: bool = False,
    retain_warn_cosine: float = defaults.RETAIN_WARN_COSINE,
    context: MethodContext | None = None,
) -> UnlearnResult:
    """Solve ``method`` on embeddings already computed and fold W into ``original_tensors``.

    ``original_tensors`` are the fold-site tensors as stored in the checkpoint (their dtype
    is kept); ``params`` holds the method's parameters (``Method.params``); ``context`` carries
    what the method may ask of the model (``MethodContext``: device, text encoding, prototypes,
    reference images). Without a device the solve runs where the embeddings are.
    """
    context = context or MethodContext()
    if context.device is None:
        context = replace(context, device=forget.per_template.device)
    projector = build_projector(method, forget, retain, alpha, params, context)
    erasure = None
    if context.erase == "probe":
        # lazy: start-up time (concept-erasure loads only when asked for)
        from .references import erasure_after

        erasure = erasure_after(projector.W, forget, retain, context)
        folded = fold_affine(site, original_tensors, erasure.M @ projector.W, erasure.c, offset_carrier(model, site))
    else:
        folded = fold(site, original_tensors, projector.W)
    target = model if inplace else copy.deepcopy(model)
    with torch.no_grad():
        state = target.state_dict()
        target.load_state_dict({k: v.to(state[k].dtype) for k, v in folded.items()}, strict=False)
    close = close_retain_classes(forget, retain, retain_warn_cosine)
    return UnlearnResult(projector, site, original_tensors, folded, target, forget, retain, close,
                         get_method(method).embedding_mode(), erasure)
