"""The logit-level closed form behind ``ccup-proto``: pure torch, float64, no I/O.

Text-only CCUP constrains one side of the logit ``hᵀ W p`` (the text side, through ``Wᵀ``).
When a model's features are close to additive (a sketch of a sandal ≈ sandal + sketch), no
linear map can send "sandal in sketch" to a sink on one side while it keeps "sandal in photo"
and "shirt in sketch" fixed: the four cells satisfy x₁₁ − x₁₂ − x₂₁ + x₂₂ ≈ 0, and so do their
images under W. The logit is bilinear, though, and a bilinear target has no such conflict:
lowering the sandal logit of every *sketch* image only needs ``W − I`` to read the sketch
direction on the image side and write the sandal direction on the text side.

So this objective is over pairs (head text ``h_j``, image-side prototype ``p_i``):

    min_W  Σ_lowered w_f (h_jᵀ W p_i − τ_i)²  +  Σ_kept w_k (h_jᵀ W p_i − h_jᵀ p_i)²  +  λ_i ‖W − I‖²

- a pair is *lowered* when ``p_i`` is a forget prototype and ``h_j`` names its class; its
  target ``τ_i`` is ``p_i``'s mean logit over the heads of other classes (the forgotten class
  becomes one of the crowd, not an anti-match);
- every other pair is *kept* at its current logit;
- ``w_f = 1 / #lowered``, ``w_k = λ_r / #kept``.

``W − I`` is confined to ``U M Vᵀ`` with ``U`` an orthonormal basis of the heads and ``V`` one
of the prototypes, which loses nothing (a component outside those spans changes no pair's
logit and only costs λ_i) and leaves ``r_u·r_v`` unknowns. Their normal equations are solved by
conjugate gradients, preconditioned with the exact inverse of the all-pairs part (diagonal in
the eigenbases of ``AᵀA`` and ``BᵀB``); the lowered pairs are a low-rank correction, so it
converges in a few dozen steps, and nothing of size ``(r_u·r_v)²`` is ever formed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

CG_TOLERANCE = 1e-12  # relative residual of the normal equations
CG_MAX_ITERATIONS = 2000


def _basis(rows: torch.Tensor, tol: float = 1e-8) -> torch.Tensor:
    """``[d, r]`` orthonormal basis of the row span of ``rows [k, d]``."""
    U, S, _ = torch.linalg.svd(rows.T, full_matrices=False)
    keep = S > tol * max(float(S[0]), 1e-30) if S.numel() else S.bool()
    return U[:, keep]


def bilinear_map(
    heads: torch.Tensor,
    head_keys: Sequence[str],
    prototypes: torch.Tensor,
    prototype_keys: Sequence[str],
    forget: Sequence[bool],
    lambda_retain: float,
    lambda_identity: float,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The full-strength image-side map ``W [d, d]`` float64 of the objective above.

    ``heads [m, d]`` are text embeddings and ``head_keys`` their class keys; ``prototypes
    [n, d]`` are image-side features with their class keys and a forget flag each. Both are
    L2-normalised here. A forget prototype lowers the logit of every head with its key.
    """
    if lambda_identity <= 0:
        raise ValueError("lambda_identity must be > 0")
    if lambda_retain < 0:
        raise ValueError("lambda_retain must be >= 0")
    h = F.normalize(heads.detach().to(device=device or heads.device, dtype=torch.float64), dim=-1)
    p = F.normalize(prototypes.detach().to(device=h.device, dtype=torch.float64), dim=-1)
    if len(head_keys) != len(h) or len(prototype_keys) != len(p) or len(forget) != len(p):
        raise ValueError("every head and prototype needs a key, and every prototype a forget flag")
    if h.shape[1] != p.shape[1]:
        raise ValueError(f"heads have d={h.shape[1]} but prototypes have d={p.shape[1]}")
    forget_t = torch.as_tensor(list(forget), dtype=torch.bool, device=h.device)
    if not bool(forget_t.any()):
        raise ValueError("no forget prototypes")
    d = h.shape[1]
    U, V = _basis(h), _basis(p)
    a, b = h @ U, p @ V  # coordinates [m, r_u], [n, r_v]
    logits = h @ p.T  # [m, n], the current pairs

    keys = sorted(set(head_keys) | set(prototype_keys))
    head_of = {k: torch.tensor([i for i, hk in enumerate(head_keys) if hk == k], dtype=torch.long) for k in keys}
    lowered_blocks = []  # (head rows, forget prototype columns) of one class
    n_lowered = 0
    for k in keys:
        cols = torch.tensor([i for i, (pk, f) in enumerate(zip(prototype_keys, forget)) if f and pk == k],
                            dtype=torch.long)
        if len(cols) and len(head_of[k]):
            lowered_blocks.append((head_of[k].to(h.device), cols.to(h.device)))
            n_lowered += len(head_of[k]) * len(cols)
    if n_lowered == 0:
        raise ValueError("no head names a forget prototype's class")
    n_kept = len(h) * len(p) - n_lowered
    w_f = 1.0 / n_lowered
    w_k = lambda_retain / max(n_kept, 1)

    # normal equations H(M) = rhs, with
    # H(M) = w_k AᵀA M BᵀB + Σ_blocks (w_f − w_k) A_cᵀA_c M B_cᵀB_c + λ_i M
    rhs = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64, device=h.device)
    corrections = []
    other = torch.ones(len(h), dtype=torch.bool, device=h.device)
    for rows, cols in lowered_blocks:
        a_c, b_c = a[rows], b[cols]
        corrections.append((a_c.T @ a_c, b_c.T @ b_c))
        others = other.clone()
        others[rows] = False
        if not bool(others.any()):
            raise ValueError("lowering a class needs heads of other classes to set its target")
        target = logits[others][:, cols].mean(0)  # τ_i per forget prototype
        delta = target[None, :] - logits[rows][:, cols]  # [|rows|, |cols|]
        rhs += w_f * a_c.T @ delta @ b_c
    s_a, s_b = a.T @ a, b.T @ b

    def hessian(M: torch.Tensor) -> torch.Tensor:
        out = w_k * (s_a @ M @ s_b) + lambda_identity * M
        for c_a, c_b in corrections:
            out += (w_f - w_k) * (c_a @ M @ c_b)
        return out

    M = _solve(hessian, rhs, s_a, s_b, w_k, lambda_identity)
    return torch.eye(d, dtype=torch.float64, device=h.device) + U @ M @ V.T


def _solve(hessian, rhs: torch.Tensor, s_a: torch.Tensor, s_b: torch.Tensor, w_k: float, lam: float) -> torch.Tensor:
    """Preconditioned conjugate gradients for ``hessian(M) = rhs`` (symmetric positive definite)."""
    ea, va = torch.linalg.eigh(s_a)
    eb, vb = torch.linalg.eigh(s_b)
    scale = w_k * ea.clamp(min=0)[:, None] * eb.clamp(min=0)[None, :] + lam

    def precondition(R: torch.Tensor) -> torch.Tensor:
        return va @ ((va.T @ R @ vb) / scale) @ vb.T

    M = precondition(rhs)
    R = rhs - hessian(M)
    Z = precondition(R)
    P = Z.clone()
    rz = float((R * Z).sum())
    stop = CG_TOLERANCE * max(float(rhs.norm()), 1e-300)
    for _ in range(CG_MAX_ITERATIONS):
        if float(R.norm()) <= stop:
            break
        HP = hessian(P)
        step = rz / float((P * HP).sum())
        M = M + step * P
        R = R - step * HP
        Z = precondition(R)
        rz_next = float((R * Z).sum())
        P = Z + (rz_next / rz) * P
        rz = rz_next
    return M
