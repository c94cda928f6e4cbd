"""The transformers backend on a tiny random CLIPModel saved with save_pretrained. No downloads."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ccup_cli.backends.checkpoint import save_safetensors  # noqa: E402
from ccup_cli.backends.fold import fold, project  # noqa: E402
from ccup_cli.backends.transformers import (  # noqa: E402
    WEIGHTS_NAME,
    image_features,
    import_transformers,
    is_transformers_folder,
    load_transformers_model,
)
from ccup_cli.errors import CheckpointError, DependencyError  # noqa: E402
from ccup_cli.output.atomic import sha256_file  # noqa: E402

from ..conftest import HF_CONTEXT as CONTEXT  # noqa: E402

PROMPTS = ["a photo of a sandal.", "sneaker", "a blurry photo of an ankle boot, seen from the side.",
           "bag", "a photo of a t-shirt.", "trouser"]


@pytest.fixture(scope="session")
def hf_loaded(hf_clip_folder):
    return load_transformers_model(hf_clip_folder)


def random_pixels(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def random_map(d: int, seed: int = 1) -> torch.Tensor:
    return torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=torch.Generator().manual_seed(seed),
                                                                 dtype=torch.float64)


def write_patched(loaded, W: torch.Tensor, out: Path) -> str:
    """What the writer will do: source tensors with the fold site replaced, plus the config files."""
    out.mkdir(parents=True)
    tensors = dict(loaded.source_state_dict)
    tensors.update(fold(loaded.site, {loaded.site.weight_key: tensors[loaded.site.weight_key]}, W))
    loaded.write_config_files(out)
    return save_safetensors(tensors, out / WEIGHTS_NAME, {"format": "pt"})


def test_folder_detection(hf_clip_folder, tmp_path):
    assert is_transformers_folder(hf_clip_folder)
    assert is_transformers_folder(f"transformers:{hf_clip_folder}")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    assert not is_transformers_folder(tmp_path)
    assert not is_transformers_folder(tmp_path / "absent")


def test_load_describes_the_fold_site(hf_loaded, hf_clip_folder):
    site = hf_loaded.site
    assert (site.path, site.kind, site.weight_key, site.bias_key) == ("visual_projection", "linear",
                                                                      "visual_projection.weight", None)
    assert (site.in_features, site.out_features) == (32, 16)
    assert hf_loaded.cache_id == sha256_file(hf_clip_folder / WEIGHTS_NAME)
    assert hf_loaded.model_name == f"transformers:{hf_clip_folder.absolute()}"
    assert hf_loaded.backend == "transformers" and not hf_loaded.model.training
    assert hf_loaded.provenance() == {"backend": "transformers", "transformers": transformers.__version__,
                                      "torch": torch.__version__}


def test_fold_changes_only_the_projection_and_maps_features(hf_loaded, tmp_path):
    W = random_map(16)
    write_patched(hf_loaded, W, tmp_path / "out")
    patched = load_transformers_model(tmp_path / "out")
    before, after = hf_loaded.source_state_dict, patched.source_state_dict
    assert set(before) == set(after)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["visual_projection.weight"]
    pixels = random_pixels()
    with torch.no_grad():
        original = hf_loaded.encode_images(pixels, projected=True)
        folded = patched.encode_images(pixels, projected=True)
        pre = hf_loaded.encode_images(pixels)
    expected = (W @ original.double().T).T.float()
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)
    # the cached-feature route the evaluator takes gives the same features
    torch.testing.assert_close(project(patched.site, after, pre), folded, atol=1e-5, rtol=1e-5)


def test_written_folder_loads_without_ccup_and_is_byte_identical(hf_loaded, tmp_path):
    W = random_map(16, seed=3)
    sha_a = write_patched(hf_loaded, W, tmp_path / "a")
    sha_b = write_patched(hf_loaded, W, tmp_path / "b")
    assert sha_a == sha_b == sha256_file(tmp_path / "a" / WEIGHTS_NAME)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert {"config.json", "preprocessor_config.json", "tokenizer.json", WEIGHTS_NAME} <= set(names)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    model = transformers.CLIPModel.from_pretrained(str(tmp_path / "a"))
    processor = transformers.CLIPProcessor.from_pretrained(str(tmp_path / "a"))
    fold_site = fold(hf_loaded.site, hf_loaded.source_state_dict, W)["visual_projection.weight"]
    assert torch.equal(model.visual_projection.weight.detach(), fold_site)
    assert processor(text=["a photo of a bag."], return_tensors="pt")["input_ids"].shape[0] == 1


def test_encode_images_pre_and_post_projection(hf_loaded):
    pixels = random_pixels()
    with torch.no_grad():
        pre = hf_loaded.encode_images(pixels)
        projected = hf_loaded.encode_images(pixels, projected=True)
    assert pre.shape == (5, 32) and projected.shape == (5, 16)
    torch.testing.assert_close(projected, hf_loaded.model.visual_projection(pre), atol=1e-6, rtol=1e-6)


def test_image_features_handles_both_output_forms():
    feats = torch.randn(3, 16)
    assert image_features(feats) is feats  # transformers 4.x: a tensor
    output = transformers.modeling_outputs.BaseModelOutputWithPooling(last_hidden_state=torch.randn(3, 5, 32),
                                                                      pooler_output=feats)
    assert image_features(output) is feats  # transformers 5: an output object
    with pytest.raises(TypeError, match="pooler_output"):
        image_features(SimpleNamespace(last_hidden_state=feats))


def test_encode_prompts_matches_padded_get_text_features(hf_loaded):
    tokens = hf_loaded.tokenizer(PROMPTS, padding="max_length", max_length=CONTEXT, truncation=True,
                                 return_tensors="pt")
    with torch.no_grad():
        reference = image_features(hf_loaded.model.get_text_features(**tokens))
    done = []
    fast = hf_loaded.encode_prompts(PROMPTS, batch_size=2, progress=done.append)
    assert hf_loaded.supports_fast_text()
    assert sum(done) == len(PROMPTS) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fast[0], fast[1])  # different prompts, different features


def test_encode_prompts_plain_path_agrees(hf_loaded, monkeypatch):
    fast = hf_loaded.encode_prompts(PROMPTS)
    monkeypatch.setattr(type(hf_loaded), "supports_fast_text", lambda self: False)
    plain = hf_loaded.encode_prompts(PROMPTS, batch_size=4)
    torch.testing.assert_close(plain, fast, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        hf_loaded.encode_prompts([])


def test_preprocess_is_the_processors_and_has_a_stable_repr(hf_loaded, hf_clip_folder):
    from PIL import Image

    image = Image.fromarray((torch.rand(40, 48, 3) * 255).to(torch.uint8).numpy())
    pixels = hf_loaded.preprocess(image)
    reference = transformers.CLIPImageProcessor.from_pretrained(str(hf_clip_folder))(images=image,
                                                                                     return_tensors="pt")
    assert pixels.shape == (3, 32, 32)
    assert torch.equal(pixels, reference["pixel_values"][0])
    assert repr(hf_loaded.preprocess) == repr(load_transformers_model(hf_clip_folder).preprocess)
    assert "0x" not in repr(hf_loaded.preprocess)


def test_trainable_parameters_are_the_image_towers_tail(hf_loaded):
    names = set(hf_loaded.trainable_parameters())
    assert "visual_projection.weight" in names
    assert {"vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias"} <= names
    assert any(n.startswith("vision_model.encoder.layers.1.") for n in names)
    assert not any(n.startswith(("vision_model.encoder.layers.0.", "text_model", "text_projection")) for n in names)


def test_missing_extra_is_a_dependency_error(hf_clip_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(DependencyError) as err:
        import_transformers()
    assert "pip install 'ccup[transformers]'" in err.value.one_line()
    with pytest.raises(DependencyError):
        load_transformers_model(hf_clip_folder)


def test_siglip2_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    (tmp_path / WEIGHTS_NAME).write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        load_transformers_model(f"transformers:{tmp_path}")
    line = err.value.one_line()
    assert "siglip2" in line and "NaFlex" in line and "\n" not in line


def test_folder_without_weights_is_refused(hf_clip_folder, tmp_path):
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(hf_clip_folder / name, tmp_path / name)
    with pytest.raises(CheckpointError) as err:
        load_transformers_model(tmp_path)
    assert "has no model.safetensors; copy" in err.value.one_line()
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        load_transformers_model(tmp_path)
    assert "it holds pytorch_model.bin" in err.value.one_line()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_transformers_model(tmp_path / "absent")
