"""ccup-proto: the logit-level closed form, synthetic prototypes, their wiring, and eval --forget-domains."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torchvision import transforms
from typer.testing import CliRunner

from ccup_cli.cli import app
from ccup_cli.methods.bilinear import bilinear_map
from ccup_cli.methods.prompt_sides import build_sides, embed_side
from ccup_cli.methods.prototypes import pixel_geometry, synthesize
from ccup_cli.methods.table import METHODS, MethodContext, solve_full_map
from ccup_cli.text.embeddings import TextEmbeddings

from ..conftest import TINY_VIT, make_image_folder

runner = CliRunner()


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def _dense_solution(h, hk, p, pk, flags, lam_r, lam_i):
    """The same objective over all d² entries of W − I, one equation per (head, prototype) pair."""
    d = h.shape[1]
    logits = h @ p.T
    lowered = [(j, i) for j in range(len(h)) for i in range(len(p)) if flags[i] and hk[j] == pk[i]]
    n_kept = len(h) * len(p) - len(lowered)
    rows, targets, weights = [], [], []
    for j in range(len(h)):
        for i in range(len(p)):
            if (j, i) in lowered:
                others = [k for k in range(len(h)) if hk[k] != pk[i]]
                targets.append(float(logits[others, i].mean() - logits[j, i]))
                weights.append(1.0 / len(lowered))
            else:
                targets.append(0.0)
                weights.append(lam_r / n_kept)
            rows.append(torch.kron(h[j], p[i]))
    X, y, w = torch.stack(rows), torch.tensor(targets, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64)
    hessian = X.T @ (w[:, None] * X) + lam_i * torch.eye(d * d, dtype=torch.float64)
    return torch.eye(d, dtype=torch.float64) + torch.linalg.solve(hessian, X.T @ (w * y)).reshape(d, d)


def test_bilinear_map_solves_its_objective_over_the_whole_space():
    h, p = _unit(7, 12, 0), _unit(9, 12, 1)
    hk, pk = list("aabbccd"), list("abcdabcda")
    flags = [True, False, False, False, False, True, False, False, True]
    W = bilinear_map(h, hk, p, pk, flags, 0.7, 1e-3)
    # the span restriction and the preconditioned CG lose nothing against the dense d² solve
    assert (W - _dense_solution(h, hk, p, pk, flags, 0.7, 1e-3)).abs().max() < 1e-9
    assert W.dtype == torch.float64 and W.shape == (12, 12)


def test_bilinear_map_lowers_the_forgotten_pairs_and_keeps_the_rest():
    h, p = _unit(6, 16, 2), _unit(8, 16, 3)
    p[:2] = F.normalize(h[:2] + 0.3 * p[:2], dim=-1)  # the forget prototypes look like their class's heads
    hk, pk = ["a", "a", "b", "b", "c", "c"], ["a", "a", "b", "b", "c", "c", "a", "b"]
    flags = [True, True] + [False] * 6
    W = bilinear_map(h, hk, p, pk, flags, 1.0, 1e-6)
    before, after = h @ p.T, h @ W @ p.T
    lowered = after[:2, :2]  # heads of class a x its forget prototypes: set to the crowd's mean, τ
    assert (lowered.diagonal() < before[:2, :2].diagonal() - 0.5).all()
    target = before[2:, :2].mean(0)  # the mean logit over the other classes' heads
    assert torch.allclose(lowered, target.expand_as(lowered), atol=0.05)
    assert (after[:, 2:] - before[:, 2:]).abs().max() < 0.05
    # a huge λ_identity is the identity
    assert torch.allclose(bilinear_map(h, hk, p, pk, flags, 1.0, 1e9), torch.eye(16, dtype=torch.float64), atol=1e-8)


def test_bilinear_map_refuses_what_it_cannot_solve():
    h, p = _unit(2, 4, 4), _unit(2, 4, 5)
    with pytest.raises(ValueError, match="no forget prototypes"):
        bilinear_map(h, ["a", "b"], p, ["a", "b"], [False, False], 1.0, 1e-3)
    with pytest.raises(ValueError, match="no head names"):
        bilinear_map(h, ["a", "b"], p, ["c", "b"], [True, False], 1.0, 1e-3)
    with pytest.raises(ValueError, match="lambda_identity"):
        bilinear_map(h, ["a", "b"], p, ["a", "b"], [True, False], 1.0, 0.0)


def test_pixel_geometry_reads_size_mean_and_std_off_the_transform():
    preprocess = transforms.Compose([transforms.Resize(20), transforms.CenterCrop(20), transforms.ToTensor(),
                                     transforms.Normalize([0.1, 0.2, 0.3], [0.5, 0.25, 2.0])])
    size, mean, std = pixel_geometry(preprocess)
    assert size == (20, 20)
    assert mean == pytest.approx([0.1, 0.2, 0.3], abs=1e-6) and std == pytest.approx([0.5, 0.25, 2.0], abs=1e-6)


def test_synthesize_is_seeded_and_moves_features_towards_the_targets():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 6))
    encoder.requires_grad_(False)
    targets = _unit(2, 6, 6).float()
    kwargs = dict(image_size=(8, 8), mean=[0.5] * 3, std=[0.25] * 3, per_target=3, seed=1)
    short = synthesize(encoder, targets, steps=1, **kwargs)
    long = synthesize(encoder, targets, steps=60, **kwargs)
    assert long.shape == (6, 6)
    assert torch.equal(long, synthesize(encoder, targets, steps=60, **kwargs))
    goal = targets.repeat_interleave(3, 0)
    cos = lambda x: F.cosine_similarity(x, goal, dim=-1)  # noqa: E731
    assert cos(long).mean() > cos(short).mean() + 0.3


def test_domain_groups_carry_their_class_as_key():
    table = {"photo": ["a photo of a {}."], "sketch": ["a sketch of a {}."]}
    forget, retain = build_sides(["sandal"], ["bag"], [], [], ["sandal", "bag"], table, ["sketch"],
                                 forget_prompts=["Acme logo"])
    assert forget.keys == ["sandal", "Acme logo"]
    assert retain.keys == ["sandal", "bag", "bag"]
    emb = embed_side(lambda prompts: (torch.randn(len(prompts), 4), False), retain)
    assert emb.class_keys == ["sandal", "bag", "bag"] and emb.classnames == ["sandal in photo", "bag in photo",
                                                                            "bag in sketch"]


def test_ccup_proto_is_one_table_entry_that_uses_the_prototypes_it_is_given():
    entry = METHODS["ccup-proto"]
    assert entry.closed_form and {"prototype_steps", "prototypes_per_group"} <= set(entry.params)
    heads = _unit(4, 8, 7).float()
    forget = TextEmbeddings(["a in x"], ["{}"], heads[:1], heads[:1], keys=["a"])
    retain = TextEmbeddings(["a in y", "b in x", "b in y"], ["{}"], heads[1:], heads[1:], keys=["a", "b", "b"])
    params = {"lambda_retain": 1.0, "lambda_identity": 1e-4, "prototype_steps": 5, "prototypes_per_group": 2}
    with pytest.raises(ValueError, match="needs the model's image tower"):
        solve_full_map("ccup-proto", forget, retain, params)
    asked = []

    def synthesize_fake(targets, p):
        asked.append((targets.shape, p["prototypes_per_group"]))
        return targets.repeat_interleave(2, 0) + 0.01 * _unit(8, 8, 8).float()

    W = solve_full_map("ccup-proto", forget, retain, params, MethodContext(synthesize=synthesize_fake))
    assert asked == [((4, 8), 2)]
    protos = F.normalize(synthesize_fake(heads, params).double(), dim=-1)
    h = heads.double()
    assert (h[:2] @ W @ protos[:2].T < h[:2] @ protos[:2].T - 0.05).all()  # class a's heads on its forget prototypes


def _tiny_domain_folder(tmp_path):
    folder = tmp_path / "dom"
    for d in ("photo", "sketch"):
        make_image_folder(folder / d, ["sandal", "bag"], per_class=2, size=16)
    return folder


def test_eval_forget_domains_checks_only_the_forgotten_cells(tiny_vit_file, tmp_path):
    from ccup_cli.jobs.eval import EvalRequest, run_eval
    from ccup_cli.run.options import RunOptions

    folder = _tiny_domain_folder(tmp_path)
    req = EvalRequest(model=TINY_VIT, pretrained=str(tiny_vit_file), eval=str(folder), forget=["sandal"],
                      forget_domains=["sketch"])
    report, _ = run_eval(req, RunOptions(device="cpu", workers=0))
    before = report["metrics"]["before"]
    assert before["forget"]["n"] == 2 and before["retain"]["n"] == 6
    assert before["domains"]["photo"]["forget"]["n"] == 0
    whole_req = EvalRequest(model=TINY_VIT, pretrained=str(tiny_vit_file), eval=str(folder), forget_domains=["sketch"])
    whole, _ = run_eval(whole_req, RunOptions(device="cpu", workers=0))
    assert whole["metrics"]["before"]["forget"]["n"] == 4
    measured = whole["metrics"]["before"]["forget"]["top1"]
    assert measured > 0  # a threshold below it can fail
    held, failures = run_eval(replace(whole_req, max_forget_acc=measured), RunOptions(device="cpu", workers=0))
    assert held["thresholds"]["passed"] and failures == []
    missed, failures = run_eval(replace(whole_req, max_forget_acc=measured / 2), RunOptions(device="cpu", workers=0))
    assert not missed["thresholds"]["passed"]
    assert len(failures) == 1
    assert failures[0] == (f"forget top-1 {100 * measured:.1f} % is above --max-forget-acc {50 * measured:.1f} % "
                           f"by {50 * measured:.1f} points")


@pytest.mark.parametrize("extra, message", [
    (["--forget-domains", "skecth"], 'unknown domain "skecth"; did you mean "sketch"'),
    (["--forget-domains", "sketch", "--eval", "fashion-mnist-mini"], "has no domains"),
])
def test_eval_forget_domains_bad_input_exits_2(tiny_vit_file, tmp_path, extra, message):
    folder = _tiny_domain_folder(tmp_path)
    args = ["eval", "--model", TINY_VIT, "--pretrained", str(tiny_vit_file), "--eval", str(folder), "--forget",
            "sandal", "--device", "cpu", "--workers", "0", *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_unlearn_ccup_proto_through_the_job(tiny_vit_file, tmp_path):
    folder = _tiny_domain_folder(tmp_path)
    table = tmp_path / "domains.yaml"
    table.write_text("photo: ['a photo of a {}.']\nsketch: ['a sketch of a {}.']\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model: {TINY_VIT}\npretrained: {tiny_vit_file}\nforget: [sandal]\nforget_domains: [sketch]\n"
                    f"domains: {table}\neval: {folder}\nmethod: ccup-proto\nprototype_steps: 3\n"
                    "prototypes_per_group: 2\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["unlearn", str(spec), "--json", "--workers", "0", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["projector"]["method"] == "ccup-proto"
    assert report["projector"]["params"]["prototype_steps"] == 3 and report["projector"]["rank"] > 0
    assert report["timings"]["prototypes"] > 0
    # synthesis changed no weight: only the fold site differs, by P' − P = P (W − I)ᵀ of the reported rank
    src, dst = load_file(str(tiny_vit_file)), load_file(str(out / "model.safetensors"))
    assert {k for k in src if not torch.equal(src[k], dst[k])} == {"visual.proj"}
    change = torch.linalg.svdvals((dst["visual.proj"] - src["visual.proj"]).double())
    assert int((change > 1e-3 * change[0]).sum()) == report["projector"]["rank"]
