"""``domain-edit``: forget classes in one domain with a rank-one logit edit read off unlabelled images.

Pure torch, float64, no I/O. Class and domain are close to additive in CLIP-like features
(a sketch of a sandal ≈ sandal + sketch), so no map on the text side alone can lower "sandal
in sketch" and keep "sandal in photo" (``bilinear.py`` explains why). A zero-shot logit is
bilinear, ``t_kᵀ W f``, and a rank-one ``W − I = −β Σ_c u_c vᵀ`` has no such conflict:

- the **write** directions ``u_c`` are the duals of the classifier's class embeddings
  (``t_kᵀ u_c = 1`` for ``k = c``, else 0), so the edit moves the forget classes' logits and
  no other class's;
- the **read** direction ``v`` answers "is this image in the forgotten domain?": a ridge fit
  of ``vᵀ x_i`` to 1 on the forgotten domain's reference images and to 0 on the other
  domains' (L2-normalised features of the original model, each domain weighted the same).
  It needs unlabelled images of every domain, of any class; none of the forgotten class;
- the **strength** ``β`` needs no label either: the largest drop in units of ``vᵀ x`` that
  it takes to move *any* class off the top of *any* forgotten-domain reference image
  (top-1 logit minus top-2 logit, over ``vᵀ x``), times ``margin``.

So on an image ``f`` the forget class's logit falls by ``β vᵀ f`` (about β on the forgotten
domain, about 0 elsewhere) and every other logit is unchanged. The spread of ``vᵀ f`` on the
kept domains is what the edit costs there: a kept-domain image of the forget class with
``vᵀ f > 0`` loses some of its logit, and one of another class with ``vᵀ f < 0`` sees the
forget class rise.

**A whole domain** (every class forgotten in it) cannot be removed by lowering every class:
equal drops change no argmax, and a fixed direction cannot erase each image's own class. The
edit instead sends the domain's images to one class, ``W = I + β u_k vᵀ``: their zero-shot
prediction then carries no information (top-1 at chance on a balanced set). ``k`` is the
class that needs the smallest strength on the references (label-free), and ``β`` is the
strength that makes ``k`` the top class of every forgotten-domain reference, times ``margin``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_RIDGE = 1e-4  # λ of the read direction's ridge fit: chosen on the validation split (bench_domains)
DEFAULT_MARGIN = 1.5  # strength = margin × the smallest that clears the references: validation split
MIN_READ = 1e-3  # vᵀx below this on a forgotten-domain reference is treated as this (no division by ~0)


@dataclass
class DomainEdit:
    """The full-strength map and how it was made."""

    W: torch.Tensor  # [d, d] float64
    read: torch.Tensor  # v [d]
    strength: float  # β
    mode: str  # "lower" (classes in a domain) or "collapse" (a whole domain, sent to one class)
    target_class: int | None  # collapse: the class the domain's images are sent to
    read_on_references: dict[str, tuple[float, float]]  # domain -> mean, std of vᵀx on its references


def read_direction(features: torch.Tensor, in_forgotten: torch.Tensor, domain_ids: torch.Tensor,
                   ridge: float = DEFAULT_RIDGE) -> torch.Tensor:
    """``v [d]``: ridge fit of ``vᵀx`` to 1 on forgotten-domain rows and 0 on the others.

    ``features [n, d]`` (normalised here), ``in_forgotten [n]`` bool, ``domain_ids [n]`` int
    (each domain's rows weigh 1 in total, so a domain with more images does not dominate).
    """
    if ridge <= 0:
        raise ValueError("ridge must be > 0")
    x = F.normalize(features.double(), dim=-1)
    target = in_forgotten.to(torch.float64)
    if bool(in_forgotten.all()) or not bool(in_forgotten.any()):
        raise ValueError("the read direction needs reference images of the forgotten domain and of another domain")
    weight = torch.zeros(len(x), dtype=torch.float64)
    for d in torch.unique(domain_ids):
        rows = domain_ids == d
        weight[rows] = 1.0 / int(rows.sum())
    gram = (x * weight[:, None]).T @ x + ridge * torch.eye(x.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, (x * weight[:, None]).T @ target)


def write_directions(class_embeddings: torch.Tensor) -> torch.Tensor:
    """``U [d, C]``, the duals of ``class_embeddings [C, d]`` (normalised): ``T U = I`` for ``C ≤ d``."""
    t = F.normalize(class_embeddings.double(), dim=-1)
    return torch.linalg.pinv(t)


def lowering_strength(read: torch.Tensor, forgotten_features: torch.Tensor, class_embeddings: torch.Tensor,
                      margin: float = DEFAULT_MARGIN) -> float:
    """β that takes any class off the top of every forgotten-domain reference, times ``margin``.

    Label-free: it does not know which references (if any) show the forget class, so it clears
    the largest top-1 − top-2 gap among them, in units of ``vᵀx``.
    """
    x = F.normalize(forgotten_features.double(), dim=-1)
    logits = x @ F.normalize(class_embeddings.double(), dim=-1).T
    top = logits.topk(2, dim=1).values
    need = (top[:, 0] - top[:, 1]) / (x @ read).clamp(min=MIN_READ)
    return margin * float(need.max())


def collapse_target(read: torch.Tensor, forgotten_features: torch.Tensor, class_embeddings: torch.Tensor,
                    margin: float = DEFAULT_MARGIN) -> tuple[int, float]:
    """``(k, β)``: the class that becomes the top of every forgotten-domain reference at the smallest
    strength, and that strength times ``margin``."""
    x = F.normalize(forgotten_features.double(), dim=-1)
    logits = x @ F.normalize(class_embeddings.double(), dim=-1).T  # [n, C]
    gap = logits.max(dim=1, keepdim=True).values - logits
    need = (gap / (x @ read).clamp(min=MIN_READ)[:, None]).max(dim=0).values  # [C]
    k = int(need.argmin())
    return k, margin * float(need[k])


def domain_edit_map(class_embeddings: torch.Tensor, forget_ids: list[int], references: dict[str, torch.Tensor],
                    forget_domains: list[str], ridge: float = DEFAULT_RIDGE, margin: float = DEFAULT_MARGIN,
                    device: torch.device | str | None = None) -> DomainEdit:
    """The full-strength edit (see the module doc).

    ``class_embeddings [C, d]`` are the zero-shot classifier's class vectors; ``forget_ids``
    the forget classes (all ``C``: a whole domain); ``references`` maps every domain to its
    reference image features ``[n_d, d]`` (the original model, after its final map).
    """
    missing = [d for d in forget_domains if d not in references]
    if missing:
        raise ValueError(f"no reference images for forgotten domain(s) {', '.join(missing)}")
    if not set(references) - set(forget_domains):
        raise ValueError("the read direction needs reference images of at least one kept domain")
    if not forget_ids:
        raise ValueError("no forget classes")
    names = list(references)
    out_device = device or class_embeddings.device
    # the solve runs on the CPU in float64, wherever the model's tensors live
    class_embeddings = class_embeddings.detach().cpu()
    feats = torch.cat([references[d].detach().cpu().double() for d in names])
    domain_ids = torch.cat([torch.full((len(references[d]),), i, dtype=torch.long) for i, d in enumerate(names)])
    in_forgotten = torch.isin(domain_ids, torch.tensor([names.index(d) for d in forget_domains]))
    v = read_direction(feats, in_forgotten, domain_ids, ridge)
    t = F.normalize(class_embeddings.double(), dim=-1)
    U = write_directions(t)
    forgotten = feats[in_forgotten]
    eye = torch.eye(t.shape[1], dtype=torch.float64)
    if len(set(forget_ids)) == len(t):  # a whole domain: send its images to one class
        k, beta = collapse_target(v, forgotten, t, margin)
        W = eye + beta * U[:, k:k + 1] @ v[None, :]
        mode, target = "collapse", k
    else:
        beta = lowering_strength(v, forgotten, t, margin)
        W = eye - beta * U[:, sorted(set(forget_ids))].sum(dim=1, keepdim=True) @ v[None, :]
        mode, target = "lower", None
    reads = {}
    for i, d in enumerate(names):
        r = F.normalize(feats[domain_ids == i], dim=-1) @ v
        reads[d] = (float(r.mean()), float(r.std()) if len(r) > 1 else 0.0)
    return DomainEdit(W.to(out_device), v, beta, mode, target, reads)
