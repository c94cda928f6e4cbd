"""Sweeps, ``--alpha auto`` and the fine-tuning baseline, called as job functions on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ccup_cli.errors import SpecError, ThresholdNotReachable
from ccup_cli.jobs.eval import EvalRequest, run_eval
from ccup_cli.jobs.sweep import run_sweep_job
from ccup_cli.jobs.unlearn import run_unlearn
from ccup_cli.run.options import RunOptions
from ccup_cli.spec.schema import build_spec, parse_alphas

from ..conftest import FASHION, TINY_VIT, make_image_folder

OPTIONS = RunOptions(device="cpu", use_cache=False)


@pytest.fixture()
def spec_of(tiny_vit_file, fashion_folder):
    def make(**fields):
        flags = {"model": TINY_VIT, "pretrained": str(tiny_vit_file), "eval": str(fashion_folder),
                 "templates": "photo", "retain_templates": "photo", "forget": "sandal,sneaker"}
        return build_spec({}, {**flags, **fields})

    return make


def test_parse_alphas():
    assert parse_alphas("0,0.25,...,1") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_alphas("0, 0.5, 1") == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError):
        parse_alphas("0,...,1")


def test_sweep_rows_and_alpha_zero_is_the_original(spec_of, tiny_vit_file, fashion_folder, tmp_path):
    out = tmp_path / "sweep"
    report = run_sweep_job(spec_of(), [0.0, 0.5, 1.0], ["ccup", "nullspace"], OPTIONS.but(out=out))
    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert [(r["method"], r["alpha"]) for r in rows] == [
        ("ccup", 0.0), ("ccup", 0.5), ("ccup", 1.0), ("nullspace", 0.0), ("nullspace", 0.5), ("nullspace", 1.0)]
    assert rows[0]["params"] == {"lambda_retain": 1.0, "lambda_identity": 1e-4, "sink": "retain-mean-orthogonal"}
    assert rows[3]["params"] == {"energy": 0.99}
    for r in rows:
        assert set(r["metrics"]) == {"forget", "retain", "retain_only", "overall", "retrieval"}
        assert set(r["metrics"]["retrieval"]) == {"per_class", "forget", "retain"}
    original, _ = run_eval(EvalRequest(model=TINY_VIT, pretrained=str(tiny_vit_file), eval=str(fashion_folder),
                                       templates="photo", forget=["sandal", "sneaker"]), OPTIONS)
    assert rows[0]["metrics"] == original["metrics"]["before"]
    assert rows[3]["metrics"] == original["metrics"]["before"]
    assert rows[2]["metrics"] != rows[0]["metrics"]
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["sweep"]["rows"] == 6
    assert "rows" not in json.loads((out / "report.json").read_text()) and len(report["rows"]) == 6


def test_sweep_without_matplotlib_still_writes_jsonl(spec_of, tmp_path, monkeypatch):
    import ccup_cli.output.plots as plots

    def no_matplotlib(*args, **kwargs):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(plots, "plot_tradeoff", no_matplotlib)
    report = run_sweep_job(spec_of(), [0.0, 1.0], ["ccup"], OPTIONS.but(out=tmp_path / "s"))
    assert any("matplotlib is missing" in w for w in report["warnings"])
    assert (tmp_path / "s" / "sweep.jsonl").is_file()
    assert not (tmp_path / "s" / "tradeoff.png").exists()


@pytest.mark.parametrize("alphas, methods, needle", [
    ([0.0, 2.0], ["ccup"], "alphas[1]: 2.0 is outside [0, 1]"),
    ([0.5], ["ccup", "finetune"], 'methods[1]: method "finetune" needs labelled images'),
    ([0.5], ["cupp"], 'methods[0]: unknown method "cupp"'),
    ([0.5], ["ccup", "ccup:reference-chance"], "methods[1]: ccup:reference-chance calibrates on reference images, "
                                               "which ccup sweep does not read"),
])
def test_sweep_bad_alphas_and_methods_fail_at_the_door(spec_of, tmp_path, alphas, methods, needle):
    with pytest.raises(SpecError) as err:
        run_sweep_job(spec_of(), alphas, methods, OPTIONS.but(out=tmp_path / "s"))
    assert needle in err.value.one_line()
    assert not (tmp_path / "s").exists()


def embedded(**fields):
    """The embedded model on 30 images per class of its mini set: real forgetting, in a second."""
    return build_spec({}, {"forget": "sandal,sneaker", "eval_limit": 30, **fields})


@pytest.mark.embedded
def test_alpha_auto_searches_the_curve():
    curve = run_unlearn(embedded(alpha="auto", max_forget_acc=1.0, max_forget_retrieval=1.0),
                        OPTIONS)["auto_alpha"]["curve"]
    assert len(curve) == 21 and curve[0]["alpha"] == 0.0
    top, bottom = curve[0]["forget_top1"], curve[-1]["forget_top1"]
    assert top > 0.9 and bottom < 0.05
    target = 0.5
    report = run_unlearn(embedded(alpha="auto", max_forget_acc=target, max_forget_retrieval=1.0), OPTIONS)
    chosen = report["auto_alpha"]["chosen_alpha"]
    assert 0 < chosen <= 1 and report["projector"]["alpha"] == chosen
    assert report["metrics"]["after"]["forget"]["top1"] <= target
    earlier = [c for c in report["auto_alpha"]["curve"] if c["alpha"] < chosen]
    assert earlier and all(c["forget_top1"] > target for c in earlier)
    # the grid is refined below the first coarse answer: 0.01 steps there
    assert {round(chosen - 0.01, 2), round(chosen + 0.01, 2)} & set(report["auto_alpha"]["grid"])
    # that strength leaves search intact (these classes are found at 0.5 top-1), and says so
    intact = [w for w in report["warnings"] if "left intact" in w]
    p10 = {c: report["metrics"]["after"]["retrieval"]["per_class"][c]["p_at_10"] for c in ("sandal", "sneaker")}
    assert bool(intact) == any(v >= 0.5 for v in p10.values()) and any(v >= 0.5 for v in p10.values())


@pytest.mark.embedded
def test_alpha_auto_meets_the_search_targets_by_default_and_on_request():
    """Without a search target auto adds --max-forget-retrieval 0.2; every smaller α on its curve misses a
    target; with --max-forget-auc-gap the class ends near chance at both ends of its ranking."""
    report = run_unlearn(embedded(forget="bag", alpha="auto", max_forget_acc=0.5), OPTIONS)
    auto = report["auto_alpha"]
    assert auto["target_max_forget_retrieval"] == 0.2 and auto["target_max_forget_retrieval_is_default"]
    after = report["metrics"]["after"]["retrieval"]["per_class"]["bag"]
    assert max(after["p_at_10"], after["p_at_100"], after["r_precision"]) <= 0.2
    for point in auto["curve"]:
        if point["alpha"] < auto["chosen_alpha"]:
            search = point["forget_search"]["bag"]
            assert point["forget_top1"] > 0.5 or max(search["p_at_10"], search["p_at_100"],
                                                     search["r_precision"]) > 0.2
    gap = run_unlearn(embedded(forget="bag", alpha="auto", max_forget_acc=0.5, max_forget_auc_gap=0.15), OPTIONS)
    assert abs(gap["metrics"]["after"]["retrieval"]["per_class"]["bag"]["auc"] - 0.5) <= 0.15
    assert gap["auto_alpha"]["target_max_forget_auc_gap"] == 0.15
    assert gap["auto_alpha"]["chosen_alpha"] >= auto["chosen_alpha"]
    # the summary says the strength was chosen
    from rich.console import Console

    from ccup_cli.output.report import summary_table

    console = Console(record=True, width=120)
    console.print(summary_table(gap))
    assert f"ccup / {gap['auto_alpha']['chosen_alpha']} (auto)" in console.export_text()


def test_alpha_auto_with_no_alpha_meeting_a_search_target_is_one_line_exit_2(spec_of):
    with pytest.raises(ThresholdNotReachable) as err:
        run_unlearn(spec_of(alpha="auto", max_forget_auc_gap=0.0), OPTIONS)
    line = err.value.one_line()
    assert "no alpha in [0, 1] meets every target" in line and "max-forget-auc-gap 0.00 by" in line
    assert "\n" not in line


def test_alpha_auto_below_every_point_of_the_curve_is_bad_input(spec_of):
    """nullspace at energy 0.5 keeps some forget images right at every α on the tiny model."""
    curve = run_unlearn(spec_of(alpha="auto", max_forget_acc=1.0, max_forget_retrieval=1.0, method="nullspace",
                                energy=0.5), OPTIONS)["auto_alpha"]["curve"]
    best = min(c["forget_top1"] for c in curve)
    assert best > 0
    with pytest.raises(ThresholdNotReachable, match=f"best: forget top-1 {100 * best:.1f} %"):
        run_unlearn(spec_of(alpha="auto", max_forget_acc=best / 2, max_forget_retrieval=1.0, method="nullspace",
                            energy=0.5), OPTIONS)


def test_finetune_on_a_folder_needs_its_own_training_data(spec_of, fashion_folder, tmp_path):
    with pytest.raises(SpecError, match="no train split"):
        run_unlearn(spec_of(method="finetune"), OPTIONS.but(out=tmp_path / "ft"))
    with pytest.raises(SpecError, match="evaluation data itself"):
        run_unlearn(spec_of(method="finetune", finetune_data=str(fashion_folder)), OPTIONS)
    assert not (tmp_path / "ft").exists()


def test_finetune_trains_on_other_images_and_changes_only_what_it_trains(spec_of, tiny_vit_file, fashion_folder,
                                                                         tmp_path):
    train_folder = make_image_folder(tmp_path / "train" / "fashion", FASHION, per_class=4, seed=7)
    out = tmp_path / "ft"
    spec = spec_of(method="finetune", finetune_steps=3, finetune_batch_size=8, finetune_lr=0.01,
                   finetune_data=str(train_folder))
    report = run_unlearn(spec, OPTIONS.but(out=out))
    train = report["inputs"]["train_data"]
    assert train["n_images"] == 40 and train["file_list_sha256"] != report["dataset"]["file_list_sha256"]
    train_bytes = {p.read_bytes() for p in train_folder.rglob("*.png")}
    eval_bytes = {p.read_bytes() for p in fashion_folder.rglob("*.png")}
    assert train_bytes and eval_bytes and not train_bytes & eval_bytes  # disjoint images
    trained = set(report["finetune"]["trained_tensors"])
    assert "visual.proj" in trained and any(k.startswith("visual.transformer.resblocks.1.") for k in trained)
    assert not any(k.startswith("visual.transformer.resblocks.0.") or k.startswith("transformer.") for k in trained)
    src, dst = load_file(str(tiny_vit_file)), load_file(str(out / "model.safetensors"))
    changed = {k for k in src if not torch.equal(src[k], dst[k])}
    assert changed and changed <= trained
    assert report["finetune"]["steps"] <= 3 and report["finetune"]["images_seen"] > 0


def test_finetune_default_training_data_is_the_named_datasets_train_split(tmp_path):
    """The embedded mini subset (test images) trains on Fashion-MNIST's train split: disjoint by construction."""
    from ccup_cli.data.catalog import MINI_NAME
    from ccup_cli.data.datasets import open_dataset
    from ccup_cli.run.door import finetune_dataset

    root = Path("/usr/share/datasets/fashion-mnist")
    if not any(root.glob("train-images-idx3-ubyte*")):  # only absent data skips; any error below fails
        pytest.skip(f"Debian's Fashion-MNIST is not installed under {root}")
    spec = build_spec({}, {"forget": "sandal", "method": "finetune", "eval": MINI_NAME, "data_root": None})
    eval_data = open_dataset(MINI_NAME)
    train = finetune_dataset(spec, eval_data)
    assert train.split == "train" and len(train) == 60_000
    assert not set(train.item_ids) & set(eval_data.item_ids)
    test_images = {eval_data.load_image(i).tobytes() for i in range(0, len(eval_data), 50)}
    assert not {train.load_image(i).tobytes() for i in range(0, 60_000, 1_500)} & test_images


def test_finetune_is_refused_under_torchrun(spec_of, tmp_path, monkeypatch):
    train_folder = make_image_folder(tmp_path / "train" / "fashion", FASHION, per_class=2, seed=7)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it for each rank
    with pytest.raises(SpecError) as err:
        run_unlearn(spec_of(method="finetune", finetune_steps=2, finetune_data=str(train_folder)),
                    OPTIONS.but(out=tmp_path / "ft"))
    assert "method: finetune runs in one process, not under torchrun" in err.value.one_line()
    assert not (tmp_path / "ft").exists()


@pytest.mark.embedded
def test_finetune_stops_early_once_held_out_forget_top1_meets_max_forget_acc(monkeypatch):
    """A check every 2 steps: a target the first check meets stops there; one it cannot meet runs the budget."""
    import ccup_cli.methods.finetune as finetune

    monkeypatch.setattr(finetune, "CHECK_EVERY", 2)
    common = dict(method="finetune", finetune_steps=6, finetune_batch_size=8, finetune_lr=1e-5, eval_limit=5,
                  templates="photo", retain_templates="photo")
    met = run_unlearn(embedded(max_forget_acc=1.0, **common), OPTIONS)["finetune"]
    assert met["stopped_early"] is True and met["steps"] == 2 and len(met["history"]) == 1
    first = met["history"][0]["holdout_forget_top1"]
    assert first > 0.5  # the embedded model still knows sandals and sneakers after 2 small steps
    missed = run_unlearn(embedded(max_forget_acc=0.0, **common), OPTIONS)["finetune"]
    assert missed["stopped_early"] is False and missed["steps"] == 6
    assert [h["step"] for h in missed["history"]] == [2, 4, 6]
    assert missed["history"][0]["holdout_forget_top1"] == first  # same seed, same first check
    assert all(h["holdout_forget_top1"] > 0.0 for h in missed["history"])


def test_a_failed_sweep_write_leaves_the_previous_folder_and_nothing_else(spec_of, tmp_path, monkeypatch):
    """report.json, the last file, fails to write after sweep.jsonl, spec.yaml and the plot are written."""
    import errno

    import ccup_cli.output.report as rep
    from ccup_cli.errors import OutputError

    def failing_write(path, report):
        path.write_text('{"partial": ')
        raise OSError(errno.ENOSPC, "simulated")

    out = tmp_path / "s"
    out.mkdir()
    (out / "sweep.jsonl").write_text("previous\n")
    monkeypatch.setattr(rep, "write_report", failing_write)
    with pytest.raises(OutputError, match="no space left"):
        run_sweep_job(spec_of(), [0.0, 1.0], ["ccup"], OPTIONS.but(out=out, overwrite=True))
    assert [p.name for p in tmp_path.iterdir()] == ["s"]
    assert [p.name for p in out.iterdir()] == ["sweep.jsonl"] and (out / "sweep.jsonl").read_text() == "previous\n"
    with pytest.raises(OutputError):
        run_sweep_job(spec_of(), [0.0, 1.0], ["ccup"], OPTIONS.but(out=tmp_path / "fresh"))
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def test_auto_search_target_defaults_on_for_classes_and_off_for_a_domain_forget():
    """A class's search ranks every domain's images, so a domain forget gets no default search target
    (meeting it would forget the class in the kept domains); a given target always applies."""
    from ccup_cli.jobs.unlearn import auto_targets
    from ccup_cli.metrics.targets import AUTO_MAX_FORGET_RETRIEVAL

    plain = build_spec({"forget": ["sandal"], "alpha": "auto", "max_forget_acc": 0.05}, {})
    assert auto_targets(plain).max_forget_retrieval == AUTO_MAX_FORGET_RETRIEVAL == 0.2
    domain = build_spec({"forget": ["sandal"], "forget_domains": ["sketch"], "domains": "fashion-mnist-domains",
                         "alpha": "auto", "max_forget_acc": 0.05}, {})
    assert auto_targets(domain).max_forget_retrieval is None
    given = build_spec({"forget": ["sandal"], "forget_domains": ["sketch"], "domains": "fashion-mnist-domains",
                        "alpha": "auto", "max_forget_acc": 0.05, "max_forget_retrieval": 0.3}, {})
    assert auto_targets(given).max_forget_retrieval == 0.3
    assert auto_targets(plain.model_copy(update={"max_forget_retrieval": 1.0})).max_forget_retrieval is None
