"""The door checks the model's files before torch loads, says what to pass instead, and reports every
problem at once; a transformers folder without tokenizer files is refused rather than run."""

from __future__ import annotations

import json
import shutil

import pytest

from ccup_cli.backends.sources import source_problems, transformers_folder_problems

from ..test_startup import probe


def _hf_like(folder, files=("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json")):
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text(json.dumps({"model_type": "clip"}) if name == "config.json" else "{}")
    return folder


def test_missing_files_and_wrong_kinds_of_path_are_named(tmp_path):
    hf = _hf_like(tmp_path / "hf")
    assert source_problems(None, str(tmp_path / "nope.safetensors")) == [
        f"pretrained: file {tmp_path / 'nope.safetensors'} does not exist; check the path given to --pretrained"]
    assert source_problems("ViT-B-32", "openai") == []  # a tag is not a path
    [line] = source_problems(f"transformers:{hf}/config.json", None)
    assert "is a file; pass the folder that holds it: transformers:" + str(hf) in line
    [line] = source_problems(None, str(hf / "model.safetensors"))
    assert f"is a file inside a transformers folder; pass the folder: --pretrained {hf}" in line
    [line] = source_problems("ViT-B-32", str(hf))
    assert line.startswith("model: ViT-B-32 would be ignored") and "drop --model" in line
    [line] = source_problems(str(hf / "config.json"), None)
    assert f"pass the folder: transformers:{hf}" in line
    [line] = source_problems(f"local-dir:{tmp_path / 'missing'}", None)
    assert "does not exist" in line
    assert source_problems(f"transformers:{hf}", None) == []
    (tmp_path / "empty").mkdir()
    [line] = source_problems(None, str(tmp_path / "empty"))
    assert "holds neither open_clip_config.json nor config.json" in line
    [line] = source_problems(str(tmp_path / "no-such-folder"), None)
    assert "is neither a model name nor an existing path" in line


def test_a_transformers_folder_without_tokenizer_files_is_named_file_by_file(tmp_path):
    bare = _hf_like(tmp_path / "bare", ("config.json", "model.safetensors"))
    [line] = transformers_folder_problems(bare)
    assert "lacks preprocessor_config.json, tokenizer.json (or vocab.json and merges.txt)" in line
    bpe = _hf_like(tmp_path / "bpe", ("config.json", "model.safetensors", "preprocessor_config.json", "vocab.json",
                                       "merges.txt"))
    assert transformers_folder_problems(bpe) == []
    siglip2 = tmp_path / "siglip2"
    siglip2.mkdir()
    (siglip2 / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    assert "model_type 'siglip2' is not supported" in transformers_folder_problems(siglip2)[0]
    siglip = _hf_like(tmp_path / "siglip", ("config.json", "model.safetensors", "preprocessor_config.json",
                                            "spiece.model"))
    (siglip / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    assert transformers_folder_problems(siglip) == []


def test_door_problems_with_files_are_all_reported_without_torch(tmp_path):
    hf = _hf_like(tmp_path / "hf", ("config.json", "model.safetensors"))
    cases = [
        (["eval", "--pretrained", str(tmp_path / "w.safetensors"), "--model", "ViT-B-32", "--eval", "cifar10",
          "--forget", "cat"], ["w.safetensors does not exist", "cifar10 needs --data-root"]),
        (["unlearn", "--pretrained", str(tmp_path / "w.pt"), "--model", "ViT-B-32", "--forget", "dgo", "--eval",
          "cifar10", "--data-root", str(tmp_path / "no-root")],
         ["w.pt does not exist", 'did you mean "dog"?', "data root"]),
        (["eval", "--model", f"transformers:{hf}"], ["lacks preprocessor_config.json, tokenizer.json",
                                                     "eval: no dataset given"]),
        (["unlearn", "--forget", "sandal", "--pretrained", str(hf / "model.safetensors")], ["pass the folder"]),
        (["unlearn", "--forget", "sandal", "--model", "ViT-B-32", "--pretrained", "embedded"], ['"embedded" names']),
        (["export", str(tmp_path / "no-such-folder"), "--out", str(tmp_path / "x")], ["neither a model name"]),
    ]
    for args, needles in cases:
        result = probe(*args)
        assert result["code"] == 2 and result["heavy"] == [], (args, result)
        assert all(n in result["stderr"] for n in needles), (args, result["stderr"])
        assert len(result["stderr"].strip().splitlines()) == len(needles), result["stderr"]


def test_a_tokenizerless_transformers_folder_exits_2_naming_the_files(hf_clip_folder, tmp_path):
    transformers = pytest.importorskip("transformers")
    from typer.testing import CliRunner

    from ccup_cli.backends.transformers import check_vocabulary, load_transformers_model
    from ccup_cli.cli import app
    from ccup_cli.errors import CheckpointError

    folder = tmp_path / "no-tokenizer"
    shutil.copytree(hf_clip_folder, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    result = CliRunner().invoke(app, ["eval", "--pretrained", str(folder), "--eval", "fashion-mnist-mini"])
    assert result.exit_code == 2 and "tokenizer.json (or vocab.json and merges.txt)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match="tokenizer.json"):  # the library refuses it too
        load_transformers_model(folder)
    # what transformers 5 builds from such a folder: a tokenizer of a few tokens, refused by size
    with pytest.raises(CheckpointError, match="2 tokens for a text embedding of 49408 rows"):
        check_vocabulary(folder, 2, 49408)
    check_vocabulary(folder, 49408, 49408)
    assert transformers.__version__
