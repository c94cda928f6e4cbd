"""Start fast, fail fast: the command line and every check at the door run without torch."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "open_clip", "transformers", "torchvision", "timm")

PROBE = """
import json, sys
from ccup_cli.cli import app
code = None
try:
    app(sys.argv[1:], standalone_mode=True)
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def probe(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    return {**json.loads(lines[-1]), "stderr": done.stderr, "stdout": "\n".join(lines[:-1])}


def test_importing_the_cli_loads_no_heavy_module():
    done = subprocess.run([sys.executable, "-c", "import sys, ccup_cli, ccup_cli.cli; "
                           f"print([m for m in {HEAVY!r} if m in sys.modules])"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


HELP_TEXT = {  # what each answer without torch must say
    "--help": ["Usage:", "unlearn", "eval", "sweep", "export", "audit", "version"],
    "unlearn --help": ["Usage:", "unlearn", "--forget", "--alpha", "--out", "--overwrite", "--debug"],
    "version": [importlib.metadata.version("ccup")],
}


@pytest.mark.parametrize("args, needle", [
    (["--help"], None),
    (["unlearn", "--help"], None),
    (["version"], None),
    (["unlearn", "--forget", "sandal", "--alpha", "2"], "alpha: 2.0 is outside [0, 1]"),
    (["unlearn", "--forget", "sandl"], '"sandl" is not a class of fashion-mnist-mini'),
    (["unlearn", "--forget", "cat", "--eval", "cifar11"], 'unknown dataset "cifar11"'),
    (["unlearn", "--forget", "dgo", "--eval", "cifar10", "--data-root", "/nonexistent"],
     '"dgo" is not a class of cifar10; did you mean "dog"?'),
    (["eval", "--forget", "sandal", "--max-forget-acc", "3"], "max-forget-acc: 3.0 is outside [0, 1]"),
    (["eval", "--precision", "fp64"], 'precision: "fp64" is not one of fp32, fp16, bf16'),
    (["unlearn", "--forget", "sandal", "--workers", "-1"], "workers: -1 is negative"),
    (["eval", "--decode", "nvjpeg"], 'decode: "nvjpeg" is not one of pil, pil-draft, tensor, gpu'),
    (["eval", "--decode", "gpu", "--device", "cpu"], "decode: gpu decodes on a CUDA device"),
    (["export", "--to", "onnx", "--out", "/nonexistent/x"], 'to: "onnx" is not a target'),
    (["sweep", "--forget", "sandal", "--alphas", "0,2", "--out", "/nonexistent/s"], "alphas[1]: 2.0"),
])
def test_help_and_errors_at_the_door_never_import_torch(args, needle, tmp_path):
    result = probe(*args)
    assert result["heavy"] == [], result
    if needle is None:
        assert result["code"] in (None, 0), result
        for text in HELP_TEXT[" ".join(args)]:
            assert text in result["stdout"], (text, result)
        if args == ["version"]:
            assert result["stdout"].strip() == importlib.metadata.version("ccup")
    else:
        assert result["code"] == 2 and needle in result["stderr"], result


def test_a_missing_spec_file_and_an_unknown_key_fail_without_torch(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("alhpa: 0.3\nforget: [sandal]\n")
    for args, needle in (([str(tmp_path / "missing.yaml")], "does not exist"), ([str(spec)], 'did you mean "alpha"')):
        result = probe("unlearn", *args)
        assert result["code"] == 2 and needle in result["stderr"] and result["heavy"] == [], result


def test_the_catalog_lists_exactly_the_dataset_loaders():
    from ccup_cli.data.catalog import DATASET_NAMES
    from ccup_cli.data.datasets import DATASETS

    assert sorted(DATASETS) == sorted(DATASET_NAMES)


def test_eval_and_audit_answer_bad_flags_without_building_the_spec_model(tmp_path):
    """The spec's pydantic model is ccup unlearn's and sweep's; ccup eval and audit never need it."""
    code = PROBE.replace('"heavy": [m for m in', '"schema": "ccup_cli.spec.schema" in sys.modules, "heavy": [m for m in')
    for args, needle in ((["eval", "--max-forget-acc", "7"], "max-forget-acc: 7.0 is outside [0, 1]"),
                         (["audit", str(tmp_path / "missing"), "--probe-shots", "0"], "probe-shots: 0 must be")):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result == {"code": 2, "schema": False, "heavy": []}, (args, result, done.stderr)
        assert needle in done.stderr, done.stderr
