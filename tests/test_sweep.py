"""``ccup sweep``, ``--alpha auto`` and the fine-tuning baseline, on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ccup_cli.cli import app
from ccup_cli.sweep import parse_alphas

from .conftest import TINY_VIT

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def base(tiny_vit_file, fashion_folder):
    return ["--model", TINY_VIT, "--pretrained", tiny_vit_file, "--eval", fashion_folder, "--templates", "photo",
            "--retain-templates", "photo", "--forget", "sandal,sneaker"]


def test_parse_alphas():
    assert parse_alphas("0,0.25,...,1") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_alphas("0, 0.5, 1") == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError):
        parse_alphas("0,...,1")


def test_sweep_jsonl_structure_and_alpha_zero_is_the_original(base, tmp_path):
    out = tmp_path / "sweep"
    result = run("sweep", *base, "--alphas", "0,0.5,1", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert [(r["method"], r["alpha"]) for r in rows] == [
        ("ccup", 0.0), ("ccup", 0.5), ("ccup", 1.0), ("nullspace", 0.0), ("nullspace", 0.5), ("nullspace", 1.0)]
    for r in rows:
        assert set(r["metrics"]) == {"forget", "retain", "retain_only", "overall", "retrieval"}
        assert set(r["metrics"]["forget"]) >= {"top1", "top5", "mean_per_class_recall", "per_class"}
    original = json.loads(run("eval", *base[:6], "--templates", "photo", "--forget", "sandal,sneaker", "--json",
                              "--no-cache").stdout)
    assert rows[0]["metrics"] == original["metrics"]["before"]
    assert rows[3]["metrics"] == original["metrics"]["before"]
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["sweep"]["rows"] == 6


def test_sweep_without_matplotlib_still_writes_jsonl(base, tmp_path, monkeypatch):
    import ccup_cli.pipeline as pipeline

    def no_matplotlib(*args, **kwargs):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(pipeline, "plot_tradeoff", no_matplotlib)
    result = run("sweep", *base, "--alphas", "0,1", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert "matplotlib is missing" in result.stderr
    assert (tmp_path / "s" / "sweep.jsonl").is_file()
    assert not (tmp_path / "s" / "tradeoff.png").exists()


def test_sweep_bad_alphas_are_bad_input(base, tmp_path):
    result = run("sweep", *base, "--alphas", "0,2", "--out", tmp_path / "s")
    assert result.exit_code == 2
    assert "alphas[1]: 2.0 is outside [0, 1]" in result.stderr
    assert not (tmp_path / "s").exists()


def test_alpha_auto_picks_the_smallest_alpha_meeting_the_target(base, tmp_path):
    result = run("unlearn", *base, "--alpha", "auto", "--max-forget-acc", "1.0", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["auto_alpha"]["chosen_alpha"] == 0.0  # forget top-1 <= 1.0 holds at alpha 0
    assert len(report["auto_alpha"]["curve"]) == 21
    assert report["projector"]["alpha"] == 0.0


def test_finetune_changes_only_the_tensors_it_trains(base, tiny_vit_file, tmp_path):
    out = tmp_path / "ft"
    spec = tmp_path / "ft.yaml"
    spec.write_text("method: finetune\nfinetune_steps: 3\nfinetune_batch_size: 8\nfinetune_lr: 0.01\n")
    result = run("unlearn", spec, *base, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    trained = set(report["finetune"]["trained_tensors"])
    assert "visual.proj" in trained and any(k.startswith("visual.transformer.resblocks.1.") for k in trained)
    assert not any(k.startswith("visual.transformer.resblocks.0.") or k.startswith("transformer.") for k in trained)
    src, dst = load_file(str(tiny_vit_file)), load_file(str(out / "model.safetensors"))
    changed = {k for k in src if not torch.equal(src[k], dst[k])}
    assert changed and changed <= trained
    assert report["finetune"]["steps"] <= 3 and report["finetune"]["images_seen"] > 0
