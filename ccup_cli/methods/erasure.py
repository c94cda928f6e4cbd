"""``erase: probe``: a label-free linear erasure of the forget classes, fitted on reference images.

CCUP changes a linear map, so it removes zero-shot recognition but leaves what a probe trained on a
few labelled images can decode. With unlabelled reference images from the deployment distribution,
LEACE (Belrose et al. 2023, EleutherAI ``concept-erasure``) can erase more: each reference image is
pseudo-labelled by the ORIGINAL model's zero-shot (never by its folder), and LEACE is fitted on the
patched features ``W f`` against the indicator of each forget class. The result is affine,

    E(y) = M y + c        (M [d, d], c [d])

and guarantees that on the references no linear predictor of "is a forget class" beats a constant.
It is composed after the method's map, so the image tower's final features become ``M W f + c``:
``backends.fold.fold_affine`` puts ``M W`` and ``c`` into the final map (and, where the map has no
bias, through the LayerNorm before it). Backend-free: features in, tensors out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

ERASE_CHOICES = ("none", "probe")


@dataclass
class Erasure:
    """An affine erasure ``y -> M y + c`` of image features (float64) and what it was fitted on."""

    M: torch.Tensor  # [d, d]
    c: torch.Tensor  # [d]
    rank: int  # how many directions it removes
    fitted_on: int  # reference images
    positives: dict[str, int]  # pseudo-labelled reference images per forget class

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """``y [n, d]`` -> ``M y + c`` row-wise, float64."""
        return y.double() @ self.M.T.to(y.device) + self.c.to(y.device)


def recentred(erasure: Erasure, features: torch.Tensor, queries: torch.Tensor) -> Erasure:
    """``erasure`` with its offset moved along the forget queries ``queries [k, d]`` so that the erased
    ``features [n, d]`` score 0 on average under each of them.

    LEACE equalises each forget class's mean with everyone's, but CLIP ranks by cosine, and the erased
    class's images keep a smaller norm: where the shared mean scores above 0 under the class's own
    query, the class then comes out on *top* of its own search (measured: AUC 0.8-1.0 on the validation
    split). With the mean at 0 under the query, norms no longer tilt the ranking either way."""
    q = queries.double().to(features.device)
    mean = erasure(features).mean(dim=0)
    shift = torch.linalg.lstsq(q @ q.T, q @ mean).solution
    return Erasure(erasure.M, erasure.c - q.T @ shift, erasure.rank, erasure.fitted_on, erasure.positives)


def concept_erasure_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("concept_erasure") is not None


def forget_indicator(pseudo_labels: torch.Tensor, forget_ids: Sequence[int]) -> torch.Tensor:
    """``[n, k]`` float64: column j is 1 where the pseudo-label is forget class ``forget_ids[j]``."""
    z = torch.zeros(len(pseudo_labels), len(forget_ids), dtype=torch.float64)
    for j, c in enumerate(forget_ids):
        z[pseudo_labels.eq(c), j] = 1.0
    return z


def fit_erasure(features: torch.Tensor, pseudo_labels: torch.Tensor, forget_ids: Sequence[int],
                forget_names: Sequence[str], method: str = "leace") -> Erasure:
    """LEACE fitted on ``features [n, d]`` (the patched model's image features of the references, not
    normalised) against each forget class's pseudo-label indicator; its affine map read back as M, c."""
    from concept_erasure import LeaceFitter

    x = features.detach().double().cpu()
    z = forget_indicator(pseudo_labels.cpu(), forget_ids)
    keep = z.sum(0) > 0  # a class no reference is labelled with has nothing to erase
    if not bool(keep.any()):
        d = x.shape[1]
        return Erasure(torch.eye(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), 0, len(x),
                       {n: 0 for n in forget_names})
    eraser = LeaceFitter.fit(x, z[:, keep], method=method).eraser
    d = x.shape[1]
    zero = eraser(torch.zeros(1, d, dtype=torch.float64))[0]
    M = (eraser(torch.eye(d, dtype=torch.float64)) - zero).T.contiguous()  # row i of E(I) is M e_i + c
    rank = int((torch.linalg.svdvals(torch.eye(d, dtype=torch.float64) - M) > 1e-6).sum())
    return Erasure(M, zero.clone(), rank, len(x), {n: int(z[:, j].sum()) for j, n in enumerate(forget_names)})
