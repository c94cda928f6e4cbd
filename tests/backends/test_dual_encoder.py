"""transformers ``VisionTextDualEncoderModel`` folders through the backend seam: tiny random-init towers.

Two vision tower kinds (CLIP's vision transformer and a plain ViT, whose pooler ends in a tanh
layer) beside a tiny BERT with a local WordPiece vocabulary. For each: unlearn through the job,
reload the folder with plain transformers, check that only the fold tensor differs and that the
patched model's raw logits are ``tᵀ W f`` of the original.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from ccup_cli.backends.transformers import load_transformers_model  # noqa: E402
from ccup_cli.jobs.eval import EvalRequest, run_eval  # noqa: E402
from ccup_cli.jobs.unlearn import run_unlearn  # noqa: E402
from ccup_cli.run.options import RunOptions  # noqa: E402
from ccup_cli.spec.schema import build_spec  # noqa: E402

from ..conftest import FASHION, assert_same_metrics  # noqa: E402

OPTIONS = RunOptions(device="cpu", use_cache=False)
WORDS = sorted({w for c in FASHION for w in c.replace("-", " - ").split()}
               | {"a", "photo", "of", "the", "an", "-", ".", ",", "itap", "good", "bad", "picture"})
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
PROMPTS = ["a photo of a sandal.", "sneaker", "a photo of the ankle boot.", "bag", "t - shirt"]


def _vision(kind: str):
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    if kind == "clip":
        return transformers.CLIPVisionConfig(**common)
    return transformers.ViTConfig(**common)


def make_dual_encoder(folder, kind: str, seed: int = 0):
    """A tiny random dual encoder folder: ``kind`` vision tower, a 2-layer BERT, WordPiece tokenizer."""
    folder.mkdir(parents=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    text = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, max_position_embeddings=64, initializer_range=0.5)
    config = transformers.VisionTextDualEncoderConfig.from_vision_text_configs(_vision(kind), text, projection_dim=16)
    torch.manual_seed(seed)
    model = transformers.VisionTextDualEncoderModel(config=config).eval()
    model.save_pretrained(str(folder))
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(str(folder))
    processor = (transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
                 if kind == "clip" else transformers.ViTImageProcessor(size={"height": 32, "width": 32}))
    processor.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module", params=["clip", "vit"])
def dual(request, tmp_path_factory):
    return request.param, make_dual_encoder(tmp_path_factory.mktemp("dual") / request.param, request.param)


def test_loads_with_both_fold_sites_and_unpadded_prompts_match_padded_ones(dual):
    kind, folder = dual
    loaded = load_transformers_model(folder)
    assert loaded.model_type == "vision-text-dual-encoder" and loaded.site.weight_key == "visual_projection.weight"
    assert (loaded.site.in_features, loaded.site.out_features, loaded.site.bias_key) == (32, 16, None)
    assert loaded.select_fold("text").weight_key == "text_projection.weight"
    feats = loaded.encode_prompts(PROMPTS, batch_size=2)
    enc = loaded.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    assert int(enc["attention_mask"].eq(0).sum()) > 0  # the reference really pads
    with torch.no_grad():
        reference = loaded.model.get_text_features(**enc).pooler_output
    assert torch.allclose(feats, reference, atol=1e-5)
    assert (feats[0] - feats[1]).abs().max() > 100 * (feats - reference).abs().max()  # prompts differ
    tail = loaded.trainable_parameters()
    assert "visual_projection.weight" in tail and not any("embeddings" in n for n in tail)
    assert any(".1." in n for n in tail) and not any(".0." in n for n in tail)  # only the last encoder layer


@pytest.mark.parametrize("fold", ["image", "text"])
def test_unlearn_folds_only_the_projection_and_reloads_with_plain_transformers(dual, fashion_folder, tmp_path, fold):
    kind, folder = dual
    out = tmp_path / "out"
    spec = build_spec({}, {"model": f"transformers:{folder}", "eval": str(fashion_folder), "templates": "photo",
                           "retain_templates": "photo", "forget": "sandal,sneaker", "fold": fold})
    report = run_unlearn(spec, OPTIONS.but(out=out))
    site = "visual_projection" if fold == "image" else "text_projection"
    assert report["projector"]["fold_site"] == site and report["model"]["backend"] == "transformers"
    src, dst = load_file(str(folder / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(src) == set(dst)
    assert {k for k in src if not torch.equal(src[k], dst[k])} == {f"{site}.weight"}
    original = transformers.VisionTextDualEncoderModel.from_pretrained(str(folder)).eval()
    patched = transformers.VisionTextDualEncoderModel.from_pretrained(str(out)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    transformers.AutoImageProcessor.from_pretrained(str(out))
    W = (dst[f"{site}.weight"].double() @ torch.linalg.pinv(src[f"{site}.weight"].double())) if fold == "image" \
        else (torch.linalg.pinv(src[f"{site}.weight"].double().T) @ dst[f"{site}.weight"].double().T)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    enc = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        f = original.get_image_features(pixel_values=pixels).pooler_output.double()
        t = original.get_text_features(**enc).pooler_output.double()
        f2 = patched.get_image_features(pixel_values=pixels).pooler_output.double()
        t2 = patched.get_text_features(**enc).pooler_output.double()
    # W is recovered from the tensors; it must be the method's map, not the identity
    assert not torch.allclose(W, torch.eye(16, dtype=torch.float64), atol=1e-2)
    logits = t2 @ f2.T
    expected = t @ W @ f.T
    assert torch.allclose(logits, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    if fold == "image":  # the eval job on the written folder gives the unlearn report's "after"
        again, _ = run_eval(EvalRequest(pretrained=str(out), eval=str(fashion_folder), templates="photo",
                                        forget=["sandal", "sneaker"]), OPTIONS)
        assert_same_metrics(again["metrics"]["before"], report["metrics"]["after"])
