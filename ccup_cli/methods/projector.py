"""The CCUP projector and the nullspace baseline: pure torch, float64, no I/O.

Conventions (column vectors, as in the paper): ``T_f`` is ``[d, k_f]`` and ``T_r`` is
``[d, k_r]``, both L2-normalised text embeddings. Functions here take them row-wise, as
``[k, d]`` tensors, the way encoders return them.

    F = T_f T_fᵀ / k_f        R = T_r T_rᵀ / k_r
    Q = (λ_r R + λ_i I)(F + λ_r R + λ_i I)⁻¹

Q minimises ‖Q T_f‖² + λ_r‖Q T_r − T_r‖² + λ_i‖Q − I‖² over the text side. With a sink
``T_s [d, k_f]`` (one target per forget prompt) the first term becomes ‖Q T_f − T_s‖²/k_f and

    Q = (T_s T_fᵀ/k_f + λ_r R + λ_i I)(F + λ_r R + λ_i I)⁻¹

(T_s = 0 is the paper's CCUP; ``ccup_cli.methods.sinks`` builds T_s). A zero-shot
logit is ``t_cᵀ W f``, so for every class ``t_cᵀ W f = (Q t_c)ᵀ f`` needs the image-side
map ``W = Qᵀ``. Strength α blends towards the identity: ``W_α = I − α(I − W)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..presets import defaults


@dataclass
class Projector:
    """An image-side map ``W [d, d]`` (float64) and the facts a report needs about it."""

    W: torch.Tensor
    method: str
    alpha: float
    rank: int
    singular_values: list[float] = field(default_factory=list)  # of (I − W), descending
    params: dict = field(default_factory=dict)


def _normalised(embeddings: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    x = embeddings.detach().to(device=device or embeddings.device, dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty [k, d] tensor of embeddings, got shape {tuple(x.shape)}")
    return F.normalize(x, dim=-1)


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def blend(W: torch.Tensor, alpha: float) -> torch.Tensor:
    """``W_α = I − α(I − W)``: α = 0 is the identity, α = 1 is W."""
    _check_alpha(alpha)
    eye = torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
    return eye - alpha * (eye - W)


def _facts(W: torch.Tensor, tol: float = 1e-6) -> tuple[int, list[float]]:
    eye = torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
    sv = torch.linalg.svdvals(eye - W)
    rank = int((sv > tol * max(1.0, float(sv[0]) if sv.numel() else 1.0)).sum())
    return rank, [float(s) for s in sv[: max(rank, 1) + 8].cpu()]


def ccup_map(
    forget_embeddings: torch.Tensor,
    retain_embeddings: torch.Tensor | None,
    lambda_retain: float = defaults.LAMBDA_RETAIN,
    lambda_identity: float = defaults.LAMBDA_IDENTITY,
    device: torch.device | str | None = None,
    sink_embeddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """The full-strength CCUP image-side map ``W = Qᵀ`` as ``[d, d]`` float64.

    ``forget_embeddings [k_f, d]`` and ``retain_embeddings [k_r, d]`` are text embeddings
    (normalised here). ``retain_embeddings`` may be None or empty: then only λ_i keeps W
    close to the identity. ``sink_embeddings [k_f, d]``: the target of each forget prompt,
    row i for forget row i, used as given (not normalised). None, or all zeros, is the
    paper's map, bit for bit.
    """
    if lambda_identity <= 0 and (retain_embeddings is None or len(retain_embeddings) == 0):
        raise ValueError("lambda_identity must be > 0 when no retain embeddings are given")
    if lambda_retain < 0 or lambda_identity < 0:
        raise ValueError("lambda_retain and lambda_identity must be >= 0")
    t_f = _normalised(forget_embeddings, device)
    d = t_f.shape[1]
    eye = torch.eye(d, dtype=torch.float64, device=t_f.device)
    f_cov = t_f.T @ t_f / t_f.shape[0]
    keep = lambda_identity * eye
    if retain_embeddings is not None and len(retain_embeddings) > 0:
        t_r = _normalised(retain_embeddings, t_f.device)
        if t_r.shape[1] != d:
            raise ValueError(f"forget embeddings have d={d} but retain embeddings have d={t_r.shape[1]}")
        keep = keep + lambda_retain * (t_r.T @ t_r / t_r.shape[0])
    target = keep
    if sink_embeddings is not None:
        t_s = sink_embeddings.detach().to(device=t_f.device, dtype=torch.float64)
        if t_s.shape != t_f.shape:
            raise ValueError(f"sink embeddings must match the forget embeddings' shape {tuple(t_f.shape)}, "
                             f"got {tuple(t_s.shape)}")
        if bool(t_s.any()):
            # T_f T_sᵀ / k_f in column form is t_fᵀ t_s / k_f in rows
            target = keep + t_f.T @ t_s / t_f.shape[0]
    # Q = (T_s T_fᵀ/k_f + keep)(F + keep)⁻¹; F and keep are symmetric, so
    # W = Qᵀ = (F + keep)⁻¹ (T_f T_sᵀ/k_f + keep): with no sink, the paper's (F + keep)⁻¹ keep
    W = torch.linalg.solve(f_cov + keep, target)
    return W


def nullspace_map(
    forget_embeddings: torch.Tensor, energy: float = defaults.ENERGY, device: torch.device | str | None = None
) -> tuple[torch.Tensor, int]:
    """``I − U Uᵀ`` with U the leading left singular vectors of ``T_f``.

    The rank is the smallest r whose singular values hold ``energy`` of the total squared
    energy. Returns (W ``[d, d]`` float64, r).
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    t_f = _normalised(forget_embeddings, device)
    U, S, _ = torch.linalg.svd(t_f.T, full_matrices=False)
    cumulative = torch.cumsum(S**2, 0) / torch.sum(S**2)
    rank = int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=cumulative.dtype) - 1e-12).item()) + 1
    rank = min(rank, S.numel())
    U = U[:, :rank]
    eye = torch.eye(t_f.shape[1], dtype=torch.float64, device=t_f.device)
    return eye - U @ U.T, rank


def projector_at(full: torch.Tensor, alpha: float, method: str, params: dict) -> Projector:
    """The blend of a method's full-strength map ``full`` at strength ``alpha``, with its facts."""
    W = blend(full, alpha)
    rank, sv = _facts(W)
    return Projector(W=W, method=method, alpha=alpha, rank=rank, singular_values=sv, params=dict(params))
