"""``ccup audit``: probes, the aliases file, the page and figures, and the chain of folders."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ccup_cli.audit import figures as audit
from ccup_cli.audit.aliases import read_aliases
from ccup_cli.audit.figures import HONEST_STATEMENT
from ccup_cli.audit.lineage import trace
from ccup_cli.audit.probe import draw_pool, k_shot_indices, probe_curve, train_probe
from ccup_cli.cli import app
from ccup_cli.errors import OutputError, SpecError
from ccup_cli.jobs.audit import AuditRequest, run_audit
from ccup_cli.run.options import RunOptions

from ..conftest import FASHION, TINY_VIT, make_image_folder

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def blobs(seed: int = 0, per_class: int = 20, n_classes: int = 4, d: int = 8):
    """Gaussian blobs around random unit means: linearly separable with a margin."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(n_classes, d, generator=gen), dim=-1)
    labels = np.repeat(np.arange(n_classes), per_class)
    feats = means[labels] + 0.05 * torch.randn(len(labels), d, generator=gen)
    return feats, labels


# --- probes ------------------------------------------------------------------------------------


def test_probe_is_deterministic_under_a_seed_and_draws_differ_across_seeds():
    feats, labels = blobs()
    test_feats, test_labels = blobs(seed=1)
    test_feats = test_feats + 0.4 * torch.randn(test_feats.shape, generator=torch.Generator().manual_seed(3))
    args = dict(n_classes=4, forget_ids=[0], shots=[1, 4], draws=3)
    first = probe_curve(feats, labels, test_feats, test_labels, seed=7, **args)
    again = probe_curve(feats, labels, test_feats, test_labels, seed=7, **args)
    assert first == again
    assert [r["k"] for r in first] == [1, 4]
    assert len(first[0]["forget"]["draws"]) == 3
    assert not np.array_equal(k_shot_indices(labels, 4, 7), k_shot_indices(labels, 4, 8))
    pool = draw_pool(labels, [4], 3, 7)
    assert all(np.array_equal(a, b) for a, b in zip(pool[4], [k_shot_indices(labels, 4, 7 + j) for j in range(3)]))


def test_probe_learns_separable_classes():
    feats, labels = blobs()
    w, b = train_probe(feats, torch.as_tensor(labels), 4)
    assert w.shape == (4, 8) and b.shape == (4,)
    rows = probe_curve(feats, labels, feats, labels, 4, [0, 1], [5], draws=2)
    assert rows[0]["forget"]["mean"] == 1.0 and rows[0]["retain"]["mean"] == 1.0


# --- the aliases file ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, needle", [
    ("sandal: [beach sandal\n", "not valid YAML"),
    ("- sandal\n- sneaker\n", "must map class names"),
    ("sandal: 3\n", "aliases.sandal"),
    ("sandal: [beach sandal, '']\n", "aliases.sandal[1]"),
    ("sandl: [beach sandal]\n", 'did you mean "sandal"'),
])
def test_aliases_file_errors(tmp_path, text, needle):
    path = tmp_path / "aliases.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        read_aliases(path, FASHION, "fashion")
    assert needle in err.value.one_line()


def test_aliases_file_reads_in_the_datasets_spelling(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text("Sandal: [beach sandal, beach sandal]\nsneaker: tennis shoe\n")
    assert read_aliases(path, FASHION, "fashion") == {"sandal": ["beach sandal"], "sneaker": ["tennis shoe"]}


@pytest.fixture(scope="module")
def unlearned(tiny_vit_file, fashion_folder, tmp_path_factory):
    """An unlearn output folder of the tiny ViT (forget sandal, sneaker) on the PNG folder."""
    out = tmp_path_factory.mktemp("audit") / "unlearned"
    result = run("unlearn", "--model", TINY_VIT, "--pretrained", tiny_vit_file, "--eval", fashion_folder,
                 "--templates", "photo", "--retain-templates", "photo", "--forget", "sandal,sneaker", "--out", out,
                 "-q")
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("text, needle", [
    ("sandal: [beach sandal\n", "not valid YAML"),
    ("sandal: {a: b}\n", "aliases.sandal: give a non-empty list"),
    ("snaeker: [tennis shoe]\n", 'did you mean "sneaker"'),
])
def test_audit_cli_bad_aliases_file_exits_2_and_writes_nothing(unlearned, tmp_path, text, needle):
    path = tmp_path / "aliases.yaml"
    path.write_text(text)
    out = tmp_path / "audit"
    result = run("audit", unlearned, "--aliases", path, "--out", out)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and "Traceback" not in result.output
    assert not out.exists()


def test_audit_cli_missing_aliases_file_and_bad_shots_exit_2(unlearned, tmp_path):
    result = run("audit", unlearned, "--aliases", tmp_path / "none.yaml", "--out", tmp_path / "a")
    assert result.exit_code == 2 and "none.yaml" in result.stderr
    result = run("audit", unlearned, "--probe-shots", "4,x", "--out", tmp_path / "b")
    assert result.exit_code == 2 and "probe-shots" in result.stderr
    result = run("audit", unlearned, "--probe-shots", "0", "--out", tmp_path / "c")
    assert result.exit_code == 2 and "probe-shots: 0 must be a positive number" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_audit_reports_every_problem_at_once(unlearned, tmp_path):
    """As the door does for unlearn: flags, classes, templates and the output, one line each, one run."""
    taken = tmp_path / "taken"
    taken.mkdir()
    result = run("audit", unlearned, "--probe-shots", "0,4", "--eval-limit", "0",
                 "--forget", "sandl", "--templates", "no-such-set", "--out", taken)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    for needle in ("probe-shots: 0 must be", "eval-limit: 0 must be",
                   '"sandl" is not a class', "templates:", f"{taken} already exists"):
        assert sum(needle in line for line in lines) == 1, (needle, lines)
    assert "Traceback" not in result.output and [p.name for p in tmp_path.iterdir()] == ["taken"]


# --- the page and the figures ------------------------------------------------------------------


def test_unlearn_folder_has_a_summary_page(unlearned):
    readme = (unlearned / "README.md").read_text()
    assert readme.startswith("# ")
    assert "sandal, sneaker" in readme and "forget top-1" in readme
    assert "does not remove what a probe" in readme
    assert (unlearned / "per_class_top1.png").read_bytes()[:8] == PNG_MAGIC
    report = json.loads((unlearned / "report.json").read_text())
    assert set(report["outputs"]["summary"]) == {"README.md", "per_class_top1.png"}


def test_audit_writes_markdown_json_and_pngs_verdict_first(unlearned, tmp_path, fashion_folder):
    aliases = tmp_path / "aliases.yaml"
    aliases.write_text("sandal: [beach sandal]\nsneaker: [tennis shoe, trainer]\n")
    out = tmp_path / "audit"
    report = run_audit(AuditRequest(str(unlearned), aliases=str(aliases), probe_shots=[1], probe_draws=2),
                       RunOptions(device="cpu", out=out))
    assert sorted(p.name for p in out.iterdir()) == ["audit.json", "audit.md", "confusion_shift.png",
                                                     "per_class_top1.png", "probe_accuracy.png", "retrieval.png"]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
    md = (out / "audit.md").read_text()
    first_paragraph = md.split("\n\n")[1]
    assert first_paragraph == f"**Verdict:** {report['verdict']['headline']}"
    assert ("NOT GONE" in first_paragraph) == (not report["verdict"]["zero_shot_removed"]
                                               or not report["verdict"]["search_removed"])
    # the verdict itself is pinned on the embedded model, both ways: test_verdict_is_right_both_ways
    assert "does not remove what a probe" in md and "needs labelled images" in md
    assert md.count(HONEST_STATEMENT) == 1  # the caveat once, under the verdict
    assert "Chance: 10.0 % (one of 10 classes)." in md
    assert "LEACE (least-squares concept erasure" in md and "LEACE: measured" not in md
    assert "—" not in md  # every cell says something in words
    assert "| R-precision before % |" in md and "| bottom-100 before % |" in md and "| AUC before |" in md
    auc_after = report["zero_shot"][0]["after"]["forget_search"]["sandal"]["auc"]
    assert f"| {auc_after:.2f} |" in md.split("## Text search and aliases")[1]
    on_disk = json.loads((out / "audit.json").read_text())
    assert on_disk["forget"] == ["sandal", "sneaker"]
    assert on_disk["patched"]["single_pass"] is True
    assert on_disk["patched"]["differs_from_original_at"] == ["visual.proj"]
    assert [r["alias"] for r in on_disk["alias_rows"]] == ["beach sandal", "tennis shoe", "trainer"]
    assert on_disk["probes"]["train_on"].startswith("held-out")  # an ImageFolder has no train split
    assert set(on_disk["confusion"]) == {"sandal", "sneaker"}
    # the audit's "before" is the original model: the same numbers as the unlearn report's
    unlearn = json.loads((unlearned / "report.json").read_text())
    assert on_disk["zero_shot"][0]["before"]["forget_top1"] == unlearn["metrics"]["before"]["forget"]["top1"]
    assert on_disk["zero_shot"][0]["after"]["forget_top1"] == unlearn["metrics"]["after"]["forget"]["top1"]


def test_audit_of_a_bare_checkpoint_needs_model_and_forget(unlearned, tiny_vit_file, tmp_path, fashion_folder):
    bare = tmp_path / "patched.safetensors"
    bare.write_bytes((unlearned / "model.safetensors").read_bytes())
    result = run("audit", bare, "--out", tmp_path / "a")
    assert result.exit_code == 2 and "--model" in result.stderr
    result = run("audit", bare, "--model", TINY_VIT, "--pretrained", tiny_vit_file, "--eval", fashion_folder,
                 "--out", tmp_path / "a")
    assert result.exit_code == 2 and "--forget" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["patched.safetensors"]  # nothing written
    result = run("audit", bare, "--model", TINY_VIT, "--pretrained", tiny_vit_file, "--eval", fashion_folder,
                 "--forget", "sandal", "--probe-shots", "", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["lineage"] is None and report["probes"] is None and report["forget"] == ["sandal"]


def test_a_failed_audit_write_leaves_the_previous_folder_and_nothing_else(unlearned, tmp_path, monkeypatch):
    """The write fails after the PNGs and audit.md are in the temporary folder: nothing of it is left."""
    import ccup_cli.output.report as rep

    out = tmp_path / "audit"
    out.mkdir()
    (out / "previous.txt").write_text("kept")

    def failing_write(path, report):
        path.write_text('{"partial": ')
        raise OSError(errno.ENOSPC, "simulated")

    monkeypatch.setattr(rep, "write_report", failing_write)
    with pytest.raises(OutputError, match="no space left"):
        run_audit(AuditRequest(str(unlearned), probe_shots=[]), RunOptions(device="cpu", out=out, overwrite=True))
    assert [p.name for p in tmp_path.iterdir()] == ["audit"]
    assert [p.name for p in out.iterdir()] == ["previous.txt"]
    with pytest.raises(OutputError):
        run_audit(AuditRequest(str(unlearned), probe_shots=[]), RunOptions(device="cpu", out=tmp_path / "fresh"))
    assert [p.name for p in tmp_path.iterdir()] == ["audit"]


def test_audit_of_a_finetune_output_encodes_both_models_and_says_so(tiny_vit_file, fashion_folder, tmp_path):
    from ccup_cli.jobs.unlearn import run_unlearn
    from ccup_cli.spec.schema import build_spec

    train = make_image_folder(tmp_path / "train" / "fashion", FASHION, per_class=2, seed=5)
    spec = build_spec({}, {"model": TINY_VIT, "pretrained": str(tiny_vit_file), "eval": str(fashion_folder),
                           "templates": "photo", "retain_templates": "photo", "forget": "sandal,sneaker",
                           "method": "finetune", "finetune_steps": 2, "finetune_batch_size": 4, "finetune_lr": 0.05,
                           "finetune_data": str(train)})
    options = RunOptions(device="cpu", use_cache=False)
    tuned = run_unlearn(spec, options.but(out=tmp_path / "ft"))
    report = run_audit(AuditRequest(str(tmp_path / "ft"), probe_shots=[]), options.but(out=tmp_path / "audit"))
    patched = report["patched"]
    assert patched["single_pass"] is False
    outside = [k for k in patched["differs_from_original_at"] if k != "visual.proj"]
    assert outside and set(patched["differs_from_original_at"]) <= set(tuned["finetune"]["trained_tensors"])
    assert "both models encoded the images" in patched["note"] and outside[0] in patched["note"]
    assert "encode_images_patched" in report["timings"]
    assert f"Note: {patched['note']}." in (tmp_path / "audit" / "audit.md").read_text()
    # the "after" figures are the fine-tuned model's own: the same as the unlearn report measured
    after = report["zero_shot"][0]["after"]
    assert after["forget_top1"] == tuned["metrics"]["after"]["forget"]["top1"]
    assert after["retain_top1"] == tuned["metrics"]["after"]["retain"]["top1"]
    assert report["zero_shot"][0]["before"]["forget_top1"] == tuned["metrics"]["before"]["forget"]["top1"]


# --- the verdict on the embedded model -------------------------------------------------------------

EMBEDDED_LIMIT = 50  # images per class of fashion-mnist-mini: 500 images, a P@100 of 0.5 at most per class


@pytest.fixture(scope="module")
def embedded_alpha_1(tmp_path_factory):
    from ccup_cli.jobs.unlearn import run_unlearn
    from ccup_cli.spec.schema import build_spec

    out = tmp_path_factory.mktemp("audit-embedded") / "alpha-1"
    run_unlearn(build_spec({}, {"forget": "sandal,sneaker", "alpha": 1.0, "eval_limit": EMBEDDED_LIMIT}),
                RunOptions(device="cpu").but(out=out))
    return out


@pytest.mark.embedded
def test_verdict_is_right_both_ways(embedded_alpha_1, tmp_path):
    """Zero-shot GONE on the α = 1 output, its search NOT GONE because the default sink ranks the class at the
    bottom (issue 21); both NOT GONE, search found at the top, on an unpatched copy (a bare checkpoint)."""
    from ccup_cli.backends.open_clip import EMBEDDED_DIR, EMBEDDED_MODEL

    options = RunOptions(device="cpu")
    gone = run_audit(AuditRequest(str(embedded_alpha_1), eval_limit=EMBEDDED_LIMIT, probe_shots=[]), options)
    v = gone["verdict"]
    assert v["zero_shot_removed"] is True and v["search_removed"] is False, v
    assert v["search_avoided"] is True and v["search_found"] is False, v
    assert v["worst_forget_top1"] <= 0.05 and v["worst_forget_p_at_100"] <= 0.10
    assert v["forget_auc_range"][0] < 0.35  # below chance: a reversed search finds the class
    assert v["headline"].startswith("GONE for zero-shot") and "NOT GONE for text search (avoided" in v["headline"]
    copy = tmp_path / "unpatched.safetensors"
    copy.write_bytes((EMBEDDED_DIR / "open_clip_model.safetensors").read_bytes())
    kept = run_audit(AuditRequest(str(copy), model=EMBEDDED_MODEL, forget=["sandal", "sneaker"],
                                  eval="fashion-mnist-mini", eval_limit=EMBEDDED_LIMIT, probe_shots=[]), options)
    v = kept["verdict"]
    assert kept["patched"]["differs_from_original_at"] == []
    assert v["zero_shot_removed"] is False and v["search_removed"] is False, v
    assert v["search_found"] is True and v["search_avoided"] is False, v
    assert v["worst_forget_top1"] > 0.8 and v["worst_forget_p_at_100"] > 0.3
    assert v["headline"].startswith("NOT GONE for zero-shot") and "NOT GONE for text search" in v["headline"]


@pytest.mark.embedded
def test_check_exits_1_on_the_demo_output(embedded_alpha_1, tmp_path):
    """`make demo`'s settings (sandal, sneaker, α = 1, the default sink): search is avoided at the bottom, so
    `ccup audit --check` exits 1 and says why, after writing its pages; without --check the same audit exits 0.
    (The GONE case, exit 0, is the README quick start: tests/test_docs.py.)"""
    args = ["audit", str(embedded_alpha_1), "--eval-limit", str(EMBEDDED_LIMIT), "--probe-shots", ""]
    checked = runner.invoke(app, [*args, "--check", "--out", str(tmp_path / "a")])
    assert checked.exit_code == 1, checked.output
    assert checked.stderr.count("check failed:") == 1
    assert "check failed: NOT GONE for text search (avoided at the bottom" in checked.stderr
    assert (tmp_path / "a" / "audit.md").is_file()  # the pages are written first, either way
    assert runner.invoke(app, args).exit_code == 0


@pytest.mark.embedded
def test_leace_row_is_measured_where_concept_erasure_is_installed(embedded_alpha_1, tmp_path, monkeypatch):
    pytest.importorskip("concept_erasure")  # the audit extra; CI installs it (make install: .[audit])
    import importlib.util

    request = dict(eval_limit=EMBEDDED_LIMIT, probe_shots=[4], probe_draws=1)
    report = run_audit(AuditRequest(str(embedded_alpha_1), **request), RunOptions(device="cpu", out=tmp_path / "a"))
    leace = report["probes"]["leace"]
    assert leace["status"] == "measured" and "needs labelled images" in leace["note"]
    assert [r["k"] for r in leace["rows"]] == [4]
    for key in ("forget", "retain"):
        assert 0.0 <= leace["rows"][0][key]["mean"] <= 1.0
    assert report["timings"]["leace"] > 0 and report["cost"]["probe_seconds"] > 0
    md = (tmp_path / "a" / "audit.md").read_text()
    assert "| LEACE on patched (needs labelled images) | 4 |" in md
    assert "LEACE (least-squares concept erasure" in md and "; a comparison, not what ccup does." in md
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "concept_erasure" else real(name, *a))
    without = run_audit(AuditRequest(str(embedded_alpha_1), **request), RunOptions(device="cpu"))
    assert without["probes"]["leace"]["status"] == "not installed"
    assert "pip install 'ccup[audit]'" in without["probes"]["leace"]["note"]


# --- sequential unlearning -----------------------------------------------------------------------


def test_lineage_chains_sequential_folders(unlearned, tiny_vit_file, fashion_folder, tmp_path):
    second = tmp_path / "second"
    result = run("unlearn", "--model", TINY_VIT, "--pretrained", unlearned / "model.safetensors", "--eval",
                 fashion_folder, "--templates", "photo", "--retain-templates", "photo", "--forget", "bag",
                 "--out", second, "-q")
    assert result.exit_code == 0, result.output
    lineage = trace(second)
    assert [s.folder.name for s in lineage.steps] == ["unlearned", "second"]
    assert lineage.forget == ["sandal", "sneaker", "bag"]
    assert lineage.root_source == (TINY_VIT, str(tiny_vit_file))
    assert lineage.intact()
    lineage.steps[1].source_sha256 = "0" * 64
    assert not lineage.intact()


@pytest.mark.embedded
def test_sequential_unlearning_matches_both_at_once(tmp_path):
    """Forget sandal, then sneaker from the first output, against both at once (fashion-mnist-mini)."""
    from ccup_cli.jobs.unlearn import run_unlearn
    from ccup_cli.spec.schema import build_spec

    opts = RunOptions(device="cpu")
    first = run_unlearn(build_spec({}, {"forget": "sandal", "alpha": 1.0}), opts.but(out=tmp_path / "first"))
    assert first["metrics"]["after"]["forget"]["top1"] <= 0.02
    seq = run_audit(AuditRequest(str(_second(tmp_path, opts)), probe_shots=[]), opts)
    both = run_unlearn(build_spec({}, {"forget": "sandal,sneaker", "alpha": 1.0}), opts)["metrics"]["after"]
    after = seq["zero_shot"][0]["after"]
    assert seq["forget"] == ["sandal", "sneaker"]
    assert abs(after["forget_top1"] - both["forget"]["top1"]) <= 0.01
    assert abs(after["retain_top1"] - both["retain"]["top1"]) <= 0.005
    assert after["forget_top1"] <= 0.02  # both forgets hold
    assert seq["lineage"]["intact"] and len(seq["lineage"]["steps"]) == 2
    assert seq["lineage"]["steps"][1]["source"]["sha256"] == seq["lineage"]["steps"][0]["output_sha256"]


def _second(tmp_path, opts):
    from ccup_cli.jobs.unlearn import run_unlearn
    from ccup_cli.spec.schema import build_spec

    run_unlearn(build_spec({}, {"forget": "sneaker", "alpha": 1.0, "pretrained": str(tmp_path / "first")}),
                opts.but(out=tmp_path / "second"))
    return tmp_path / "second"


def _query(**over):
    at_chance = {"p_at_10": 0.1, "p_at_100": 0.08, "r_at_100": 0.1, "r_precision": 0.12, "bottom_100": 0.1,
                 "auc": 0.52}
    return {**at_chance, **over}


@pytest.mark.parametrize("query, removed, found, avoided", [
    (_query(), True, False, False),
    (_query(bottom_100=1.0, auc=0.02), False, False, True),  # avoided: a reversed search finds it
    (_query(auc=0.3), False, False, True),  # AUC alone below chance - gap
    (_query(p_at_10=0.3), False, True, False),
    (_query(r_precision=0.25), False, True, False),
    (_query(auc=0.7), False, True, False),
])
def test_search_verdict_is_chance_at_every_depth(query, removed, found, avoided):
    v = audit.search_verdict([_query(), query])
    assert (v["search_removed"], v["search_found"], v["search_avoided"]) == (removed, found, avoided)
    text = audit.search_headline(v)
    assert text.startswith("GONE" if removed else "NOT GONE")
    assert ("reversed search finds it" in text) == avoided and ("found at the top" in text) == found
    assert v["forget_auc_range"] == [min(0.52, query["auc"]), max(0.52, query["auc"])]


def test_alias_search_ranking_counts_by_hand():
    # one query along x; class 1 holds the 3 images with the lowest x of 6: avoided
    feats = torch.tensor([[6.0, 1], [5, 1], [4, 1], [3, 1], [2, 1], [1, 1]])
    r = audit.search_ranking(feats, torch.tensor([1.0, 0.0]), torch.tensor([0, 0, 0, 1, 1, 1]), 1)
    assert r["auc"] == 0.0 and r["p_at_10"] == 0.5 and r["r_precision"] == 0.0 and r["bottom_100"] == 0.5
    assert audit.search_ranking(feats, torch.tensor([1.0, 0.0]), torch.zeros(6, dtype=torch.long), 1)["auc"] is None
