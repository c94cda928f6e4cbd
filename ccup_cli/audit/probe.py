"""k-shot linear probes: can someone with a handful of labelled images decode a class again?

A probe is multinomial logistic regression on L2-normalised image features, trained in torch
(full-batch accelerated gradient descent, a small L2 penalty), seeded, and averaged over several draws of the k
training images per class. "An Illusion of Unlearning?" (arXiv 2604.08271) recovers forgotten
classes this way; CCUP changes only a linear map, so expect a probe to recover them too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

PROBE_L2 = 1e-3  # L2 penalty on the probe's weights (features are unit-norm)
PROBE_STEPS = 500  # accelerated gradient steps; the problem is small and convex
# Below this many multiply-adds per step, one thread: thread start-up and spinning dominate such
# small products (measured 35x slower with 2 threads on a loaded 2-core machine).
SINGLE_THREAD_BELOW = 50_000_000


@contextlib.contextmanager
def _threads_for(work: int):
    previous = torch.get_num_threads()
    if work < SINGLE_THREAD_BELOW and previous > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def k_shot_indices(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` indices per class (fewer where a class has fewer), drawn by a seeded shuffle, sorted."""
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)


def train_probe(features: torch.Tensor, labels: torch.Tensor, n_classes: int, seed: int = 0,
                l2: float = PROBE_L2, steps: int = PROBE_STEPS, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic-regression weights ``[C, d]`` and bias ``[C]`` (float64) on normalised ``features [n, d]``.

    Minimises mean cross-entropy + ``l2 · ‖weight‖²`` by Nesterov-accelerated gradient descent with
    the analytic gradient and step 1/L (L bounds the Hessian), so it needs no autograd and its
    result depends only on the data, ``seed`` (the starting point) and ``steps``.
    """
    x = F.normalize(features.double(), dim=-1) if normalize else features.double()
    y = torch.as_tensor(labels, dtype=torch.long)
    n = max(len(y), 1)
    onehot = torch.zeros(len(y), n_classes, dtype=torch.float64)
    onehot[torch.arange(len(y)), y] = 1.0
    xb = torch.cat([x, torch.ones(len(y), 1, dtype=torch.float64)], dim=1)  # the bias as a last column
    lipschitz = 0.5 * float(torch.linalg.matrix_norm(xb, ord=2)) ** 2 / n + 2 * l2
    step = 1.0 / lipschitz
    decay = torch.full((xb.shape[1],), 2 * l2, dtype=torch.float64)
    decay[-1] = 0.0  # the bias is not penalised
    gen = torch.Generator().manual_seed(seed)
    theta = 0.01 * torch.randn(xb.shape[1], n_classes, generator=gen, dtype=torch.float64)
    previous, momentum = theta, 1.0
    with _threads_for(xb.numel() * n_classes):
        for _ in range(steps):
            grad = xb.T @ ((xb @ theta).softmax(dim=1) - onehot) / n + decay[:, None] * theta
            updated = theta - step * grad
            next_momentum = (1 + (1 + 4 * momentum ** 2) ** 0.5) / 2
            theta = updated + (momentum - 1) / next_momentum * (updated - previous)
            previous, momentum = updated, next_momentum
    return previous[:-1].T.contiguous(), previous[-1].clone()


def probe_predict(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor,
                  normalize: bool = True) -> torch.Tensor:
    x = F.normalize(features.double(), dim=-1) if normalize else features.double()
    return (x @ weight.T + bias).argmax(dim=1)


def _split_accuracy(pred: torch.Tensor, labels: torch.Tensor, ids: Sequence[int]) -> float | None:
    mask = torch.isin(labels, torch.as_tensor(list(ids), dtype=torch.long))
    return float(pred[mask].eq(labels[mask]).double().mean()) if bool(mask.any()) else None


def _mean_std(values: list[float | None]) -> dict:
    kept = [v for v in values if v is not None]
    if not kept:
        return {"mean": None, "std": None, "draws": []}
    return {"mean": float(np.mean(kept)), "std": float(np.std(kept)), "draws": [float(v) for v in kept]}


def probe_curve(train_features: torch.Tensor, train_labels: np.ndarray, test_features: torch.Tensor,
                test_labels: np.ndarray, n_classes: int, forget_ids: Sequence[int], shots: Sequence[int],
                draws: int = 5, seed: int = 0, pool: dict[int, list[np.ndarray]] | None = None,
                normalize: bool = True) -> list[dict]:
    """Probe accuracy against k: one row per k with forget and retain top-1 (mean, std over draws).

    ``train_features [m, d]`` are the labelled pool (any projection: patched, original, erased),
    ``test_features [n, d]`` the evaluation images. Draw j of shot k uses the images
    ``pool[k][j]`` (indices into the training pool; default ``k_shot_indices(labels, k, seed + j)``),
    so the same draws serve every feature set and the comparison is paired. ``normalize`` False
    keeps features as given (LEACE-erased features: re-normalising them is not a linear map).
    """
    train_labels = np.asarray(train_labels)
    test_y = torch.as_tensor(np.asarray(test_labels), dtype=torch.long)
    retain_ids = [c for c in range(n_classes) if c not in set(forget_ids)]
    rows = []
    for k in shots:
        chosen = pool[k] if pool is not None else [k_shot_indices(train_labels, k, seed + j) for j in range(draws)]
        forget_acc, retain_acc = [], []
        for j, idx in enumerate(chosen):
            w, b = train_probe(train_features[torch.as_tensor(idx)], torch.as_tensor(train_labels[idx]),
                               n_classes, seed=seed + j, normalize=normalize)
            pred = probe_predict(w, b, test_features, normalize)
            forget_acc.append(_split_accuracy(pred, test_y, forget_ids))
            retain_acc.append(_split_accuracy(pred, test_y, retain_ids))
        rows.append({"k": int(k), "forget": _mean_std(forget_acc), "retain": _mean_std(retain_acc)})
    return rows


def draw_pool(train_labels: np.ndarray, shots: Sequence[int], draws: int, seed: int) -> dict[int, list[np.ndarray]]:
    """The k-shot draws for every k: ``{k: [indices of draw 0, ...]}``; seeded, so reproducible."""
    return {int(k): [k_shot_indices(np.asarray(train_labels), int(k), seed + j) for j in range(draws)]
            for k in shots}
