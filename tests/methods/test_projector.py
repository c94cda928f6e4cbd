"""Properties of the CCUP map and the nullspace baseline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ccup_cli.methods.projector import blend, ccup_map, nullspace_map
from ccup_cli.methods.table import METHODS
from ccup_cli.methods.table import build_projector as method_projector
from ccup_cli.text.embeddings import TextEmbeddings


def _side(rows: torch.Tensor | None) -> TextEmbeddings:
    rows = torch.empty(0, 1, dtype=torch.float64) if rows is None else rows
    return TextEmbeddings([f"c{i}" for i in range(len(rows))], ["{}"], rows, rows)


def build_projector(method, t_f, t_r=None, alpha=1.0, **params):
    """The method table's projector on raw rows (one template per class, so per-class = per-template)."""
    values = {"lambda_retain": 1.0, "lambda_identity": 1e-4, "energy": 0.99, "sink": "zero", **params}
    return method_projector(method, _side(t_f), _side(t_r), alpha, {p: values[p] for p in METHODS[method].params})


def _embeddings(seed: int, d: int, k_f: int, k_r: int):
    g = torch.Generator().manual_seed(seed)
    t_f = F.normalize(torch.randn(k_f, d, generator=g, dtype=torch.float64), dim=-1)
    t_r = F.normalize(torch.randn(k_r, d, generator=g, dtype=torch.float64), dim=-1)
    return t_f, t_r


sizes = st.tuples(st.integers(0, 10_000), st.integers(16, 48), st.integers(1, 4), st.integers(1, 8))


@settings(max_examples=25, deadline=None)
@given(sizes)
def test_alpha_zero_is_identity(args):
    seed, d, k_f, k_r = args
    t_f, t_r = _embeddings(seed, d, k_f, k_r)
    for method in ("ccup", "nullspace"):
        W = build_projector(method, t_f, t_r, alpha=0.0).W
        assert torch.equal(W, torch.eye(d, dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(sizes)
def test_full_strength_zeroes_forget_logits_and_keeps_retain_logits(args):
    seed, d, k_f, k_r = args
    t_f, t_r = _embeddings(seed, d, k_f, k_r)
    W = ccup_map(t_f, t_r, lambda_retain=1.0, lambda_identity=1e-9)
    images = torch.randn(64, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    patched = images @ W.T  # each row: W f
    # logit of a forget prompt: t_fᵀ W f -> 0 for any image feature
    assert (patched @ t_f.T).abs().max() < 1e-5
    # logit of a retain prompt is kept: t_rᵀ W f == t_rᵀ f
    assert torch.allclose(patched @ t_r.T, images @ t_r.T, atol=1e-4)


def test_transpose_is_the_image_side_map():
    """W = Qᵀ zeroes forget logits; the other orientation (Q itself) does not."""
    t_f, t_r = _embeddings(3, 24, 2, 6)
    W = ccup_map(t_f, t_r, lambda_retain=1.0, lambda_identity=1e-9)
    Q = W.T
    images = torch.randn(32, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(W, Q, atol=1e-3)  # Q is not symmetric, so the orientation matters
    assert (images @ W.T @ t_f.T).abs().max() < 1e-5
    assert (images @ Q.T @ t_f.T).abs().max() > 1e-2
    # text side: Q sends forget directions to zero
    assert (t_f @ Q.T).abs().max() < 1e-5


def test_alpha_blends_linearly_towards_identity():
    t_f, t_r = _embeddings(5, 16, 2, 4)
    full = ccup_map(t_f, t_r)
    half = build_projector("ccup", t_f, t_r, alpha=0.5).W
    eye = torch.eye(16, dtype=torch.float64)
    assert torch.allclose(half, eye - 0.5 * (eye - full))
    assert torch.allclose(blend(full, 1.0), full)


def test_normalising_by_count_keeps_lambda_meaning_when_templates_are_repeated():
    """The same directions given 1x or 10x (more templates) give the same W."""
    t_f, t_r = _embeddings(6, 20, 2, 5)
    once = ccup_map(t_f, t_r)
    many = ccup_map(t_f.repeat(10, 1), t_r.repeat(3, 1))
    assert torch.allclose(once, many, atol=1e-10)


def test_nullspace_removes_forget_span_with_energy_rank_rule():
    t_f, _ = _embeddings(7, 32, 3, 1)
    W, rank = nullspace_map(t_f, energy=1.0)
    assert rank == 3
    assert (t_f @ W.T).abs().max() < 1e-10
    # a direction orthogonal to the forget span is untouched
    v = torch.randn(32, dtype=torch.float64)
    v = v - t_f.T @ torch.linalg.lstsq(t_f.T, v).solution
    assert torch.allclose(W @ v, v, atol=1e-10)
    # two nearly identical forget directions count as one at 99% energy
    near = torch.stack([t_f[0], F.normalize(t_f[0] + 1e-4 * t_f[1], dim=0)])
    assert nullspace_map(near, energy=0.99)[1] == 1


def test_projector_facts_report_rank_and_singular_values():
    t_f, t_r = _embeddings(8, 16, 2, 4)
    p = build_projector("nullspace", t_f, alpha=1.0, energy=1.0)
    assert p.rank == 2
    assert p.singular_values[0] == pytest.approx(1.0)
    assert p.W.dtype == torch.float64


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_range_is_rejected(alpha):
    t_f, t_r = _embeddings(9, 8, 1, 2)
    with pytest.raises(ValueError, match="alpha"):
        build_projector("ccup", t_f, t_r, alpha=alpha)
