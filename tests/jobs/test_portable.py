"""Shipped outputs carry no absolute path of the machine that wrote them, and say what was resolved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ccup_cli.output.portable import package_root, portable_argv, portable_path
from ccup_cli.run.options import RunOptions
from ccup_cli.spec.schema import build_spec


def test_portable_path_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    assets = package_root() / "assets" / "ccup-tiny-fashion"
    assert portable_path(f"local-dir:{assets}") == "ccup-tiny-fashion"
    assert portable_path(assets / "open_clip_model.safetensors") == \
        "ccup_cli/assets/ccup-tiny-fashion/open_clip_model.safetensors"
    assert portable_path(tmp_path / "out" / "model.safetensors") == "out/model.safetensors"
    assert portable_path(tmp_path) == "."
    assert portable_path("/somewhere/else/weights.bin") == "weights.bin"
    assert portable_path(f"transformers:{tmp_path / 'hf'}") == "transformers:hf"
    for unchanged in ("openai", "out/x.pt", "hf-hub:org/repo", None):
        assert portable_path(unchanged) == unchanged
    assert portable_argv(["/venv/bin/ccup", "eval", "--pretrained", str(tmp_path / "out"), f"--out={tmp_path}/r"]) \
        == ["ccup", "eval", "--pretrained", "out", "--out=r"]


def _absolute_strings(value, found: list[str]) -> list[str]:
    if isinstance(value, str) and (value.startswith("/") or ":/" in value and not value.startswith("http")):
        found.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _absolute_strings(v, found)
    elif isinstance(value, list):
        for v in value:
            _absolute_strings(v, found)
    return found


@pytest.mark.embedded
def test_no_written_file_holds_an_absolute_path(tmp_path, monkeypatch):
    """Every job, run from a temporary working directory with relative paths: no written file (JSON, YAML,
    Markdown, safetensors header, JSONL) names the working directory, the package folder or any other
    absolute path."""
    pytest.importorskip("transformers")
    from ccup_cli.jobs.audit import AuditRequest, run_audit
    from ccup_cli.jobs.eval import EvalRequest, run_eval
    from ccup_cli.jobs.export import run_export
    from ccup_cli.jobs.sweep import run_sweep_job
    from ccup_cli.jobs.unlearn import run_unlearn

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def options(*argv: str, out: str | None = None) -> RunOptions:
        return RunOptions(device="cpu", workers=0, out=Path(out) if out else None,
                          argv=[str(package_root().parent / ".venv/bin/ccup"), *argv])

    spec = build_spec({}, {"forget": ["sandal"], "eval_limit": 4})
    report = run_unlearn(spec, options("unlearn", "--forget", "sandal", out="u"))
    assert report["outputs"]["folder"] == "u" and report["model"]["name"] == "ccup-tiny-fashion"
    run_audit(AuditRequest("u", eval_limit=4, probe_shots=[1], probe_draws=1, leace=False),
              options("audit", "u", out="a"))
    run_eval(EvalRequest(pretrained="u", eval_limit=4, forget=["sandal"]), options("eval"), Path("e.json"))
    run_sweep_job(spec, [0.0, 1.0], ["ccup"], options("sweep", out="s"))
    exported = run_export("u", None, "transformers", options("export", "u", out="x"))
    assert exported["export"]["out"] == "x"

    forbidden = {str(work), str(work.resolve()), str(package_root()), str(package_root().parent), str(tmp_path)}
    written = sorted(p for p in work.rglob("*") if p.is_file())
    assert {"u/model.safetensors", "u/report.json", "u/spec.yaml", "u/README.md", "a/audit.json", "a/audit.md",
            "e.json", "s/report.json", "s/sweep.jsonl", "x/model.safetensors", "x/README.md"} <= \
        {p.relative_to(work).as_posix() for p in written}
    for path in written:
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            size = int.from_bytes(data[:8], "little")
            data = data[8:8 + size]  # the header: tensor table and string metadata
        elif path.suffix == ".png" or path.name in ("vocab.json", "merges.txt", "tokenizer.json"):
            continue
        text = data.decode("utf-8")
        for prefix in forbidden:
            assert prefix not in text, (path, prefix)
        if path.suffix in (".json", ".jsonl") or path.name == "model.safetensors":
            for line in (text.splitlines() if path.suffix == ".jsonl" else [text]):
                assert _absolute_strings(json.loads(line), []) == [], path


@pytest.mark.embedded
def test_the_resolved_spec_names_the_model_and_its_weights(tmp_path):
    from safetensors import safe_open

    from ccup_cli.jobs.unlearn import run_unlearn

    out = tmp_path / "u"
    run_unlearn(build_spec({}, {"forget": ["sandal"], "eval_limit": 2}), RunOptions(device="cpu", workers=0, out=out))
    spec = yaml.safe_load((out / "spec.yaml").read_text())
    assert (spec["model"], spec["pretrained"]) == ("ccup-tiny-fashion", "embedded")
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert (meta["model"], meta["pretrained"], meta["forget"]) == ("ccup-tiny-fashion", "embedded", '["sandal"]')
    # the resolved spec runs again as it stands, on the same weights
    again = run_unlearn(build_spec(spec, {}), RunOptions(device="cpu", workers=0))
    first = json.loads((out / "report.json").read_text())
    assert again["inputs"]["checkpoint"]["sha256"] == first["inputs"]["checkpoint"]["sha256"]
    assert again["metrics"]["after"]["forget"]["top1"] == first["metrics"]["after"]["forget"]["top1"]


def test_an_open_clip_name_records_the_tag_it_resolved_to():
    from types import SimpleNamespace

    from ccup_cli.run.provenance import resolved_source

    open_clip_model = SimpleNamespace(backend="open_clip", pretrained="openai")
    assert resolved_source("ViT-B-32", None, open_clip_model) == ("ViT-B-32", "openai")
    assert resolved_source(None, None, open_clip_model) == ("ccup-tiny-fashion", "embedded")
    assert resolved_source("ccup-tiny-fashion-domains", None, open_clip_model) == ("ccup-tiny-fashion-domains",
                                                                                   "embedded")
    # a folder names its own weights: kept as given
    assert resolved_source(None, "out", open_clip_model) == (None, "out")
    assert resolved_source("transformers:hf", None, SimpleNamespace(backend="transformers", pretrained="x")) == \
        ("transformers:hf", None)


@pytest.mark.embedded
def test_an_exported_unlearned_folder_carries_the_unlearning_facts(tmp_path):
    pytest.importorskip("transformers")
    from safetensors import safe_open

    from ccup_cli.jobs.export import run_export
    from ccup_cli.jobs.unlearn import run_unlearn

    run_unlearn(build_spec({}, {"forget": ["sandal", "sneaker"], "alpha": 0.7}),
                RunOptions(device="cpu", out=tmp_path / "u"))
    run_export(str(tmp_path / "u"), None, "transformers", RunOptions(out=tmp_path / "x"))
    with safe_open(str(tmp_path / "x" / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    unlearned = json.loads((tmp_path / "u" / "report.json").read_text())
    assert meta["ccup_unlearning_method"] == "ccup" and meta["ccup_unlearning_alpha"] == "0.7"
    assert json.loads(meta["ccup_unlearning_forget"]) == ["sandal", "sneaker"]
    assert meta["ccup_unlearning_source_sha256"] == unlearned["inputs"]["checkpoint"]["sha256"]
    assert meta["ccup_source_sha256"] == unlearned["outputs"]["checkpoint"]["sha256"]
    readme = (tmp_path / "x" / "README.md").read_text()
    assert "forget sandal, sneaker" in readme and "α = 0.7" in readme and "does not remove" in readme
    # a model that was never unlearned says so
    run_export(None, None, "transformers", RunOptions(out=tmp_path / "plain"))
    assert "No unlearning" in (tmp_path / "plain" / "README.md").read_text()
