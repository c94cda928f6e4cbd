"""``ccup unlearn`` end to end, and every bad input: exit 2, one line, nothing left behind."""

from __future__ import annotations

import errno
import json
import pickle

import pytest
from typer.testing import CliRunner

from ccup_cli.cli import app

from .conftest import TINY_VIT

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_bad_input(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture()
def base(tiny_vit_file, fashion_folder):
    """Flags of a valid run on the tiny ViT and a PNG ImageFolder of the ten Fashion-MNIST classes."""
    return ["unlearn", "--model", TINY_VIT, "--pretrained", tiny_vit_file, "--eval", fashion_folder,
            "--templates", "photo", "--retain-templates", "photo"]


def test_unlearn_end_to_end_json(base, tmp_path):
    out = tmp_path / "out"
    result = run(*base, "--forget", "sandal,sneaker", "--alpha", "0.9", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["schema_version"] == 1
    assert report["spec"]["alpha"] == 0.9
    assert report["spec"]["forget"] == ["sandal", "sneaker"]
    assert len(report["spec"]["retain"]) == 8  # the dataset's other classes
    assert set(report["metrics"]) == {"before", "after", "delta"}
    assert report["metrics"]["before"]["forget"]["n"] == 6
    assert leftovers(out) == ["README.md", "model.safetensors", "open_clip_config.json", "per_class_top1.png",
                              "report.json", "spec.yaml"]
    assert json.loads((out / "report.json").read_text())["outputs"]["checkpoint"]["sha256"] == \
        report["outputs"]["checkpoint"]["sha256"]


def test_unlearn_table_output_and_spec_file_with_flag_override(base, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("forget: [sandal]\nalpha: 0.2\nmethod: nullspace\n")
    result = run(*base[:1], spec, *base[1:], "--alpha", "1.0")
    assert result.exit_code == 0, result.output
    assert "forget top-1" in result.stdout
    assert "nullspace / 1.0" in result.stdout
    assert "nothing was written" in result.stdout


def test_overwrite_replaces_an_existing_output(base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = run(*base, "--forget", "bag", "--out", out, "--overwrite", "-q")
    assert result.exit_code == 0, result.output
    assert leftovers(out) == ["README.md", "model.safetensors", "open_clip_config.json", "per_class_top1.png",
                              "report.json", "spec.yaml"]
    assert leftovers(tmp_path) == ["out"]  # no temporary folder left beside it
    report = json.loads((out / "report.json").read_text())
    assert report["spec"]["forget"] == ["bag"] and (out / "model.safetensors").stat().st_size > 0


# --- bad input: one test each ----------------------------------------------------------------


@pytest.mark.parametrize("alpha", ["1.5", "-0.1"])
def test_alpha_outside_range(base, tmp_path, alpha):
    assert_bad_input(run(*base, "--forget", "bag", "--alpha", alpha, "--out", tmp_path / "o"), "alpha", "[0, 1]")
    assert leftovers(tmp_path) == []


def test_empty_forget_list(base, tmp_path):
    assert_bad_input(run(*base, "--forget", ",", "--out", tmp_path / "o"), "forget", "empty")
    assert leftovers(tmp_path) == []


def test_class_in_forget_and_retain(base, tmp_path):
    assert_bad_input(run(*base, "--forget", "bag", "--retain", "coat,bag", "--out", tmp_path / "o"),
                     "retain[1]", "also in forget")
    assert leftovers(tmp_path) == []


def test_duplicate_classes(base, tmp_path):
    assert_bad_input(run(*base, "--forget", "bag,coat,bag", "--out", tmp_path / "o"), "forget[2]", "twice")
    assert leftovers(tmp_path) == []


def test_forget_class_not_in_dataset_suggests_close_match(base, tmp_path):
    assert_bad_input(run(*base, "--forget", "sandle", "--out", tmp_path / "o"),
                     'forget[0]: "sandle" is not a class of', 'did you mean "sandal"')
    assert leftovers(tmp_path) == []


def test_unknown_model_name_suggests_close_ones(tmp_path):
    assert_bad_input(run("unlearn", "--model", "ViT-B-23", "--forget", "cat", "--out", tmp_path / "o"),
                     'unknown model "ViT-B-23"', "ViT-B-32")
    assert leftovers(tmp_path) == []


def test_missing_pretrained_file(tiny_models, tmp_path):
    assert_bad_input(run("unlearn", "--model", TINY_VIT, "--pretrained", tmp_path / "nope.safetensors",
                         "--forget", "cat", "--out", tmp_path / "o"), "does not exist")
    assert leftovers(tmp_path) == []


def test_corrupt_or_truncated_checkpoint(tiny_vit_file, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(tiny_vit_file.read_bytes()[:5000])
    assert_bad_input(run("unlearn", "--model", TINY_VIT, "--pretrained", bad, "--forget", "cat",
                         "--out", tmp_path / "o"), "corrupt or truncated")
    assert leftovers(tmp_path) == ["bad.safetensors"]


def test_checkpoint_of_another_architecture_names_the_tensor(tiny_rn_file, tmp_path):
    result = run("unlearn", "--model", TINY_VIT, "--pretrained", tiny_rn_file, "--forget", "cat",
                 "--out", tmp_path / "o")
    assert_bad_input(result, "does not fit ccup-test-vit", "tensor ")
    assert leftovers(tmp_path) == []


def test_yaml_syntax_error_names_its_line(base, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("forget: [sandal\nalpha: 1\n")
    assert_bad_input(run(*base[:1], spec, *base[1:], "--out", tmp_path / "o"), "line ")
    assert leftovers(tmp_path) == ["spec.yaml"]


def test_unknown_spec_key_is_an_error_with_suggestion(base, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("forget: [sandal]\nalhpa: 0.5\n")
    assert_bad_input(run(*base[:1], spec, *base[1:], "--out", tmp_path / "o"),
                     'alhpa: unknown key; did you mean "alpha"')
    assert leftovers(tmp_path) == ["spec.yaml"]


def test_all_spec_problems_are_reported_at_once(base, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("forget: [sandal, sandal]\nalpha: 3\nalhpa: 0.5\n")
    result = run(*base[:1], spec, *base[1:], "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert leftovers(tmp_path) == ["spec.yaml"]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert any(line.startswith("error: alhpa") for line in lines)
    assert any(line.startswith("error: alpha") for line in lines)
    assert any(line.startswith("error: forget[1]") for line in lines)


def test_existing_out_without_overwrite(base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_bad_input(run(*base, "--forget", "bag", "--out", out), "already exists", "--overwrite")
    assert leftovers(out) == ["keep.txt"]


def test_out_pointing_at_the_input_checkpoint(base, tiny_vit_file, tmp_path):
    args = list(base)
    args[args.index("--pretrained") + 1] = tiny_vit_file
    before = {p.name: p.read_bytes() for p in tiny_vit_file.parent.iterdir()}
    assert_bad_input(run(*args, "--forget", "bag", "--out", tiny_vit_file.parent, "--overwrite"),
                     "would overwrite the input")
    assert {p.name: p.read_bytes() for p in tiny_vit_file.parent.iterdir()} == before


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EACCES, "no permission")])
def test_no_space_or_no_permission_leaves_nothing(base, tmp_path, monkeypatch, code, words):
    import ccup_cli.backends.checkpoint as checkpoint

    def failing_save(tensors, path, metadata):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(code, "simulated")

    monkeypatch.setattr(checkpoint, "save_safetensors", failing_save)
    assert_bad_input(run(*base, "--forget", "bag", "--out", tmp_path / "o"), words)
    assert leftovers(tmp_path) == []


def test_ctrl_c_during_the_write_leaves_no_partial_file(base, tmp_path, monkeypatch):
    import ccup_cli.backends.checkpoint as checkpoint

    def interrupted_save(tensors, path, metadata):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_safetensors", interrupted_save)
    result = run(*base, "--forget", "bag", "--out", tmp_path / "o")
    assert result.exit_code == 130
    assert leftovers(tmp_path) == []


class _RunsCode:
    def __reduce__(self):
        return (open, ("/tmp/ccup-pwned", "w"))


def test_pickle_that_runs_code_is_refused(tiny_models, tmp_path):
    import torch

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"visual.proj": _RunsCode()}, f)
    torch.save({"x": torch.ones(1)}, tmp_path / "fine.pt")  # torch's format itself is accepted
    from ccup_cli.backends.checkpoint import read_state_dict

    assert torch.equal(read_state_dict(tmp_path / "fine.pt")["x"], torch.ones(1))
    assert_bad_input(run("unlearn", "--model", TINY_VIT, "--pretrained", evil, "--forget", "cat",
                         "--out", tmp_path / "o"), "refused")
    assert leftovers(tmp_path) == ["evil.pt", "fine.pt"]
    import os

    assert not os.path.exists("/tmp/ccup-pwned")


def test_pt_checkpoint_loads_with_weights_only(tiny_vit_file, tmp_path, fashion_folder):
    import torch
    from safetensors.torch import load_file

    pt = tmp_path / "model.pt"
    torch.save(load_file(str(tiny_vit_file)), pt)
    result = run("unlearn", "--model", TINY_VIT, "--pretrained", pt, "--forget", "bag", "--eval", fashion_folder,
                 "--templates", "photo", "--retain-templates", "photo", "--out", tmp_path / "o", "-q")
    assert result.exit_code == 0, result.output


@pytest.fixture()
def offline(monkeypatch):
    """No network answers: the probe is mocked, so the test reads the same on a machine with one."""
    import ccup_cli.backends.open_clip as models

    monkeypatch.setattr(models, "_network_reachable", lambda *a, **k: False)


@pytest.fixture()
def online(monkeypatch):
    """A network answers, but every download fails: the fetch is tried, and its error is one line."""
    import open_clip
    import open_clip.factory
    import open_clip.pretrained

    import ccup_cli.backends.open_clip as models

    tried = []

    def failing(*args, **kwargs):
        tried.append(args)
        raise ConnectionError("simulated download failure\nsecond line")

    monkeypatch.setattr(models, "_network_reachable", lambda *a, **k: True)
    monkeypatch.setattr(open_clip, "download_pretrained", failing)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", failing)
    monkeypatch.setattr(open_clip.factory, "_get_hf_config", failing)
    return tried


def test_tag_that_needs_the_network_fails_fast_with_a_fix(offline, tmp_path):
    result = run("unlearn", "--model", "RN50", "--pretrained", "openai", "--forget", "cat", "--out", tmp_path / "o")
    assert_bad_input(result, "RN50 pretrained=openai needs a download and no network answers", "--pretrained PATH")
    assert leftovers(tmp_path) == []


def test_builtin_name_without_pretrained_takes_its_canonical_tag(offline, tmp_path):
    result = run("unlearn", "--model", "RN50", "--forget", "cat", "--out", tmp_path / "o")
    assert_bad_input(result, "RN50 pretrained=openai needs a download")
    assert leftovers(tmp_path) == []


def test_hf_hub_model_offline_fails_fast_with_a_fix(offline, tmp_path):
    result = run("unlearn", "--model", "hf-hub:someone/some-clip", "--forget", "cat", "--out", tmp_path / "o")
    assert_bad_input(result, "hf-hub:someone/some-clip needs a download", "--pretrained PATH")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("model, what", [("RN50", "RN50 pretrained=openai"),
                                          ("hf-hub:someone/some-clip", "hf-hub:someone/some-clip")])
def test_with_a_network_the_download_is_tried_and_its_failure_is_one_line(online, tmp_path, model, what):
    result = run("unlearn", "--model", model, "--forget", "cat", "--out", tmp_path / "o")
    assert_bad_input(result, f"could not download {what}: simulated download failure", "--pretrained PATH")
    assert len(online) == 1 and leftovers(tmp_path) == []


def test_no_test_reaches_beyond_loopback():
    """The conftest guard: a remote address or name is refused; loopback still connects."""
    import socket

    from ccup_cli.backends.open_clip import _network_reachable

    from .conftest import NetworkRefused

    with pytest.raises(NetworkRefused):
        socket.socket().connect(("93.184.216.34", 80))
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("huggingface.co", 443)
    assert _network_reachable() is False
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass


def test_never_silently_random_but_none_asks_for_it(tiny_models, fashion_folder, tmp_path):
    assert_bad_input(run("unlearn", "--model", TINY_VIT, "--forget", "cat", "--out", tmp_path / "o"),
                     "has no pretrained tag", "--pretrained none")
    assert leftovers(tmp_path) == []
    result = run("unlearn", "--model", TINY_VIT, "--pretrained", "none", "--forget", "bag", "--eval", fashion_folder,
                 "--templates", "photo", "--retain-templates", "photo", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"]["pretrained"] is None and report["inputs"]["checkpoint"]["sha256"] is None


def test_custom_config_json_as_model(tmp_path, fashion_folder):
    from .conftest import TINY_CONFIGS

    cfg = tmp_path / "my-clip.json"
    cfg.write_text(json.dumps(TINY_CONFIGS[TINY_VIT]))
    result = run("unlearn", "--model", cfg, "--pretrained", "none", "--forget", "bag", "--eval", fashion_folder,
                 "--templates", "photo", "--retain-templates", "photo", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["open_clip_name"] == "my-clip"


def test_random_init_leaves_the_callers_rng_alone(tiny_models):
    from ccup_cli.backends.open_clip import load_model

    torch = pytest.importorskip("torch")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model(TINY_VIT, "none")
    assert torch.equal(torch.rand(3), expected)


def test_unexpected_error_exits_1_with_debug_hint(base, tmp_path, monkeypatch):
    import ccup_cli.jobs.unlearn as pipeline

    def boom(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(pipeline, "run_unlearn", boom)
    result = run(*base, "--forget", "bag")
    assert result.exit_code == 1
    assert "unexpected ZeroDivisionError: boom" in result.stderr and "--debug" in result.stderr
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(base, tmp_path, monkeypatch):
    """--debug lets the exception through: its traceback reaches the user (here: the runner)."""
    import traceback

    import ccup_cli.jobs.unlearn as pipeline

    def boom(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(pipeline, "run_unlearn", boom)
    result = run(*base, "--forget", "bag", "--debug")
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)
    frames = traceback.extract_tb(result.exception.__traceback__)
    assert frames[-1].name == "boom"
    assert "unexpected ZeroDivisionError" not in result.stderr
    bad = run(*base, "--forget", "bag", "--alpha", "2", "--debug")  # bad input raises too, with its class
    from ccup_cli.errors import CcupError

    assert isinstance(bad.exception, CcupError)
