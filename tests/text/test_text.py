"""Fast exact text encoding, templates and the text cache."""

from __future__ import annotations

import pytest
import torch

from ccup_cli.errors import SpecError
from ccup_cli.text.encode import cached_encode_prompts, encode_prompts, supports_fast_text, text_cache_key
from ccup_cli.text.templates import build_prompts, load_templates

from ..conftest import TINY_VIT

PROMPTS = ["a photo of a cat.", "dog", "a very long and winding description of a small red sports car at night.",
           "x", "a bad photo of the hard to see t-shirt."]


@pytest.fixture(scope="module")
def tiny(tiny_models):
    import open_clip

    torch.manual_seed(1)
    model = open_clip.create_model(TINY_VIT, pretrained=None).eval()
    return model, open_clip.get_tokenizer(TINY_VIT)


def test_fast_path_equals_open_clip_encode_text(tiny):
    model, tokenizer = tiny
    assert supports_fast_text(model)
    with torch.no_grad():
        reference = model.encode_text(tokenizer(PROMPTS))
    fast = encode_prompts(model, tokenizer, PROMPTS, batch_size=2)
    assert fast.shape == reference.shape
    assert torch.allclose(fast, reference, atol=1e-4)


def test_fast_path_keeps_the_given_order(tiny):
    model, tokenizer = tiny
    single = torch.cat([encode_prompts(model, tokenizer, [p]) for p in PROMPTS])
    assert torch.allclose(encode_prompts(model, tokenizer, PROMPTS), single, atol=1e-5)


def test_non_causal_tower_falls_back_to_open_clip(tiny):
    model, tokenizer = tiny
    causal_mask = model.attn_mask
    model.attn_mask = None  # a bidirectional tower: cutting positions would not be exact
    try:
        assert not supports_fast_text(model)
        with torch.no_grad():
            reference = model.encode_text(tokenizer(PROMPTS))
        assert torch.allclose(encode_prompts(model, tokenizer, PROMPTS), reference, atol=1e-5)
    finally:
        model.attn_mask = causal_mask


def test_text_cache_second_run_is_a_hit(tiny):
    model, tokenizer = tiny
    key = text_cache_key("sha-test", TINY_VIT, PROMPTS)
    def encode(prompts, batch_size, progress):
        return encode_prompts(model, tokenizer, prompts, batch_size, progress)

    first, hit1 = cached_encode_prompts(encode, PROMPTS, key)
    second, hit2 = cached_encode_prompts(encode, PROMPTS, key)
    assert (hit1, hit2) == (False, True)
    assert torch.equal(first, second)
    assert text_cache_key("sha-test", TINY_VIT, PROMPTS[:-1]) != key


def test_template_sets_and_files(tmp_path):
    assert len(load_templates("openai")) == 80
    assert load_templates("photo") == ["a photo of a {}."]
    assert all("{}" in t for t in load_templates("simple"))
    f = tmp_path / "t.txt"
    f.write_text("# comment\na sketch of a {}.\n\n{} in the wild\n")
    assert load_templates(str(f)) == ["a sketch of a {}.", "{} in the wild"]
    assert build_prompts(["cat", "dog"], ["a {}", "{}!"]) == ["a cat", "cat!", "a dog", "dog!"]


def test_template_file_without_placeholder_is_rejected(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a photo\n")
    with pytest.raises(SpecError, match="placeholder"):
        load_templates(str(f))
    with pytest.raises(SpecError, match="neither a template set"):
        load_templates("no-such-set")
