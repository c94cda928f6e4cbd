"""The spec: merging flags over the file, field-path errors, and the shipped examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ccup_cli.cli import app
from ccup_cli.data.catalog import check_classes_in
from ccup_cli.errors import SpecError
from ccup_cli.spec.schema import build_spec, read_spec_file

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_flags_override_the_file_and_csv_lists_are_split():
    spec = build_spec({"forget": ["cat"], "alpha": 0.3, "method": "nullspace"}, {"alpha": 0.8, "forget": "a, b"})
    assert spec.alpha == 0.8 and spec.method == "nullspace" and spec.forget == ["a", "b"]


def test_spec_hash_changes_with_content():
    a = build_spec({"forget": ["cat"]}, {})
    b = build_spec({"forget": ["cat"], "alpha": 0.5}, {})
    assert a.sha256() != b.sha256() and a.sha256() == build_spec({"forget": ["cat"]}, {}).sha256()


def test_field_paths_in_errors():
    with pytest.raises(SpecError) as err:
        build_spec({"forget": ["cat", "dog"], "retain": ["dog"], "method": "magic", "eval_limit": 0}, {})
    text = err.value.one_line()
    assert 'retain[0]: "dog" is also in forget' in text
    assert "method:" in text and "eval_limit:" in text


def test_dataset_class_check_suggests_close_names():
    spec = build_spec({"forget": ["dgo", "cat"]}, {})
    with pytest.raises(SpecError, match='forget\\[0\\]: "dgo" is not a class of cifar10; did you mean "dog"'):
        check_classes_in({"forget": spec.forget, "retain": spec.retain}, ["airplane", "cat", "dog"], "cifar10")


def test_spec_must_be_a_mapping(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="mapping"):
        read_spec_file(f)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_example_configs_validate(config):
    spec = build_spec(read_spec_file(config), {})
    assert spec.forget


@pytest.mark.parametrize("config", [c for c in CONFIGS if "vit-b-32" not in c.name], ids=lambda p: p.name)
def test_offline_example_configs_run_as_they_are(config, tmp_path):
    result = CliRunner().invoke(app, ["unlearn", str(config), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    wanted = read_spec_file(config)
    for key, value in wanted.items():  # the run did what the file says
        assert report["spec"][key] == value, key
    assert yaml.safe_load((tmp_path / "out" / "spec.yaml").read_text()) == report["spec"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "README.md", "model.safetensors", "open_clip_config.json", "per_class_top1.png", "report.json", "spec.yaml"]
    m = report["metrics"]
    if wanted["alpha"] == 1.0:  # full strength on the embedded model: the classes are gone
        assert m["after"]["forget"]["top1"] <= 0.05
    else:  # part of the way: forget top-1 falls, but less than at full strength
        assert m["before"]["forget"]["top1"] - 0.05 > m["after"]["forget"]["top1"] > 0.0
    assert m["delta"]["retain_only"]["top1"] >= -0.02
