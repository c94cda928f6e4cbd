"""The checkpoint files `--pretrained` accepts, as docs/models.md lists them, and the one it refuses."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ccup_cli.backends.checkpoint import read_state_dict
from ccup_cli.cli import app
from ccup_cli.errors import CheckpointError

from ..conftest import TINY_VIT


@pytest.fixture()
def state(tiny_vit_file):
    return load_file(str(tiny_vit_file))


def _same(got: dict, want: dict) -> bool:
    return set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_a_bin_state_dict_reads_as_it_stands(state, tmp_path):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(state, path)
    assert _same(read_state_dict(path), state)


def test_a_training_checkpoint_reads_its_state_dict_without_the_ddp_prefix(state, tmp_path):
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    assert _same(read_state_dict(path), state)


def test_a_torchscript_archive_is_refused_with_the_conversion(tmp_path, tiny_models, fashion_folder):
    path = tmp_path / "ViT-B-32.pt"
    with pytest.warns(Warning):  # torch.jit.script is deprecated; it still writes the archive OpenAI shipped
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    line = err.value.one_line()
    assert "TorchScript archive" in line and "open_clip.load_openai_model" in line and "corrupt" not in line
    result = CliRunner().invoke(app, ["eval", "--model", TINY_VIT, "--pretrained", str(path), "--eval",
                                      str(fashion_folder), "--templates", "photo"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "TorchScript archive" in result.stderr
