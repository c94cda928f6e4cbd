"""Concepts wider than a class, and near names in the default retain vocabulary (text/concepts.py,
run/vocabulary.py): the rule on controlled embeddings, then the whole path on a tiny random CLIP."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ccup_cli.cli import app
from ccup_cli.errors import SpecError
from ccup_cli.run.vocabulary import subset
from ccup_cli.spec.schema import build_spec
from ccup_cli.text.concepts import cover, near_names, standardised_similarity
from ccup_cli.text.embeddings import TextEmbeddings

from ..conftest import TINY_VIT

runner = CliRunner()


D = 16  # wide enough that random reference names sit well apart from any one direction


def unit(*rows):
    padded = [list(r) + [0.0] * (D - len(r)) for r in rows]
    return F.normalize(torch.tensor(padded, dtype=torch.float32), dim=-1)


def reference(n: int = 200, d: int = D, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_z_standardises_each_query_against_the_reference():
    ref = reference()
    queries = unit([1, 0, 0, 0], [0, 1, 0, 0])
    cosine, z = standardised_similarity(queries, ref[:5], ref)
    to_ref = queries.double() @ ref.double().T
    expected = (to_ref[:, :5] - to_ref.mean(1, keepdim=True)) / to_ref.std(1, keepdim=True)
    assert torch.allclose(z, expected) and torch.allclose(cosine, to_ref[:, :5])


def test_a_concept_covers_the_classes_its_z_reaches_and_no_others():
    classes = ["sandal", "sneaker", "bag", "coat"]
    class_emb = unit([1, 0.3, 0, 0], [1, -0.3, 0, 0], [0, 0, 1, 0], [0, 0, 0.2, 1])
    concepts = unit([1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0])  # near both shoes; near coat; near nothing much
    records = cover(["footwear", "outerwear", "kicks"], concepts, classes, class_emb, reference(), threshold=1.0)
    footwear, outerwear, _ = records
    assert footwear["covers"] == ["sandal", "sneaker"] and footwear["decided_by"] == "similarity"
    assert outerwear["covers"] == ["coat"]
    assert [s["class"] for s in footwear["similarity"]][:2] == ["sandal", "sneaker"]  # closest first, every class
    assert len(footwear["similarity"]) == 4
    z = {s["class"]: s["z"] for s in footwear["similarity"]}
    assert z["sandal"] >= 1.0 > z["bag"]
    none = cover(["footwear"], concepts[:1], classes, class_emb, reference(), threshold=50.0)[0]
    assert none["covers"] == []  # a threshold above every z covers nothing


def test_a_concept_spelled_like_a_class_covers_that_class_and_the_user_overrides():
    classes = ["sandal", "sneaker", "bag"]
    class_emb = unit([1, 0.1, 0, 0], [1, -0.1, 0, 0], [0, 0, 1, 0])
    records = cover(["Sneaker", "footwear"], unit([1, -0.1, 0, 0], [1, 0, 0, 0]), classes, class_emb, reference(),
                    threshold=0.5, named={"footwear": ["sneaker"]})
    assert records[0]["covers"] == ["sneaker"] and records[0]["decided_by"] == "class name"
    assert records[1]["covers"] == ["sneaker"] and records[1]["decided_by"] == "user"


def test_near_names_leaves_out_what_lies_close_to_a_forget_name():
    vocab_emb = torch.cat([unit([1, 0.05, 0, 0], [1, -0.2, 0, 0]), reference(50, seed=3)])
    vocabulary = ["clogs", "sandal", *[f"thing {i}" for i in range(50)]]
    keep, left_out = near_names(["sneaker"], unit([1, 0, 0, 0]), vocabulary, vocab_emb, threshold=2.0)
    assert [r["name"] for r in left_out][:2] == ["clogs", "sandal"]  # closest first
    assert all(r["forget"] == "sneaker" and r["z"] >= 2.0 for r in left_out)
    assert 0 not in keep and 1 not in keep and len(keep) + len(left_out) == len(vocabulary)


def test_subset_keeps_each_class_with_its_templates():
    per_template = torch.arange(12, dtype=torch.float32).reshape(6, 2)  # 3 classes x 2 templates
    emb = TextEmbeddings(["a", "b", "c"], ["{}", "a {}"], per_template, torch.eye(3, 2))
    part = subset(emb, [0, 2])
    assert part.classnames == ["a", "c"]
    assert torch.equal(part.per_template, per_template[[0, 1, 4, 5]])
    assert torch.equal(part.per_class, torch.eye(3, 2)[[0, 2]])


def test_spec_checks_concepts_at_once():
    spec = build_spec({}, {"forget_concepts": "footwear, tops", "concept_classes": "footwear=sandal+ankle boot,tops="})
    assert spec.forget_concepts == ["footwear", "tops"]
    assert spec.concept_classes == {"footwear": ["sandal", "ankle boot"], "tops": []}
    assert spec.forget == []  # concepts alone are a forget list
    with pytest.raises(SpecError) as err:
        build_spec({}, {"forget": "sneaker", "forget_concepts": "footwear,footwear,Sneaker",
                        "concept_classes": {"bags": ["bag"]}})
    lines = err.value.problems
    assert any('forget_concepts[1]: "footwear" is listed twice' in p for p in lines)
    assert any('forget_concepts[2]: "Sneaker" is also in forget' in p for p in lines)
    assert any('concept_classes.bags: "bags" is not in forget_concepts' in p for p in lines)
    with pytest.raises(SpecError, match="not combined with forget_domains"):
        build_spec({}, {"forget_concepts": "footwear", "forget_domains": "sketch"})
    with pytest.raises(SpecError, match="concept_classes: .*CONCEPT=CLASS"):
        build_spec({}, {"forget_concepts": "footwear", "concept_classes": "footwear"})


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})  # table cells on one line


def bad_input(result, *needles):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in result.output, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture()
def base(tiny_vit_file, fashion_folder):
    return ["unlearn", "--model", TINY_VIT, "--pretrained", tiny_vit_file, "--templates", "photo",
            "--retain-templates", "photo", "--json"]


def test_bad_concept_input_exits_2_in_one_line(base, fashion_folder, tmp_path):
    bad_input(run(*base, "--eval", fashion_folder, "--forget", "footwear"), '"footwear" is not a class',
              '--forget-concepts "footwear"')
    bad_input(run(*base, "--eval", fashion_folder, "--forget-concepts", "footwear", "--concept-classes",
                  "footwear=sandle"), 'concept_classes.footwear[0]: "sandle" is not a class', 'did you mean "sandal"')
    bad_input(run(*base, "--eval", "none", "--forget-concepts", "footwear", "--concept-classes", "footwear=sandal"),
              "concept_classes: names classes of an eval dataset")
    bad_input(run(*base, "--eval", fashion_folder, "--forget-concepts", "footwear", "--concept-classes",
                  "footwear=sandal", "--retain", "sandal,bag"), 'retain[0]: "sandal" is covered by concept')
    out = tmp_path / "out"
    result = run(*base, "--eval", fashion_folder, "--forget-concepts", "footwear", "--concept-threshold", "1000",
                 "--out", out)
    bad_input(result, 'forget_concepts[0]: "footwear" covers no class of', "--concept-classes footwear=")
    assert not out.exists()  # nothing half-written


def unlearn(base, *args) -> dict:
    result = run(*base, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_coverage_is_decided_by_similarity_and_covered_classes_leave_the_retain_side(base, fashion_folder):
    named = unlearn(base, "--eval", fashion_folder, "--forget-concepts", "footwear", "--concept-classes",
                    "footwear=sandal+sneaker")
    record = named["concepts"]["per_concept"][0]
    assert record["covers"] == ["sandal", "sneaker"] and record["decided_by"] == "user"
    assert named["text"]["forget_split_classes"] == ["sandal", "sneaker"]
    assert not {"sandal", "sneaker"} & set(named["spec"]["retain"]) and len(named["spec"]["retain"]) == 8
    assert named["metrics"]["before"]["forget"]["n"] == 6  # 3 images of each covered class
    # the rule: a threshold between the second and third z covers exactly the two closest classes
    sims = record["similarity"]
    assert len(sims) == 10 and sims[0]["z"] >= sims[1]["z"] > sims[2]["z"]
    threshold = (sims[1]["z"] + sims[2]["z"]) / 2
    report = unlearn(base, "--eval", fashion_folder, "--forget-concepts", "footwear", "--concept-threshold",
                     threshold)
    decided = report["concepts"]["per_concept"][0]
    closest = [s["class"] for s in sims[:2]]
    assert decided["decided_by"] == "similarity" and sorted(decided["covers"]) == sorted(closest)
    assert report["concepts"]["threshold"] == threshold
    assert not set(closest) & set(report["spec"]["retain"])
    assert sorted(report["text"]["forget_split_classes"]) == sorted(closest)
    assert report["spec"]["forget_concepts"] == ["footwear"]


def test_default_vocabulary_leaves_out_near_names_unless_kept(base):
    report = unlearn(base, "--eval", "none", "--forget", "sneaker", "--near-retain-threshold", "1")
    near = report["retain_vocabulary"]
    assert near["size"] == 999 and near["threshold"] == 1 and not near["kept_by_user"]
    assert near["near"] and all(r["z"] >= 1 and r["forget"] == "sneaker" for r in near["near"])
    left_out = {r["name"] for r in near["near"]}
    assert report["text"]["retain_classes"] == 999 - len(left_out)
    assert not left_out & set(report["spec"]["retain"]) and "metrics" not in report
    kept = unlearn(base, "--eval", "none", "--forget", "sneaker", "--near-retain-threshold", "1",
                   "--keep-near-retain")
    assert kept["retain_vocabulary"]["kept_by_user"] and kept["text"]["retain_classes"] == 999
    assert {r["name"] for r in kept["retain_vocabulary"]["near"]} == left_out
    named = unlearn(base, "--eval", "none", "--forget", "sneaker", "--retain", "sandal,bag")
    assert "retain_vocabulary" not in named and named["spec"]["retain"] == ["sandal", "bag"]  # the user's list


def test_the_printed_summary_says_what_was_covered_and_left_out(tiny_vit_file, fashion_folder):
    flags = ["unlearn", "--model", TINY_VIT, "--pretrained", tiny_vit_file, "--templates", "photo",
             "--retain-templates", "photo"]
    covered = run(*flags, "--eval", fashion_folder, "--forget-concepts", "footwear", "--concept-classes",
                  "footwear=sandal+ankle boot")
    assert covered.exit_code == 0, covered.output
    text = flat(covered.stdout)  # a table cell may wrap, whatever the terminal's width
    assert 'concept"footwear"' in text and "coversankleboot(z" in text
    assert "(namedbyyou)" in text and "next:" in text
    near = run(*flags, "--eval", "none", "--forget", "sneaker", "--near-retain-threshold", "1")
    assert near.exit_code == 0, near.output
    assert "leftout(near)" in flat(near.stdout) and "of999defaultnames" in flat(near.stdout)


def flat(table: str) -> str:
    """A printed rich table without its borders and white space, so wrapped cells read whole."""
    return re.sub(r"[\s│┃]", "", table)
