"""Retrieval metrics, the sink form of the CCUP map, and sink resolution."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ccup_cli.errors import SpecError
from ccup_cli.methods.projector import ccup_map, projector_at
from ccup_cli.methods.sinks import (
    SINK_NAMES,
    TEXT_CHANCE_FACTOR,
    forget_class_directions,
    resolve_sink,
    sink_problems,
    text_chance_gammas,
)
from ccup_cli.metrics import zero_shot as evaluate
from ccup_cli.metrics.compare import delta
from ccup_cli.metrics.zero_shot import RANKING_KEYS, ranking_metrics, retrieval_metrics, zero_shot_metrics

# --- retrieval metrics ------------------------------------------------------------------------


def _ranked_example():
    """200 images in 2-d; the "a" query (x axis) sees them in this order, the "b" query (y axis)
    in the reverse order: a×5, b×5, a×50, b×135, a×5 (60 a, 140 b)."""
    order = ["a"] * 5 + ["b"] * 5 + ["a"] * 50 + ["b"] * 135 + ["a"] * 5
    angles = torch.linspace(0.01, math.pi / 2 - 0.01, len(order), dtype=torch.float64)
    scale = torch.linspace(0.5, 3.0, len(order), dtype=torch.float64).flip(0)  # unnormalised features
    feats = torch.stack([angles.cos(), angles.sin()], dim=1) * scale[:, None]
    perm = torch.randperm(len(order), generator=torch.Generator().manual_seed(0))  # image order is irrelevant
    labels = np.array([0 if c == "a" else 1 for c in order])[perm.numpy()]
    return feats[perm].float(), torch.eye(2), labels, ["a", "b"]


def test_retrieval_matches_hand_computed_example():
    feats, classes, labels, names = _ranked_example()
    r = retrieval_metrics(feats, classes, labels, names, forget=["b"])
    # "a" sees a×5, b×5, a×50, b×135, a×5: top 10 holds 5 a; top 100 holds 55 of its 60; its first 60
    # (R-precision) hold 55; the last 100 are b×95 then a×5; a beats b in 5·140 + 50·135 of 60·140 pairs
    assert r["per_class"]["a"] == pytest.approx({
        "p_at_10": 0.5, "p_at_100": 0.55, "r_at_100": 55 / 60, "r_precision": 55 / 60, "bottom_100": 0.05,
        "auc": (5 * 140 + 50 * 135) / (60 * 140)})
    # "b" sees the reverse, a×5, b×135, a×50, b×5, a×5: top 100 = a×5 then b×95; its first 140 hold 135;
    # the last 100 are b×40, a×50, b×5, a×5; b beats a in 135·55 + 5·5 of 140·60 pairs
    assert r["per_class"]["b"] == pytest.approx({
        "p_at_10": 0.5, "p_at_100": 0.95, "r_at_100": 95 / 140, "r_precision": 135 / 140, "bottom_100": 0.45,
        "auc": (135 * 55 + 5 * 5) / (140 * 60)})
    assert r["forget"] == pytest.approx(r["per_class"]["b"])
    assert r["retain"] == pytest.approx(r["per_class"]["a"])


def test_a_class_pushed_to_the_bottom_is_found_backwards_and_ties_are_chance():
    """20 x and 100 y images; query 0 ranks every y below every x (y avoided), query 1 ties them all."""
    is_y = torch.as_tensor([False] * 20 + [True] * 100)
    scores = torch.stack([-torch.arange(120.0), torch.zeros(120)])
    m = ranking_metrics(scores, is_y[None].expand(2, -1))
    assert float(m["auc"][0]) == 0.0 and float(m["auc"][1]) == 0.5
    assert float(m["p_at_10"][0]) == 0.0 and float(m["bottom_100"][0]) == 1.0
    assert float(m["r_precision"][0]) == pytest.approx(80 / 100)  # its first 100: x×20, then y×80
    # through retrieval_metrics: class "y"'s query (+x axis) scores its own images lowest
    feats = torch.stack([-torch.arange(120.0) / 120, torch.ones(120)], dim=1)
    r = retrieval_metrics(feats, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), is_y.long().numpy(), ["x", "y"],
                          forget=["y"])
    assert r["per_class"]["y"]["auc"] == 0.0 and r["forget"]["bottom_100"] == 1.0
    assert r["per_class"]["x"]["auc"] == 1.0 and r["retain"]["r_precision"] == 1.0


def test_class_chunks_do_not_change_the_figures(monkeypatch):
    g = torch.Generator().manual_seed(3)
    feats, classes = torch.randn(300, 8, generator=g), F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    labels = torch.randint(0, 5, (300,), generator=g).numpy()
    names = list("abcde")
    whole = retrieval_metrics(feats, classes, labels, names, forget=["c"])
    monkeypatch.setattr(evaluate, "CLASS_CHUNK", 2)
    assert retrieval_metrics(feats, classes, labels, names, forget=["c"]) == whole


def test_retrieval_cutoff_is_n_below_100_images_and_absent_classes_are_skipped():
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.1, 0.9], [0.0, 1.0]])
    classes = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    r = retrieval_metrics(feats, classes, [0, 0, 1, 0], ["x", "y", "z"], forget=["z"])
    assert set(r["per_class"]) == {"x", "y"}  # "z" has no image: nothing to find
    # "x" ranks x, x, y, x: 3 of 4 at every cutoff; its first 3 hold 2; the whole ranking is its bottom
    assert r["per_class"]["x"] == pytest.approx({"p_at_10": 0.75, "p_at_100": 0.75, "r_at_100": 1.0,
                                                 "r_precision": 2 / 3, "bottom_100": 0.75, "auc": 2 / 3})
    assert r["forget"] == {k: None for k in RANKING_KEYS}
    assert r["retain"]["p_at_10"] == pytest.approx((0.75 + 0.25) / 2)


def test_zero_shot_metrics_carry_retrieval_and_delta_recurses():
    feats, classes, labels, names = _ranked_example()
    before = zero_shot_metrics(feats, classes, labels, names, forget=["b"])
    assert before["retrieval"] == retrieval_metrics(feats, classes, labels, names, forget=["b"])
    after = zero_shot_metrics(feats * torch.tensor([1.0, -1.0]), classes, labels, names, forget=["b"])
    d = delta(after, before)
    assert d["retrieval"]["forget"]["p_at_10"] == pytest.approx(
        after["retrieval"]["forget"]["p_at_10"] - before["retrieval"]["forget"]["p_at_10"])
    assert d["retrieval"]["per_class"]["a"]["r_at_100"] is not None


# --- the sink form of the map -----------------------------------------------------------------


def _embeddings(seed: int, d: int, k_f: int, k_r: int):
    g = torch.Generator().manual_seed(seed)
    t_f = F.normalize(torch.randn(k_f, d, generator=g, dtype=torch.float64), dim=-1)
    t_r = F.normalize(torch.randn(k_r, d, generator=g, dtype=torch.float64), dim=-1)
    t_s = torch.randn(k_f, d, generator=g, dtype=torch.float64) * 0.5
    return t_f, t_r, t_s


def _paper_map(t_f, t_r, lambda_retain, lambda_identity):
    """The map before sinks existed, in its operations' order: W = (F + K)⁻¹ K, K = λ_r R + λ_i I."""
    t_f, t_r = F.normalize(t_f, dim=-1), F.normalize(t_r, dim=-1)
    eye = torch.eye(t_f.shape[1], dtype=torch.float64)
    f_cov = t_f.T @ t_f / t_f.shape[0]
    keep = lambda_identity * eye
    keep = keep + lambda_retain * (t_r.T @ t_r / t_r.shape[0])
    return torch.linalg.solve(f_cov + keep, keep)


sizes = st.tuples(st.integers(0, 10_000), st.integers(4, 24), st.integers(1, 6), st.integers(1, 10),
                  st.sampled_from([0.1, 1.0, 3.0]), st.sampled_from([1e-3, 1e-2, 0.1]))


@settings(max_examples=20, deadline=None)
@given(sizes)
def test_zero_sink_is_the_paper_map_bit_for_bit(args):
    seed, d, k_f, k_r, lr, li = args
    t_f, t_r, _ = _embeddings(seed, d, k_f, k_r)
    paper = _paper_map(t_f, t_r, lr, li)
    assert torch.equal(ccup_map(t_f, t_r, lr, li), paper)
    assert torch.equal(ccup_map(t_f, t_r, lr, li, sink_embeddings=None), paper)
    assert torch.equal(ccup_map(t_f, t_r, lr, li, sink_embeddings=torch.zeros(k_f, d)), paper)


@settings(max_examples=25, deadline=None)
@given(sizes)
def test_closed_form_solves_the_sink_objective(args):
    """W = Qᵀ minimises ‖Q T_f − T_s‖²/k_f + λ_r‖Q T_r − T_r‖²/k_r + λ_i‖Q − I‖²: rows of Q are
    independent least-squares problems, stacked here as one lstsq in W."""
    seed, d, k_f, k_r, lr, li = args
    t_f, t_r, t_s = _embeddings(seed, d, k_f, k_r)
    eye = torch.eye(d, dtype=torch.float64)
    a = torch.cat([t_f / math.sqrt(k_f), t_r * math.sqrt(lr / k_r), eye * math.sqrt(li)])
    b = torch.cat([t_s / math.sqrt(k_f), t_r * math.sqrt(lr / k_r), eye * math.sqrt(li)])
    direct = torch.linalg.lstsq(a, b).solution  # a W = b in rows: Q Tᵀ columns are W rows' products
    W = ccup_map(t_f, t_r, lr, li, sink_embeddings=t_s)
    assert torch.allclose(W, direct, atol=1e-7 / li, rtol=1e-6)
    assert not torch.allclose(W, _paper_map(t_f, t_r, lr, li), atol=1e-6)  # the sink does move W


def test_sink_maps_forget_prompts_onto_their_targets():
    t_f, t_r, t_s = _embeddings(1, 32, 3, 6)
    W = ccup_map(t_f, t_r, 1.0, 1e-9, sink_embeddings=t_s)
    assert torch.allclose(t_f @ W, t_s, atol=1e-5)  # rows of (Q T_f)ᵀ = T_fᵀ W
    assert torch.allclose(t_r @ W, t_r, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(sizes)
def test_sink_at_alpha_zero_is_identity(args):
    seed, d, k_f, k_r, lr, li = args
    t_f, t_r, t_s = _embeddings(seed, d, k_f, k_r)
    p = projector_at(ccup_map(t_f, t_r, lr, li, sink_embeddings=t_s), 0.0, "ccup", {})
    assert torch.equal(p.W, torch.eye(d, dtype=torch.float64))
    assert p.rank == 0


def test_sink_shape_is_checked():
    t_f, t_r, t_s = _embeddings(2, 8, 2, 3)
    with pytest.raises(ValueError, match="shape"):
        ccup_map(t_f, t_r, sink_embeddings=t_s[:1])


# --- sinks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "   ", " zero", "retian-mean", "Retain_Mean", "a {} b", "two\nlines", 3, None])
def test_bad_sink_values_are_one_line_problems(value):
    problems = sink_problems(value)
    assert len(problems) == 1 and problems[0].startswith("sink: ") and "\n" not in problems[0]


@pytest.mark.parametrize("value", [*SINK_NAMES, "piece of fabric", "nothing"])
def test_good_sink_values(value):
    assert sink_problems(value) == []


def test_typo_names_the_sink_and_resolving_it_raises_spec_error():
    assert 'did you mean "retain-mean"' in sink_problems("retian-mean")[0]
    t_f, t_r, _ = _embeddings(0, 8, 4, 3)
    with pytest.raises(SpecError):
        resolve_sink("", t_f, t_r, ["{}", "a {}"], lambda prompts: torch.ones(len(prompts), 8))


def _fake_encoder(d: int, seen: list):
    def encode(prompts):
        seen.extend(prompts)
        g = torch.Generator().manual_seed(sum(map(ord, "".join(prompts))))
        return torch.randn(len(prompts), d, generator=g) * 3
    return encode


def test_resolve_each_sink():
    d, templates = 12, ["a {}.", "a photo of a {}.", "art of the {}."]
    t_f, t_r, _ = _embeddings(5, d, 2 * len(templates), 7)  # 2 forget classes x 3 templates
    seen: list[str] = []
    encode = _fake_encoder(d, seen)
    assert resolve_sink("zero", t_f, t_r, templates, encode) is None
    directions = forget_class_directions(t_f, len(templates))
    assert directions.shape == (2, d)

    mean = resolve_sink("retain-mean", t_f, t_r, templates, encode)
    assert mean.shape == t_f.shape and mean.dtype == torch.float64
    assert torch.allclose(mean, t_r.mean(dim=0).expand_as(mean))

    orth = resolve_sink("retain-mean-orthogonal", t_f, t_r, templates, encode)
    assert (orth @ directions.T).abs().max() < 1e-12
    assert (mean @ directions.T).abs().max() > 1e-3  # the plain mean does lean on them

    phrase = resolve_sink("piece of fabric", t_f, t_r, templates, encode)
    assert seen == ["a piece of fabric.", "a photo of a piece of fabric.", "art of the piece of fabric."]
    assert torch.allclose(phrase[:3], phrase[3:])  # per prompt: row i takes template i of its class
    assert torch.allclose(phrase.norm(dim=-1), torch.ones(6, dtype=torch.float64))
    seen.clear()
    neutral = resolve_sink("neutral-orthogonal", t_f, t_r, templates, encode)
    assert seen == ["a object.", "a photo of a object.", "art of the object."]
    assert (neutral @ directions.T).abs().max() < 1e-12

    with pytest.raises(SpecError, match="retain"):
        resolve_sink("retain-mean", t_f, None, templates, encode)
    with pytest.raises(ValueError, match="whole number"):
        resolve_sink("retain-mean", t_f[:5], t_r, templates, encode)


def test_text_chance_sink_ranks_each_forget_direction_at_chance_on_text():
    """The γ of each forget class makes its own direction score, under its patched query, above as many
    retain prompts (and other forget directions) as below; the sink is the orthogonal mean plus
    TEXT_CHANCE_FACTOR of that share of each class's own direction."""
    d, templates = 16, ["a {}.", "a photo of a {}."]
    t_f, t_r, _ = _embeddings(11, d, 2 * len(templates), 41)

    def solve(targets):
        return ccup_map(t_f, t_r, sink_embeddings=targets)

    orth = resolve_sink("retain-mean-orthogonal", t_f, t_r, templates, None)
    directions = forget_class_directions(t_f, len(templates))
    gammas = text_chance_gammas(t_f, t_r, len(templates), orth[:1], solve)
    W = solve((orth[:1] + gammas[:, None] * directions).repeat_interleave(len(templates), dim=0))
    for c in range(2):
        query = directions[c]
        mine = F.normalize(directions[c] @ W.T, dim=-1) @ query
        others = F.normalize(torch.cat([t_r, directions[1 - c:2 - c]]) @ W.T, dim=-1) @ query
        below, above = int((others < mine).sum()), int((others > mine).sum())
        assert abs(below - above) <= 1, (c, below, above)  # 42 competitors: chance is 21 on each side
    sink = resolve_sink("text-chance", t_f, t_r, templates, None, solve)
    expected = (orth[:1] + TEXT_CHANCE_FACTOR * gammas[:, None] * directions).repeat_interleave(len(templates), 0)
    assert torch.allclose(sink, expected)
    # the orthogonal mean has no part along the forget directions: the sink's part is the scaled γ
    assert float(sink[0] @ directions[0]) == pytest.approx(TEXT_CHANCE_FACTOR * float(gammas[0]))
    with pytest.raises(ValueError, match="needs the method's solve"):
        resolve_sink("text-chance", t_f, t_r, templates, None)


def test_a_sink_removes_forget_classes_from_search():
    """Synthetic CLIP: image = its class's text direction + noise. With the zero sink the
    forgotten class still tops its own search; with a sink it no longer does."""
    g = torch.Generator().manual_seed(0)
    d, n_classes, per_class, templates = 24, 6, 40, ["{}", "a {}", "the {}"]
    common = torch.randn(d, generator=g, dtype=torch.float64)  # CLIP-like: every pair of classes is close
    base = F.normalize(common + torch.randn(n_classes, d, generator=g, dtype=torch.float64), dim=-1)
    prompts = F.normalize(base.repeat_interleave(len(templates), 0)
                          + 0.05 * torch.randn(n_classes * len(templates), d, generator=g, dtype=torch.float64), dim=-1)
    names = [f"c{i}" for i in range(n_classes)]
    classes = F.normalize(prompts.reshape(n_classes, len(templates), d).mean(1), dim=-1).float()
    labels = np.repeat(np.arange(n_classes), per_class)
    images = base[labels] + 0.1 * torch.randn(len(labels), d, generator=g, dtype=torch.float64)
    forget_rows = slice(0, len(templates))  # class c0
    t_f, t_r = prompts[forget_rows], prompts[len(templates):]

    def forget_search(sink_embeddings):
        W = ccup_map(t_f, t_r, 1.0, 1e-4, sink_embeddings=sink_embeddings)
        m = zero_shot_metrics((images @ W.T).float(), classes, labels, names, forget=["c0"])
        return m["forget"]["top1"], m["retrieval"]["forget"]["p_at_10"], m["retrieval"]["retain"]["p_at_10"]

    top1_zero, p10_zero, retain_zero = forget_search(None)
    sink = resolve_sink("retain-mean-orthogonal", t_f, t_r, templates, lambda p: torch.zeros(len(p), d))
    top1_sink, p10_sink, retain_sink = forget_search(sink)
    assert top1_zero == 0.0 and top1_sink == 0.0
    assert p10_zero == 1.0  # forgotten for classification, found perfectly by search
    assert p10_sink <= 0.2
    assert retain_sink >= retain_zero - 0.05


# --- wiring: spec, jobs, thresholds -------------------------------------------------------------


@pytest.fixture()
def tiny_flags(tiny_vit_file, fashion_folder):
    from ..conftest import TINY_VIT

    return {"model": TINY_VIT, "pretrained": str(tiny_vit_file), "eval": str(fashion_folder), "templates": "photo",
            "retain_templates": "photo", "forget": "sandal,sneaker"}


EMBEDDED_FLAGS = {"forget": "sandal,sneaker", "alpha": 1.0, "eval_limit": 30}  # 300 images of fashion-mnist-mini


@pytest.mark.embedded
def test_the_report_names_the_sink_and_the_default_sink_hides_the_class_from_search():
    """On the embedded model: with the paper's zero sink search still finds the forgotten classes;
    with the default it does not. Both remove them from classification."""
    from ccup_cli.jobs.unlearn import run_unlearn
    from ccup_cli.run.options import RunOptions
    from ccup_cli.spec.schema import build_spec

    options = RunOptions(device="cpu")
    default = run_unlearn(build_spec({}, EMBEDDED_FLAGS), options)
    paper = run_unlearn(build_spec({}, {**EMBEDDED_FLAGS, "sink": "zero"}), options)
    assert default["projector"]["params"]["sink"] == "retain-mean-orthogonal"
    assert paper["projector"]["params"]["sink"] == "zero"
    assert default["metrics"]["before"] == paper["metrics"]["before"]
    assert default["metrics"]["before"]["retrieval"]["forget"]["p_at_10"] >= 0.9
    assert paper["metrics"]["after"]["retrieval"]["forget"]["p_at_10"] >= 0.9  # the paper's map: still found
    assert default["metrics"]["after"]["retrieval"]["forget"]["p_at_10"] <= 0.1  # the default: gone from search
    for report in (default, paper):
        assert report["metrics"]["after"]["forget"]["top1"] <= 0.05
    assert set(default["metrics"]["delta"]["retrieval"]) == {"per_class", "forget", "retain"}


@pytest.mark.embedded
def test_sweep_compares_sinks(tmp_path):
    from ccup_cli.jobs.sweep import run_sweep_job
    from ccup_cli.run.options import RunOptions
    from ccup_cli.spec.schema import build_spec

    report = run_sweep_job(build_spec({}, EMBEDDED_FLAGS), [1.0], ["ccup:zero", "ccup", "ccup:neutral"],
                           RunOptions(device="cpu", out=tmp_path / "s"))
    rows = {r["method"]: r for r in report["rows"]}
    assert [rows[m]["params"]["sink"] for m in ("ccup:zero", "ccup", "ccup:neutral")] == [
        "zero", "retain-mean-orthogonal", "neutral"]
    search = {m: rows[m]["metrics"]["retrieval"]["forget"]["p_at_10"] for m in rows}
    assert search["ccup"] < search["ccup:zero"] and search["ccup:neutral"] < search["ccup:zero"], search
    assert search["ccup"] <= 0.1 and search["ccup:zero"] >= 0.9, search


@pytest.mark.parametrize("args, needle", [
    (["unlearn", "--sink", "retian-mean"], 'sink: "retian-mean" is not a sink; did you mean "retain-mean"?'),
    (["unlearn", "--sink", "a {} b"], "holds a brace"),
    (["sweep", "--methods", "nullspace:zero", "--out", "/nonexistent/s"], 'method "nullspace" takes no sink'),
    (["eval", "--max-forget-retrieval", "0.1"], "max-forget-retrieval: needs --forget"),
    (["eval", "--forget", "sandal", "--max-forget-retrieval", "1.5"], "max-forget-retrieval: 1.5 is outside"),
    (["eval", "--max-forget-auc-gap", "0.1"], "max-forget-auc-gap: needs --forget"),
    (["eval", "--forget", "sandal", "--max-forget-auc-gap", "0.6"], "max-forget-auc-gap: 0.6 is outside [0, 0.5]"),
    (["unlearn", "--alpha", "auto", "--max-forget-auc-gap", "0.6"], "max_forget_auc_gap"),
    (["unlearn", "--alpha", "auto"], "alpha: 'auto' needs a target"),
])
def test_bad_sink_and_retrieval_threshold_values_exit_2(args, needle):
    from typer.testing import CliRunner

    from ccup_cli.cli import app

    result = CliRunner().invoke(app, [*args, "--forget", "sandal"] if args[0] != "eval" else args)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_max_forget_retrieval_fails_with_exit_1_and_says_by_how_much(tiny_flags, tmp_path):
    from typer.testing import CliRunner

    from ccup_cli.cli import app

    args = ["eval", "--model", tiny_flags["model"], "--pretrained", tiny_flags["pretrained"], "--eval",
            tiny_flags["eval"], "--templates", "photo", "--forget", "sandal", "--no-cache"]
    passing = CliRunner().invoke(app, [*args, "--max-forget-retrieval", "1.0", "--json"])
    assert passing.exit_code == 0, passing.output
    p10 = json.loads(passing.stdout)["metrics"]["before"]["retrieval"]["per_class"]["sandal"]["p_at_10"]
    assert p10 > 0  # 3 sandal images among 30: the tiny model finds at least one in its top 10
    failing = CliRunner().invoke(app, [*args, "--max-forget-retrieval", "0"])
    assert failing.exit_code == 1
    assert (f'text search for "sandal" found at the top: precision@10 {100 * p10:.1f} % is above --max-forget-retrieval 0.0 % '
            f"by {100 * p10:.1f} points") in failing.stderr
    auc = json.loads(passing.stdout)["metrics"]["before"]["retrieval"]["per_class"]["sandal"]["auc"]
    gap = CliRunner().invoke(app, [*args, "--max-forget-auc-gap", "0"])
    assert gap.exit_code == (1 if auc != 0.5 else 0)
    assert (f'text search for "sandal" {"found at the top" if auc > 0.5 else "avoided at the bottom"}: AUC {auc:.2f}'
            in gap.stderr
            and f"beyond --max-forget-auc-gap 0.00 by {abs(auc - 0.5):.2f}" in gap.stderr), gap.stderr
    assert CliRunner().invoke(app, [*args, "--max-forget-auc-gap", "0.5"]).exit_code == 0
    # a forget name spelt in another case is the same class: its search threshold still applies
    shouted = [a if a != "sandal" else "SANDAL" for a in args]
    failing_upper = CliRunner().invoke(app, [*shouted, "--max-forget-retrieval", "0"])
    assert failing_upper.exit_code == 1 and 'text search for "sandal" found at the top: precision@10' in \
        failing_upper.stderr


def test_search_targets_name_each_depth_and_the_margin():
    from ccup_cli.metrics.targets import Targets, search_failures, target_failures, target_misses

    per_class = {"sandal": {"p_at_10": 0.3, "p_at_100": 0.1, "r_precision": 0.25, "bottom_100": 1.0, "auc": 0.02},
                 "bag": {"p_at_10": 0.0, "p_at_100": 0.0, "r_precision": 0.0, "bottom_100": 0.0, "auc": 0.9}}
    metrics = {"forget": {"top1": 0.04}, "retrieval": {"per_class": per_class}}
    msgs = search_failures(metrics, ["sandal", "bag", "coat"], 0.2, 0.15)  # coat has no images: skipped
    assert msgs == [
        'text search for "sandal" found at the top: precision@10 30.0 % is above --max-forget-retrieval 20.0 % '
        "by 10.0 points",
        'text search for "sandal" found at the top: R-precision 25.0 % is above --max-forget-retrieval 20.0 % '
        "by 5.0 points",
        'text search for "sandal" avoided at the bottom: AUC 0.02 (0.50 is chance) is 0.48 from chance, beyond '
        "--max-forget-auc-gap 0.15 by 0.33",
        'text search for "bag" found at the top: AUC 0.90 (0.50 is chance) is 0.40 from chance, beyond '
        "--max-forget-auc-gap 0.15 by 0.25"]
    assert search_failures(metrics, ["sandal", "bag"], None, None) == []
    assert target_failures(metrics, ["bag"], Targets(max_forget_acc=0.05)) == []
    misses = target_misses(metrics, ["bag"], Targets(max_forget_acc=0.01, max_forget_auc_gap=0.5))
    assert [round(m, 4) for _, m in misses] == [0.03]


def test_search_gone_is_one_rule_for_eval_and_the_audit():
    """ccup eval --search-gone and the audit's search verdict read the same thresholds the same way."""
    from ccup_cli.audit.figures import search_verdict
    from ccup_cli.jobs.eval import EvalRequest, threshold_checks
    from ccup_cli.metrics.targets import search_gone_checks, search_reading

    chance = {"p_at_10": 0.1, "p_at_100": 0.05, "r_precision": 0.1, "bottom_100": 0.1, "auc": 0.55}
    avoided = {**chance, "bottom_100": 1.0, "auc": 0.02}
    found = {**chance, "p_at_10": 0.9, "auc": 0.97}
    for m, reading in ((chance, "GONE"), (avoided, "avoided at the bottom"), (found, "found at the top")):
        assert search_reading(m) == reading
        assert search_verdict([m])["search_removed"] is (reading == "GONE")
    metrics = {"forget": {"top1": 0.0}, "retain": {"top1": 0.9},
               "retrieval": {"per_class": {"sandal": avoided, "bag": chance}}}
    checks = search_gone_checks(metrics, ["sandal", "bag", "coat"])  # coat has no images: skipped
    assert [held for held, _ in checks] == [False, True]
    assert checks[0][1].startswith('text search for "sandal" NOT GONE: avoided at the bottom (P@10 10.0 %')
    assert checks[1][1].startswith('text search for "bag" GONE (')
    req = EvalRequest(forget=["sandal", "bag"], search_gone=True, max_forget_retrieval=0.2)
    held = [h for h, _ in threshold_checks(req, metrics)]
    assert held == [True, False, True]  # the top is clear (retrieval holds), the bottom is not (NOT GONE)


def test_audit_check_fails_on_every_verdict_that_is_not_gone():
    from ccup_cli.audit.figures import check_failures, verdict

    chance = {"p_at_10": 0.1, "p_at_100": 0.05, "r_precision": 0.1, "bottom_100": 0.1, "auc": 0.55}
    avoided = {**chance, "bottom_100": 1.0, "auc": 0.02}

    def zero_shot(top1, search):
        return [{"names": "class names", "after": {"forget_top1": top1, "forget_search": {"sandal": search}}}]

    probes = {"patched": [{"k": 16, "forget": {"mean": 0.94}}], "original": [{"k": 16, "forget": {"mean": 0.97}}]}
    assert check_failures(verdict(zero_shot(0.0, chance), [], None)) == []
    assert check_failures(verdict(zero_shot(0.0, chance), [], {"patched": [], "original": []})) == []
    failures = check_failures(verdict(zero_shot(0.3, avoided), [], probes))
    assert [f.split(" (")[0] for f in failures] == ["zero-shot recognition NOT GONE", "NOT GONE for text search",
                                                    "RECOVERABLE by a 16-shot linear probe"]
    assert "avoided at the bottom" in failures[1]
