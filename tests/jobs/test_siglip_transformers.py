"""transformers ``SiglipModel`` folders, and ``fold: text`` on ``CLIPModel``: tiny random models, no network."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from ccup_cli.errors import CheckpointError  # noqa: E402
from ccup_cli.jobs.eval import EvalRequest, run_eval  # noqa: E402
from ccup_cli.jobs.unlearn import run_unlearn  # noqa: E402
from ccup_cli.run.options import RunOptions  # noqa: E402
from ccup_cli.spec.schema import build_spec  # noqa: E402

OPTIONS = RunOptions(device="cpu", use_cache=False)
HEAD = {"text_model.head.weight", "text_model.head.bias"}


def _spec(folder, images, **fields):
    return build_spec({}, {"model": f"transformers:{folder}", "eval": str(images), "templates": "photo",
                           "retain_templates": "photo", "forget": "sandal,sneaker", **fields})


@pytest.fixture(scope="module")
def siglip_run(hf_siglip_folder, fashion_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("siglip-out") / "out"
    return run_unlearn(_spec(hf_siglip_folder, fashion_folder), OPTIONS.but(out=out)), out


def _text_ids(folder, prompts):
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    return tokenizer(prompts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")["input_ids"]


def _features(model, ids, pixels):
    from ccup_cli.backends.transformers import image_features

    with torch.no_grad():
        return (image_features(model.get_text_features(input_ids=ids)),
                image_features(model.get_image_features(pixel_values=pixels)))


def test_siglip_folds_into_the_text_head_only_and_loads_with_transformers_alone(siglip_run, hf_siglip_folder):
    report, out = siglip_run
    proj = report["projector"]
    assert (proj["fold_site"], proj["fold_side"], set(proj["fold_keys"])) == ("text_model.head", "text", HEAD)
    assert report["model"]["backend"] == "transformers" and report["text"]["fast_path"] is False
    src, dst = load_file(str(hf_siglip_folder / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(src) == set(dst) and {k for k in src if not torch.equal(src[k], dst[k])} == HEAD

    original = transformers.SiglipModel.from_pretrained(str(hf_siglip_folder)).eval()
    patched = transformers.SiglipModel.from_pretrained(str(out)).eval()
    assert isinstance(transformers.AutoModel.from_pretrained(str(out)), transformers.SiglipModel)
    transformers.AutoProcessor.from_pretrained(str(out))
    words = ["sandal", "sneaker", "bag", "coat", "dress", "shirt", "trouser", "pullover", "ankle boot", "t-shirt"]
    prompts = [f"a {a} photo of a {w}." for a in ("small", "large", "red", "blue", "dark", "bright", "good") for w in words]
    ids = _text_ids(out, prompts)
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t, f = _features(original, ids, pixels)
    t_p, f_p = _features(patched, ids, pixels)
    assert torch.equal(f_p, f)  # the image tower is untouched
    # every patched text feature is one linear map of the original: t_p = Wᵀ t, i.e. rows t_p = t W
    W = torch.linalg.lstsq(t.double(), t_p.double()).solution
    assert torch.allclose(t_p.double(), t.double() @ W, atol=1e-5)
    assert torch.allclose((t_p @ f_p.T).double(), t.double() @ W @ f.double().T, atol=1e-5)
    assert not torch.allclose(t_p, t, atol=1e-3)


def test_siglip_eval_of_the_output_folder_equals_metrics_after(siglip_run, fashion_folder):
    report, out = siglip_run
    again, failures = run_eval(EvalRequest(pretrained=str(out), eval=str(fashion_folder), templates="photo",
                                           forget=["sandal", "sneaker"]), OPTIONS)
    assert again["model"]["backend"] == "transformers" and not failures
    assert again["metrics"]["before"] == report["metrics"]["after"]
    assert report["metrics"]["before"] != report["metrics"]["after"]


def test_siglip_sweep_and_alpha_auto(hf_siglip_folder, fashion_folder, tmp_path):
    from ccup_cli.jobs.sweep import run_sweep_job

    sweep = run_sweep_job(_spec(hf_siglip_folder, fashion_folder), [0.0, 1.0], ["ccup", "nullspace"],
                          OPTIONS.but(out=tmp_path / "s"))
    assert sweep["sweep"]["fold_side"] == "text" and len(sweep["rows"]) == 4
    # every target off (forget top-1 and search at most 1): the smallest alpha, 0, meets them
    auto = run_unlearn(_spec(hf_siglip_folder, fashion_folder, alpha="auto", max_forget_acc=1.0,
                             max_forget_retrieval=1.0), OPTIONS)
    assert auto["auto_alpha"]["chosen_alpha"] == 0.0


def test_siglip_fold_image_is_refused_in_one_line_naming_fold_text(hf_siglip_folder, fashion_folder):
    with pytest.raises(CheckpointError) as err:
        run_unlearn(_spec(hf_siglip_folder, fashion_folder, fold="image"), OPTIONS)
    line = err.value.one_line()
    assert "\n" not in line and "fold: text" in line and "attention-pooling" in line


def test_siglip_prompts_run_padded_and_equal_get_text_features(hf_siglip_folder):
    from ccup_cli.backends.transformers import image_features, load_transformers_model

    loaded = load_transformers_model(hf_siglip_folder)
    assert loaded.site.side == "text" and not loaded.supports_fast_text()
    prompts = ["a bag.", "a photo of a very small red ankle boot on a wooden table."]
    with torch.no_grad():
        expected = image_features(loaded.model.get_text_features(input_ids=_text_ids(hf_siglip_folder, prompts)))
    assert torch.allclose(loaded.encode_prompts(prompts, batch_size=1), expected, atol=1e-6)


def test_clip_folder_folds_on_the_text_side_when_asked(hf_clip_folder, fashion_folder, tmp_path):
    out = tmp_path / "out"
    report = run_unlearn(_spec(hf_clip_folder, fashion_folder, fold="text"), OPTIONS.but(out=out))
    assert (report["projector"]["fold_site"], report["projector"]["fold_side"]) == ("text_projection", "text")
    src, dst = load_file(str(hf_clip_folder / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert {k for k in src if not torch.equal(src[k], dst[k])} == {"text_projection.weight"}
    # the one-pass figures are those of the patched folder run end to end (eval folds nothing: it encodes all)
    again, _ = run_eval(EvalRequest(pretrained=str(out), eval=str(fashion_folder), templates="photo",
                                    forget=["sandal", "sneaker"]), OPTIONS)
    after, full = report["metrics"]["after"], again["metrics"]["before"]
    for split in ("forget", "retain", "retain_only", "overall"):
        assert after[split]["per_class"] == full[split]["per_class"]
    assert after["retrieval"]["per_class"] == full["retrieval"]["per_class"]
    assert after != report["metrics"]["before"]
