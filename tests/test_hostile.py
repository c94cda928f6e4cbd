"""Hostile input: specs nested past the parser, alias bombs, configs that trip open_clip, and a
property test of the spec loader and the door (arbitrary YAML values in every field, arbitrary flags)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ccup_cli.cli import _RUN_FLAGS, _SPEC_FLAGS, app
from ccup_cli.errors import CcupError, CheckpointError, SpecError
from ccup_cli.run.door import admit
from ccup_cli.run.options import RunOptions
from ccup_cli.run.provenance import PhaseTimer
from ccup_cli.runtime.yaml_input import shape_problem
from ccup_cli.spec.schema import SPEC_FIELDS, build_spec, read_spec_file

from .conftest import FASHION, TINY_CONFIGS, TINY_VIT

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_a_spec_nested_5000_deep_is_not_a_valid_spec(tmp_path):
    spec = tmp_path / "deep.yaml"
    spec.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(SpecError, match="not a valid spec: nested too deeply"):
        read_spec_file(spec)
    spec.write_text("forget: " + "[" * 100 + "]" * 100)  # parses, but no spec is that deep
    with pytest.raises(SpecError, match="not a valid spec: nested too deeply"):
        read_spec_file(spec)


def test_an_alias_bomb_and_bytes_that_are_not_text_are_refused(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcde", "bcdef"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nforget: [" + ", ".join(["*f"] * 10) + "]\n")
    with pytest.raises(SpecError, match="not a valid spec: more than 100,000 values"):
        read_spec_file(bomb)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"forget: [bag]\n\xff\xfe")
    with pytest.raises(SpecError, match="not a valid spec: not UTF-8"):
        read_spec_file(binary)
    assert shape_problem({"forget": ["a", "b"], "domain_images": {"sketch": "x"}}) is None


def test_a_config_named_siglip_is_refused_at_the_tokenizer_step(tmp_path):
    """open_clip picks SigLIP's sentencepiece vocabulary for any name holding "siglip" and fetches it."""
    from ccup_cli.backends.open_clip import load_model

    config = tmp_path / "tiny-siglip.json"
    config.write_text(json.dumps(TINY_CONFIGS[TINY_VIT]))
    with pytest.raises(CheckpointError, match="tokenizer of tiny-siglip .* needs a download") as err:
        load_model(str(config), "none")
    assert 'without "siglip"' in err.value.one_line()


def test_whatever_open_clip_raises_for_a_tokenizer_is_one_checkpoint_error(monkeypatch):
    import open_clip

    from ccup_cli.backends.open_clip import _tokenizer

    def broken(name, **kwargs):
        raise ImportError('HTTPFileSystem requires "requests" and "aiohttp" to be installed')

    monkeypatch.setattr(open_clip, "get_tokenizer", broken)
    with pytest.raises(CheckpointError, match="could not make the tokenizer of ccup-test-vit: HTTPFileSystem"):
        _tokenizer(TINY_VIT, TINY_CONFIGS[TINY_VIT])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "ccup_cli.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_hostile_specs_exit_2_in_one_line_through_the_cli(tmp_path):
    """A real process each: the deep spec, and a config named siglip (no network here)."""
    (tmp_path / "deep.yaml").write_text("[" * 5000 + "]" * 5000)
    config = tmp_path / "my-siglip.json"
    config.write_text(json.dumps(TINY_CONFIGS[TINY_VIT]))
    for args, needle in ((["unlearn", "deep.yaml", "--out", "o"], "not a valid spec: nested too deeply"),
                         (["unlearn", "--model", str(config), "--pretrained", "none", "--forget", "bag",
                           "--out", "o"], "tokenizer of my-siglip")):
        result = _cli(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()


# --- the property: any spec, any flags -> a spec or one CcupError; the door writes nothing ------------

_PATHLESS = st.characters(blacklist_characters="/\\~", blacklist_categories=("Cs",))
_SCALARS = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(_PATHLESS, max_size=12))
_ANY = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(_PATHLESS, max_size=6), inner, max_size=3), max_leaves=12)
# values ccup knows, so that examples get past the first checks and reach the later ones
_KNOWN = st.sampled_from([
    *FASHION, "Sandal", "dgo", "auto", 0, 0.5, 1, 1.5, -1, "0.3", "ccup", "nullspace", "finetune", "domain-edit",
    "ccup-proto", "zero", "text-chance", "image", "text", "openai", "simple", "photo", "fashion-mnist-mini",
    "fashion-mnist-domains", "fashion-mnist", "cifar10", "ccup-tiny-fashion", "embedded", "none", "ViT-B-32",
    "openai", "sketch", "photo", "sketch=missing", "hf-hub:org/repo", "local-dir:missing", "x.json", "sandal,bag",
    [], ["sandal"], ["sandal", "sandal"], ["bag", "coat"], {"sketch": "missing"},
])
_VALUE = _KNOWN | _KNOWN | _ANY
_KEY = st.sampled_from(SPEC_FIELDS) | st.sampled_from(SPEC_FIELDS) | st.text(_PATHLESS, min_size=1, max_size=8)
# a valid spec with a few fields changed, or fields drawn from nothing: both reach the door's later checks
_SPEC = (st.dictionaries(_KEY, _VALUE, max_size=3).map(lambda changed: {"forget": ["bag"], **changed})
         | st.dictionaries(_KEY, _VALUE, max_size=7))
_RAW = st.integers(0, 5).flatmap(lambda k: st.just(None) if k else st.text(max_size=40))  # now and then not YAML
_FLAG_TEXT = _KNOWN.map(str) | st.text(_PATHLESS, max_size=12)
_FLAG_TYPES = {"max_forget_acc": st.floats(-2, 2), "max_forget_retrieval": st.floats(-2, 2),
               "max_forget_auc_gap": st.floats(-1, 1), "eval_limit": st.integers(-3, 5), "download": st.booleans()}


def _some_of(strategies: dict, most: int):
    """A dict of up to ``most`` of the keys of ``strategies``, each value drawn from its strategy."""
    return st.lists(st.sampled_from(sorted(strategies)), max_size=most, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({key: strategies[key] for key in keys}))


_FLAGS = _some_of({key: _FLAG_TYPES.get(key, _FLAG_TEXT) for key in _SPEC_FLAGS}, 3)
_RUN = _some_of({
    "device": st.sampled_from(["auto", "cpu", "cuda", "tpu", ""]), "batch_size": st.integers(-2, 512),
    "workers": st.none() | st.integers(-2, 4), "precision": st.sampled_from(["fp32", "fp16", "bf16", "fp8", ""]),
    "decode": st.sampled_from(["pil", "pil-draft", "tensor", "gpu", "jpeg"])}, 2)


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """An empty working folder three levels down: relative names ("", ".", "..") find nothing to scan."""
    work = tmp_path / "w" / "w" / "w"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    return work


@settings(max_examples=120, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=_SPEC, flags=_FLAGS, run=_RUN, raw=_RAW)
def test_any_spec_and_flags_give_a_spec_or_one_ccup_error_and_the_door_writes_nothing(workdir, spec, flags, run,
                                                                                       raw):
    spec_file = workdir / "spec.yaml"
    try:
        spec_file.write_text(raw if raw is not None else yaml.safe_dump(spec), encoding="utf-8")
    except UnicodeEncodeError:  # lone surrogates: no such file can be written
        return
    out = workdir / "out"
    stage = "read"
    try:
        built = build_spec(read_spec_file(spec_file), flags)
        stage = "built"
        options = RunOptions(out=out, **run).check()
        admit(built, options, PhaseTimer(), need_eval=built.alpha == "auto")
        stage = "admitted"
    except CcupError as err:
        line = err.one_line()
        assert line and "Traceback" not in line
    event(stage)
    assert sorted(p.name for p in workdir.iterdir()) == ["spec.yaml"]  # no --out, no partial folder


class _ModelWouldLoad(Exception):
    """Raised where a job would load its model: the property stops there, at no cost."""


_CLI_FLAG = st.sampled_from(sorted({*_SPEC_FLAGS, *_RUN_FLAGS} - {"debug", "verbose", "json_out", "quiet"}))


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=_SPEC, command=st.sampled_from(["unlearn", "sweep", "eval"]),
       flags=st.lists(st.tuples(_CLI_FLAG, _FLAG_TEXT), max_size=5),
       extra=st.lists(st.text(_PATHLESS, max_size=8), max_size=2))
def test_the_cli_exits_0_1_or_2_without_a_traceback_and_leaves_no_half_written_out(workdir, monkeypatch, spec,
                                                                                   command, flags, extra):
    import ccup_cli.run.session as session

    def no_model(*args, **kwargs):
        raise _ModelWouldLoad

    monkeypatch.setattr(session, "load_backend", no_model)
    (workdir / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    argv = [command] + (["spec.yaml"] if command != "eval" else [])
    for key, value in flags:
        option = {"json_out": "--json", "no_cache": "--no-cache", "download": "--download"}.get(
            key, "--" + key.replace("_", "-"))
        argv += [option] if key in ("no_cache", "overwrite", "download") else [option, value]
    argv += [*extra, "--out", "out"]
    result = runner.invoke(app, argv)
    assert result.exit_code in (0, 1, 2), (argv, result.output)
    assert "Traceback" not in result.output, (argv, result.output)
    event(f"exit {result.exit_code}" + (" (door passed)" if "_ModelWouldLoad" in result.output else ""))
    if result.exit_code == 1:  # only where the door let it through, never a crash of ccup's own
        assert "_ModelWouldLoad" in result.output or "threshold failed" in result.output, (argv, result.output)
    assert sorted(p.name for p in workdir.iterdir()) == ["spec.yaml"], argv
