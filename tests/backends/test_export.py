"""open_clip -> transformers export: the folder loads alone and computes the same features."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from ccup_cli.backends.export import export_to_transformers, image_processor_kwargs  # noqa: E402
from ccup_cli.backends.fold import fold  # noqa: E402
from ccup_cli.backends.open_clip import load_model  # noqa: E402
from ccup_cli.backends.transformers import WEIGHTS_NAME, load_transformers_model  # noqa: E402
from ccup_cli.errors import CheckpointError, OutputError  # noqa: E402
from ccup_cli.text.encode import class_embeddings, encode_prompts  # noqa: E402
from ccup_cli.text.templates import build_prompts, load_templates  # noqa: E402

from ..conftest import TINY_CONFIGS, TINY_RN, TINY_VIT, save_random  # noqa: E402

PROMPTS = ["a photo of a cat.", "dog", "a rendition of a golden retriever, seen from far away.",
           "sneaker & sandal", "a photo of the number 7."]
TINY_QUICK = "ccup-test-vit-quickgelu"


def feature_gaps(loaded, hf, pixels: torch.Tensor) -> tuple[float, float, float, float]:
    """(max |diff|, min cosine) of text features, then of image features, same pixels both sides."""
    with torch.no_grad():
        text_oc = loaded.model.encode_text(loaded.tokenizer(PROMPTS))
        text_hf = hf.encode_prompts(PROMPTS)
        image_oc = loaded.model.encode_image(pixels)
        image_hf = hf.encode_images(pixels, projected=True)
    return (float((text_oc - text_hf).abs().max()), float(cosine(text_oc, text_hf).min()),
            float((image_oc - image_hf).abs().max()), float(cosine(image_oc, image_hf).min()))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row cosines in float64: a float32 cosine of equal vectors already errs by a few 1e-7."""
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


# The README's promise for the embedded model (scripts/bench_backends.py), held here by every export
MAX_FEATURE_DIFF = 1.1e-5
MIN_FEATURE_COSINE = 0.9999998


def assert_parity(loaded, hf, pixels):
    text_diff, text_cos, image_diff, image_cos = feature_gaps(loaded, hf, pixels)
    assert text_diff <= MAX_FEATURE_DIFF and text_cos >= MIN_FEATURE_COSINE, (text_diff, text_cos)
    assert image_diff <= MAX_FEATURE_DIFF and image_cos >= MIN_FEATURE_COSINE, (image_diff, image_cos)


@pytest.fixture(scope="module")
def vit_s32_export(tmp_path_factory):
    loaded = load_model("ViT-S-32", "none")
    out = tmp_path_factory.mktemp("export") / "vit-s-32"
    result = export_to_transformers(loaded, out, overwrite=False)
    return loaded, out, result


def test_random_vit_s32_exports_with_feature_parity(vit_s32_export):
    loaded, out, result = vit_s32_export
    hf = load_transformers_model(out)
    assert_parity(loaded, hf, torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    assert result["config"]["vision_config"]["hidden_act"] == "gelu"
    assert result["files"][WEIGHTS_NAME] == hf.checkpoint_sha256
    tok_oc = loaded.tokenizer(PROMPTS)
    tok_hf = hf.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    eot = tok_oc.argmax(dim=-1)
    for i in range(len(PROMPTS)):  # open_clip pads with 0, CLIPTokenizer with EOS: compare up to EOS
        assert torch.equal(tok_oc[i, :eot[i] + 1], tok_hf["input_ids"][i, :eot[i] + 1])


def test_exported_folder_loads_with_transformers_alone(vit_s32_export):
    _, out, result = vit_s32_export
    model = transformers.CLIPModel.from_pretrained(str(out))
    processor = transformers.CLIPProcessor.from_pretrained(str(out))
    assert model.config.projection_dim == 384 and processor.tokenizer.model_max_length == 77
    assert {"config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
            "merges.txt", "README.md", WEIGHTS_NAME} == set(result["files"])
    assert json.loads((out / "config.json").read_text())["architectures"] == ["CLIPModel"]


def test_export_is_atomic_and_byte_identical(tiny_vit_file, tmp_path):
    loaded = load_model(TINY_VIT, str(tiny_vit_file))
    first = export_to_transformers(loaded, tmp_path / "a", overwrite=False)
    second = export_to_transformers(loaded, tmp_path / "b", overwrite=False)
    assert first["files"] == second["files"]
    for name in first["files"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    with pytest.raises(OutputError):
        export_to_transformers(loaded, tmp_path / "a", overwrite=False)
    export_to_transformers(loaded, tmp_path / "a", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no partial folder left behind


def test_an_export_that_fails_midway_leaves_nothing(tiny_vit_file, tmp_path, monkeypatch):
    """The weights fail to write after the configs and tokenizer are in the temporary folder."""
    import errno

    import ccup_cli.backends.export as export

    def failing_save(tensors, path, metadata):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "simulated")

    loaded = load_model(TINY_VIT, str(tiny_vit_file))
    previous = tmp_path / "out"
    previous.mkdir()
    (previous / "config.json").write_text("{}")
    monkeypatch.setattr(export, "save_safetensors", failing_save)
    with pytest.raises(OutputError, match="no space left"):
        export_to_transformers(loaded, previous, overwrite=True)
    assert [p.name for p in previous.iterdir()] == ["config.json"] and (previous / "config.json").read_text() == "{}"
    with pytest.raises(OutputError, match="no space left"):
        export_to_transformers(loaded, tmp_path / "fresh", overwrite=False)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_ccup_export_through_the_cli(tiny_vit_file, tmp_path):
    from typer.testing import CliRunner

    from ccup_cli.cli import app
    from ccup_cli.output.portable import portable_path

    out = tmp_path / "hf"
    runner = CliRunner()
    result = runner.invoke(app, ["export", TINY_VIT, "--pretrained", str(tiny_vit_file), "--to", "transformers",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = ["README.md", "config.json", "merges.txt", "model.safetensors", "preprocessor_config.json",
             "tokenizer.json", "tokenizer_config.json", "vocab.json"]
    # paths outside the working directory are recorded by name (output.portable)
    assert f"written: {portable_path(out)}" in result.stdout and all(f in result.stdout for f in files)
    assert sorted(p.name for p in out.iterdir()) == files
    assert_parity(load_model(TINY_VIT, str(tiny_vit_file)), load_transformers_model(out),
                  torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)))
    again = runner.invoke(app, ["export", TINY_VIT, "--pretrained", str(tiny_vit_file), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_quick_gelu_source_exports_quick_gelu(tiny_models, tmp_path):
    import open_clip

    (tmp_path / f"{TINY_QUICK}.json").write_text(json.dumps({**TINY_CONFIGS[TINY_VIT], "quick_gelu": True}))
    open_clip.add_model_config(tmp_path / f"{TINY_QUICK}.json")
    loaded = load_model(TINY_QUICK, str(save_random(TINY_QUICK, tmp_path / "quick.safetensors", seed=1)))
    result = export_to_transformers(loaded, tmp_path / "out", overwrite=False)
    assert result["config"]["vision_config"]["hidden_act"] == "quick_gelu"
    assert result["config"]["text_config"]["hidden_act"] == "quick_gelu"
    assert_parity(loaded, load_transformers_model(tmp_path / "out"),
                  torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)))


def test_same_map_folds_to_the_same_features_in_both_forms(tiny_vit_file, tmp_path):
    """An unlearned model exports too: folding W before or after export gives the same features."""
    loaded = load_model(TINY_VIT, str(tiny_vit_file))
    hf = load_transformers_model(export_to_transformers(loaded, tmp_path / "hf", overwrite=False)["out"])
    W = torch.eye(32, dtype=torch.float64) + 0.2 * torch.randn(32, 32, dtype=torch.float64,
                                                               generator=torch.Generator().manual_seed(2))

    oc_site = loaded.site
    with torch.no_grad():
        loaded.model.visual.proj.copy_(fold(oc_site, {"visual.proj": loaded.model.visual.proj}, W)["visual.proj"])
        hf.model.visual_projection.weight.copy_(
            fold(hf.site, {hf.site.weight_key: hf.model.visual_projection.weight}, W)[hf.site.weight_key])
    assert_parity(loaded, hf, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    re_exported = export_to_transformers(loaded, tmp_path / "hf-unlearned", overwrite=False)
    hf_after = load_transformers_model(re_exported["out"])
    assert torch.equal(hf_after.model.visual_projection.weight, hf.model.visual_projection.weight)


def test_non_vit_tower_is_refused(tiny_rn_file, tmp_path):
    loaded = load_model(TINY_RN, str(tiny_rn_file))
    with pytest.raises(CheckpointError) as err:
        export_to_transformers(loaded, tmp_path / "out", overwrite=False)
    line = err.value.one_line()
    assert "not a VisionTransformer" in line and "\n" not in line
    assert not (tmp_path / "out").exists()


def test_preprocessing_maps_or_is_refused():
    base = {"size": 28, "mean": [0.5] * 3, "std": [0.5] * 3}
    shortest = image_processor_kwargs(base)
    assert shortest["size"] == {"shortest_edge": 28} and shortest["crop_size"] == {"height": 28, "width": 28}
    assert shortest["resample"] == 3  # bicubic, open_clip's default
    squash = image_processor_kwargs({**base, "size": [28, 28], "resize_mode": "squash", "interpolation": "bilinear"})
    assert squash["size"] == {"height": 28, "width": 28} and squash["do_center_crop"] is False
    assert squash["resample"] == 2
    with pytest.raises(CheckpointError, match="letterbox"):
        image_processor_kwargs({**base, "resize_mode": "longest"})
    with pytest.raises(CheckpointError, match="interpolation"):
        image_processor_kwargs({**base, "interpolation": "lanczos"})


@pytest.mark.embedded
def test_embedded_model_keeps_its_accuracy(tmp_path):
    """Zero-shot top-1 on fashion-mnist-mini (2,000 images), each form with its own preprocessing.

    One template keeps the text side short; the full-split figure with all 80 templates is
    measured by scripts/bench_backends.py.
    """
    from ccup_cli.data.datasets import open_dataset

    loaded = load_model()
    hf = load_transformers_model(export_to_transformers(loaded, tmp_path / "hf", overwrite=False)["out"])
    dataset = open_dataset("fashion-mnist-mini")
    templates = load_templates("photo")
    prompts = build_prompts(dataset.classnames, templates)
    n_classes, n_templates = len(dataset.classnames), len(templates)
    classes_oc = class_embeddings(encode_prompts(loaded.model, loaded.tokenizer, prompts), n_classes, n_templates)
    classes_hf = class_embeddings(hf.encode_prompts(prompts), n_classes, n_templates)
    assert float((classes_oc - classes_hf).abs().max()) <= MAX_FEATURE_DIFF
    labels = torch.as_tensor(dataset.labels)
    images = [dataset.load_image(i) for i in range(len(dataset))]
    with torch.inference_mode():
        pixels_oc = torch.stack([loaded.preprocess(im) for im in images])
        pixels_hf = torch.stack([hf.preprocess(im) for im in images])
        feats_oc = torch.cat([loaded.model.encode_image(batch) for batch in pixels_oc.split(500)])
        feats_hf = torch.cat([hf.encode_images(batch, projected=True) for batch in pixels_hf.split(500)])
    top1_oc = float(((F.normalize(feats_oc, dim=-1) @ classes_oc.T).argmax(1) == labels).double().mean())
    top1_hf = float(((F.normalize(feats_hf, dim=-1) @ classes_hf.T).argmax(1) == labels).double().mean())
    assert top1_oc > 0.8  # the embedded model does classify fashion-mnist
    assert top1_oc == top1_hf  # identical figures, as the README promises
    assert float((feats_oc - feats_hf).abs().max()) <= MAX_FEATURE_DIFF
    assert float(cosine(feats_oc, feats_hf).min()) >= MIN_FEATURE_COSINE
