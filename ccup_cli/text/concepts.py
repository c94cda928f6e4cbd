"""Which classes a word covers, and which names lie too close to a forget name: similarity in the
model's own text space.

Similarity is the cosine between template-averaged, renormalised text embeddings. A raw cosine
means different things in different text towers (a CLIP's names all sit at 0.7-0.9; a small
head over a sentence encoder spreads them wider), so each query's cosines are standardised
against its cosines to a reference vocabulary (the ImageNet-1k names)::

    z(q, c) = (cos(q, c) - mean_v cos(q, v)) / std_v cos(q, v)

``z`` says how unusually close ``c`` is to ``q``, in standard deviations of ``q``'s closeness to
a thousand everyday object names. One rule serves both uses:

- a concept (``forget_concepts``, e.g. "footwear") covers each evaluation class with
  ``z >= concept_threshold``; a concept spelled like a class covers that class only;
- a default-vocabulary name with ``z >= near_retain_threshold`` to some forget name is left out
  of the retain side (keeping "sandal" or "clogs" there pulls a forgotten sneaker back).

The thresholds are in ``presets/defaults.py``, chosen on the validation split
(``scripts/tune_concepts.py``). Tensors here are ``[n, d]`` float, rows L2-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def standardised_similarity(queries: torch.Tensor, candidates: torch.Tensor,
                            reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cosine [q, c], z [q, c])``: each query row's cosines to the candidates, and the same
    standardised by the mean and standard deviation of that query's cosines to ``reference [v, d]``."""
    cosine = queries.double() @ candidates.double().T
    to_reference = queries.double() @ reference.double().T
    mean = to_reference.mean(dim=1, keepdim=True)
    std = to_reference.std(dim=1, keepdim=True).clamp_min(1e-12)
    return cosine, (cosine - mean) / std


def cover(concepts: Sequence[str], concept_emb: torch.Tensor, classnames: Sequence[str], class_emb: torch.Tensor,
          reference_emb: torch.Tensor, threshold: float,
          named: dict[str, list[str]] | None = None) -> list[dict]:
    """The classes each concept covers, and why: one record per concept.

    ``{"concept", "covers": [class, ...] (in class order), "decided_by": "similarity" | "class name" |
    "user", "similarity": [{"class", "cosine", "z"}, ...] (every class, closest first)}``.
    ``named`` (``concept_classes``) decides for the concepts it lists: the user's classes, as given.
    """
    cosine, z = standardised_similarity(concept_emb, class_emb, reference_emb)
    lowered = {c.lower(): c for c in classnames}
    named = {k.lower(): v for k, v in (named or {}).items()}
    records = []
    for i, concept in enumerate(concepts):
        order = torch.argsort(z[i], descending=True).tolist()
        similarity = [{"class": classnames[j], "cosine": round(float(cosine[i, j]), 4), "z": round(float(z[i, j]), 3)}
                      for j in order]
        if concept.lower() in named:
            wanted = {n.lower() for n in named[concept.lower()]}
            covers, how = [c for c in classnames if c.lower() in wanted], "user"
        elif concept.lower() in lowered:
            covers, how = [lowered[concept.lower()]], "class name"
        else:
            covers = [c for j, c in enumerate(classnames) if float(z[i, j]) >= threshold]
            how = "similarity"
        records.append({"concept": concept, "covers": covers, "decided_by": how, "similarity": similarity})
    return records


def near_names(forget: Sequence[str], forget_emb: torch.Tensor, vocabulary: Sequence[str],
               vocabulary_emb: torch.Tensor, threshold: float) -> tuple[list[int], list[dict]]:
    """The vocabulary rows to keep, and the names left out for being near a forget name.

    A name is near when its ``z`` to some forget name (standardised against the vocabulary itself)
    is at least ``threshold``. Left out: ``[{"name", "forget", "cosine", "z"}, ...]``, closest first;
    ``forget`` is the forget name it is nearest to (by z).
    """
    if not vocabulary:
        return [], []
    cosine, z = standardised_similarity(forget_emb, vocabulary_emb, vocabulary_emb)
    best_z, where = z.max(dim=0)
    keep, left_out = [], []
    for j, name in enumerate(vocabulary):
        if float(best_z[j]) >= threshold:
            i = int(where[j])
            left_out.append({"name": name, "forget": forget[i], "cosine": round(float(cosine[i, j]), 4),
                             "z": round(float(best_z[j]), 3)})
        else:
            keep.append(j)
    return keep, sorted(left_out, key=lambda r: -r["z"])
