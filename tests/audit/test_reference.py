"""``ccup audit --reference``: the three-way comparison, its verdicts at their boundaries, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from ccup_cli.audit import reference as ref
from ccup_cli.cli import app
from ccup_cli.jobs.audit import AuditRequest, run_audit
from ccup_cli.run.options import RunOptions

from ..conftest import TINY_VIT, save_random

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


# --- the verdict at its boundaries ------------------------------------------------------------


@pytest.mark.parametrize("unlearned, reference, lower, verdict", [
    (0.30, 0.25, False, ref.AS_IF_NEVER_LEARNT),  # the gap is the tolerance itself: inside
    (0.20, 0.25, False, ref.AS_IF_NEVER_LEARNT),
    (0.251, 0.20, False, ref.LESS_FORGOTTEN),  # just past it, on the "known" side
    (0.149, 0.20, False, ref.MORE_FORGOTTEN),
    (0.02, 0.40, False, ref.MORE_FORGOTTEN),  # an AUC far below the reference's: avoided, detectable
    (1.00, 0.28, True, ref.MORE_FORGOTTEN),  # every one of the 100 ranked last: more than the reference
    (0.00, 0.28, True, ref.LESS_FORGOTTEN),
    (0.30, 0.28, True, ref.AS_IF_NEVER_LEARNT),
])
def test_verdict_boundaries(unlearned, reference, lower, verdict):
    assert ref.judge(unlearned, reference, 0.05, known_when_lower=lower) == verdict


def test_verdict_without_a_value_or_a_direction():
    assert ref.judge(None, 0.2, 0.05) is None and ref.judge(0.2, None, 0.05) is None
    assert ref.judge(0.40, 0.20, 0.15, directed=False) == ref.UNLIKE
    assert ref.judge(0.35, 0.20, 0.15, directed=False) == ref.AS_IF_NEVER_LEARNT
    row = ref._row("text search, its name", "share of the 100 ranked last", "sandal", "search_bottom_100",
                   {"original": 0.0, "unlearned": 1.0, "reference": 0.04})
    assert row["verdict"] == ref.MORE_FORGOTTEN and row["gap"] == pytest.approx(0.96)
    assert row["tolerance"] == ref.TOLERANCES["search_bottom_100"]


def test_image_search_counts_by_hand():
    # class 0: three images close together; class 1: three images elsewhere; one class-0 image strays
    feats = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.98, -0.1], [0.0, 1.0], [0.1, 0.99], [-0.1, 0.98]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    found = ref.image_search(feats, labels, 0)
    # each class-0 query ranks the other two class-0 images first among the 5 others: AUC 1
    assert found["auc"] == pytest.approx(1.0)
    assert found["p_at_10"] == pytest.approx(2 / 5)  # the cutoff is the 5 other images
    labels = torch.tensor([0, 0, 1, 1, 1, 0])  # now class 0 is two near images and one far one
    assert ref.image_search(feats, labels, 0)["auc"] < 1.0
    assert ref.image_search(feats, torch.tensor([0, 1, 1, 1, 1, 1]), 0) is None  # one image: no neighbour


def test_where_they_go_and_distance():
    pred = torch.tensor([2, 2, 1, 0, 0])
    labels = torch.tensor([0, 0, 0, 1, 1])
    shares = ref.where_they_go(pred, labels, 0, ["a", "b", "c"])
    assert shares == {"b": pytest.approx(1 / 3, abs=1e-4), "c": pytest.approx(2 / 3, abs=1e-4)}
    assert ref.total_variation({"b": 1.0}, {"c": 1.0}) == 1.0 and ref.total_variation(shares, shares) == 0.0


# --- a tiny random-init reference through the audit -------------------------------------------------


@pytest.fixture(scope="module")
def unlearned(tiny_vit_file, fashion_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "unlearned"
    result = run("unlearn", "--model", TINY_VIT, "--pretrained", tiny_vit_file, "--eval", fashion_folder,
                 "--templates", "photo", "--retain-templates", "photo", "--forget", "sandal,sneaker", "--out", out,
                 "-q")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def random_reference(tiny_models, tmp_path_factory):
    return save_random(TINY_VIT, tmp_path_factory.mktemp("ref-weights") / "never-learnt.safetensors", seed=1)


def _plain_open_clip_top1(weights, fashion_folder, templates):
    """Per-class top-1 with plain open_clip on the reference's own towers: an independent computation."""
    import open_clip
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(TINY_VIT, pretrained=str(weights))
    tokenizer = open_clip.get_tokenizer(TINY_VIT)
    model.eval()
    classes = sorted(p.name for p in fashion_folder.iterdir())
    with torch.no_grad():
        text = []
        for c in classes:
            t = torch.nn.functional.normalize(model.encode_text(tokenizer([f.format(c) for f in templates])), dim=-1)
            text.append(torch.nn.functional.normalize(t.mean(0), dim=-1))
        text = torch.stack(text)
        top1 = {}
        for k, c in enumerate(classes):
            files = sorted((fashion_folder / c).iterdir())
            pixels = torch.stack([preprocess(Image.open(f).convert("RGB")) for f in files])
            img = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
            top1[c] = float((img @ text.T).argmax(1).eq(k).double().mean())
    return top1


def test_a_random_init_reference_is_measured_with_its_own_towers(unlearned, random_reference, fashion_folder,
                                                                  tmp_path):
    out = tmp_path / "audit"
    aliases = tmp_path / "aliases.yaml"
    aliases.write_text("sandal: [beach sandal]\n")
    report = run_audit(AuditRequest(str(unlearned), aliases=str(aliases), probe_shots=[1], probe_draws=2,
                                    reference=str(random_reference)), RunOptions(device="cpu", out=out))
    section = report["reference"]
    groups = {r["group"] for r in section["rows"]}
    assert groups == {"zero-shot", "where its images go", "text search, its name", "held-out names", "probes",
                      "image-to-image search"}
    assert {r["subject"] for r in section["rows"]} == {"sandal", "sneaker"}
    assert all(r["verdict"] in ref.VERDICTS for r in section["rows"] if r["verdict"] is not None)
    assert section["summary"]["measured"] == sum(r["verdict"] is not None for r in section["rows"])
    # the original's column is the audit's own "before"; the unlearned column its "after"
    zs = report["zero_shot"][0]
    assert section["per_class_top1"]["sandal"]["original"] == zs["before"]["per_class"]["sandal"]
    assert section["per_class_top1"]["sandal"]["unlearned"] == zs["after"]["per_class"]["sandal"]
    # the reference column matches plain open_clip on the reference's weights (photo templates)
    from ccup_cli.text.templates import load_templates

    plain = _plain_open_clip_top1(random_reference, fashion_folder, load_templates("photo"))
    for c, cell in section["per_class_top1"].items():
        assert cell["reference"] == pytest.approx(plain[c], abs=0.002), c
    on_disk = json.loads((out / "audit.json").read_text())
    assert on_disk["reference"]["rows"] == section["rows"]
    assert on_disk["reference"]["model"]["sha256"] != report["model"].get("sha256")
    md = (out / "audit.md").read_text()
    assert "## Against a model that never learnt it" in md and section["headline"] in md
    assert "| sandal | probes: 1-shot linear probe, class recall |" in md
    assert report["cost"]["reference_seconds"] > 0
    assert any(k.startswith("reference_") for k in report["timings"])


def test_the_original_as_its_own_reference_has_no_gap(unlearned, tiny_vit_file):
    """A reference identical to the original: every reference value is the original's, exactly (the
    reference is encoded by its own towers, which here are the same)."""
    report = run_audit(AuditRequest(str(unlearned), probe_shots=[1], probe_draws=1, reference=str(tiny_vit_file)),
                       RunOptions(device="cpu"))
    for row in report["reference"]["rows"]:
        if row["group"] == "where its images go":
            assert row["original"] == 0.0
        else:
            assert row["reference"] == pytest.approx(row["original"], abs=1e-6), row


@pytest.mark.parametrize("args, needle", [
    (["--reference", "missing/folder"], "reference: missing/folder does not exist"),
    (["--reference", "never.safetensors"], "reference: never.safetensors does not exist"),
    (["--reference", "ccup-test-vit-typo", "--reference-pretrained", "none"], 'reference: unknown model'),
    (["--reference-pretrained", "none"], "reference-pretrained: given without --reference"),
    (["--reference", "local-dir:/nowhere"], "reference: model folder /nowhere does not exist"),
])
def test_a_bad_reference_exits_2_in_one_line_and_writes_nothing(unlearned, tmp_path, args, needle):
    out = tmp_path / "audit"
    result = run("audit", unlearned, *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and "Traceback" not in result.output
    assert result.stderr.strip().count("\n") == 0
    assert not out.exists()
