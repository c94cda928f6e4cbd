"""What the class sides hold, decided once with the model's own text embeddings.

Two decisions need the loaded text tower, so they are made here, after the door and before
the solve (the rule is ``text/concepts.py``):

- each concept of ``forget_concepts`` covers some evaluation classes: those join the forget
  side and the forget split, and leave the retain side; the concept's own word joins the
  forget side too;
- with no eval dataset and no ``retain``, the retain side is the ImageNet-1k names less the
  forget names, less the names near a forget name (synonyms, hyponyms: "sandal", "clogs" when
  forgetting sneaker), unless ``keep_near_retain``.

``Choices.record`` says what was decided and why, for the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..data.catalog import generic_vocabulary
from ..errors import SpecError
from ..text.concepts import cover, near_names
from ..text.embeddings import TextEmbeddings, default_retain

if TYPE_CHECKING:  # pragma: no cover
    from .door import Plan


@dataclass
class Choices:
    """Both class sides' embeddings and names, and the record of how they were chosen."""

    forget: TextEmbeddings
    retain: TextEmbeddings
    forget_names: list[str]  # the classes of the forget split (forget classes and covered classes)
    retain_names: list[str]
    record: dict = field(default_factory=dict)  # report keys: "concepts", "retain_vocabulary"
    warnings: list[str] = field(default_factory=list)


def _union(*lists: Sequence[str]) -> list[str]:
    seen, out = set(), []
    for names in lists:
        for n in names:
            if n.lower() not in seen:
                seen.add(n.lower())
                out.append(n)
    return out


def subset(emb: TextEmbeddings, rows: Sequence[int]) -> TextEmbeddings:
    """The classes ``rows`` of class-major embeddings (``per_template`` holds each class's templates together)."""
    n_templates = len(emb.templates)
    index = torch.tensor(list(rows), dtype=torch.long)
    template_rows = (index[:, None] * n_templates + torch.arange(n_templates)[None, :]).flatten()
    return TextEmbeddings([emb.classnames[i] for i in rows], list(emb.templates), emb.per_template[template_rows],
                          emb.per_class[index], emb.cache_hit)


def concept_coverage(session, plan: Plan, classnames: Sequence[str]) -> list[dict]:
    """``text.concepts.cover`` of the spec's concepts over the eval classes, every side embedded
    with the retain templates, standardised against the ImageNet-1k names. ``session`` is a
    ``session.Session`` (not imported here: it imports this module)."""
    spec = plan.spec
    templates = plan.retain_templates
    with session.timer("concepts"):
        concept_emb = session.classifier(spec.forget_concepts, templates)
        class_emb = session.classifier(list(classnames), templates)
        reference_emb = session.classifier(generic_vocabulary(), templates)
    return cover(spec.forget_concepts, concept_emb, list(classnames), class_emb, reference_emb,
                 spec.concept_threshold, spec.concept_classes)


def choose_sides(session, plan: Plan) -> Choices:
    """The forget and retain class sides of a plan without domains or free prompts (see the module doc)."""
    spec, dataset = plan.spec, plan.dataset
    classnames = list(dataset.classnames) if dataset is not None else None
    record: dict = {}
    warnings: list[str] = []
    covered: list[str] = []
    if spec.forget_concepts and classnames:
        coverage = concept_coverage(session, plan, classnames)
        covered = _union(*(r["covers"] for r in coverage))
        record["concepts"] = {"rule": "z >= threshold: cosine to the class, standardised by the concept's cosines "
                                      "to the ImageNet-1k names (retain templates)",
                              "threshold": spec.concept_threshold, "covered": covered, "per_concept": coverage}
        empty = [(i, r) for i, r in enumerate(coverage) if not r["covers"] and r["decided_by"] == "similarity"]
        if empty:  # forgetting a word that covers nothing would only move the classes it does not cover
            raise SpecError([f'forget_concepts[{i}]: "{r["concept"]}" covers no class of {dataset.name} (closest: '
                             f'"{r["similarity"][0]["class"]}", z {r["similarity"][0]["z"]:.2f} < '
                             f"{spec.concept_threshold:g})" for i, r in empty],
                            f"lower concept_threshold, name its classes with --concept-classes "
                            f"{empty[0][1]['concept']}=CLASS+CLASS ({empty[0][1]['concept']}= forgets the word "
                            "alone), or drop it")
        if spec.retain is not None:
            lowered = {c.lower() for c in covered}
            clash = [f'retain[{i}]: "{c}" is covered by a forget concept; drop it from retain, or name the covered '
                     "classes with concept_classes" for i, c in enumerate(spec.retain) if c.lower() in lowered]
            if clash:
                raise SpecError(clash)
    elif spec.forget_concepts:
        record["concepts"] = {"rule": "no eval dataset: each concept is forgotten as a name", "covered": [],
                              "per_concept": [{"concept": c, "covers": [], "decided_by": "no eval dataset"}
                                              for c in spec.forget_concepts]}
    forget_classes = _union(spec.forget, covered)
    forget_words = _union(forget_classes, spec.forget_concepts)
    forget_names = forget_classes if classnames else forget_words
    filter_near = spec.retain is None and classnames is None
    if spec.retain is not None:
        retain_names = list(spec.retain)
    elif classnames is not None:
        retain_names = default_retain(forget_classes, classnames)
    else:
        retain_names = default_retain(forget_words)
    forget, retain = session.embed_sides(forget_words, retain_names, plan.templates, plan.retain_templates)
    if filter_near and retain_names:
        keep, left_out = near_names(forget_words, forget.per_class, retain_names, retain.per_class,
                                    spec.near_retain_threshold)
        record["retain_vocabulary"] = {
            "vocabulary": "ImageNet-1k class names less the forget names", "size": len(retain_names),
            "rule": "left out: z >= threshold to a forget name (cosine standardised by that name's cosines to "
                    "the vocabulary)",
            "threshold": spec.near_retain_threshold, "kept_by_user": spec.keep_near_retain, "near": left_out}
        if not spec.keep_near_retain and left_out:
            retain = subset(retain, keep)
            retain_names = list(retain.classnames)
    return Choices(forget, retain, forget_names, retain_names, record, warnings)
