"""The library entry point on an in-memory open_clip model."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import ccup_cli

from .conftest import TINY_VIT


@pytest.fixture()
def tiny(tiny_models):
    import open_clip

    torch.manual_seed(2)
    return open_clip.create_model(TINY_VIT, pretrained=None).eval(), open_clip.get_tokenizer(TINY_VIT)


def test_unlearn_returns_a_patched_copy_whose_features_are_W_times_the_original(tiny):
    model, tokenizer = tiny
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    result = ccup_cli.unlearn(model, tokenizer, forget=["cat"], retain=["car", "tree"], alpha=0.7,
                              templates="photo", retain_templates="photo")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_state.items())  # source untouched
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        original = model.encode_image(images).double()
        patched = result.model.encode_image(images).double()
    assert torch.allclose(patched, original @ result.W.T, atol=1e-5)
    assert result.site.path == "visual.proj"
    assert result.projector.alpha == 0.7 and result.W.dtype == torch.float64
    assert result.embedding_mode == {"forget": "per-template", "retain": "per-template"}


def test_inplace_patches_the_given_model(tiny):
    model, tokenizer = tiny
    proj_before = model.visual.proj.detach().clone()
    result = ccup_cli.unlearn(model, tokenizer, forget=["cat"], retain=["car"], templates="photo",
                              retain_templates="photo", inplace=True)
    assert result.model is model
    expected = (proj_before.double() @ result.W.T).float()  # x @ P: P' = P Wᵀ
    assert torch.allclose(model.visual.proj, expected, rtol=0, atol=1e-6)
    assert torch.equal(result.folded_tensors["visual.proj"], model.visual.proj.detach())
    assert torch.equal(result.original_tensors["visual.proj"], proj_before)
    assert (model.visual.proj - proj_before).abs().max() > 1e-3  # W is not the identity


def test_default_retain_is_imagenet_less_the_forget_classes(tiny):
    model, tokenizer = tiny
    result = ccup_cli.unlearn(model, tokenizer, forget=["goldfish"], method="nullspace", templates="photo",
                              retain_templates="photo")
    assert len(result.retain.classnames) == 999 and "goldfish" not in result.retain.classnames


def test_encode_prompts_is_exported(tiny):
    model, tokenizer = tiny
    prompts = ["a photo of a cat.", "a dog"]
    feats = ccup_cli.encode_prompts(model, tokenizer, prompts)
    with torch.no_grad():
        reference = model.encode_text(tokenizer(prompts))
    assert feats.shape == (2, 32) and torch.allclose(feats, reference, atol=1e-4)


def test_unlearn_takes_domain_sides_and_ccup_proto(tiny):
    import open_clip

    model, tokenizer = tiny
    table = {"photo": ["a photo of a {}."], "sketch": ["a sketch of a {}.", "a drawing of a {}."]}
    result = ccup_cli.unlearn(model, tokenizer, forget=["sandal"], retain=["bag"], domains=table,
                              forget_domains=["sketch"], retain_prompts=["Acme shoes"])
    assert result.forget.classnames == ["sandal in sketch"]
    assert result.retain.classnames == ["sandal in photo", "bag in photo", "bag in sketch", "Acme shoes"]
    assert result.forget.per_template.shape[0] == 2 and result.projector.rank > 0
    # the logit side, Q t = Wᵀ t (rows: t W): every forget prompt is moved away from itself, every retain
    # prompt (sandal in photo and the free prompt too) is kept
    forget_t, retain_t = (F.normalize(e.per_template.double(), dim=-1) for e in (result.forget, result.retain))
    assert F.cosine_similarity(forget_t @ result.W, forget_t).max() < 0.5
    assert F.cosine_similarity(retain_t @ result.W, retain_t).min() > 0.99
    assert torch.allclose(result.model.visual.proj, (model.visual.proj.double() @ result.W.T).float(), atol=1e-6)
    with pytest.raises(ValueError, match='unknown domain "skecth"'):
        ccup_cli.unlearn(model, tokenizer, forget=["sandal"], domains=table, forget_domains=["skecth"])
    preprocess = open_clip.image_transform(32, is_train=False)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    proto = ccup_cli.unlearn(model, tokenizer, forget=["sandal"], retain=["bag"], domains=table,
                             forget_domains=["sketch"], method="ccup-proto", preprocess=preprocess,
                             prototype_steps=2, prototypes_per_group=2)
    assert proto.projector.method == "ccup-proto" and proto.projector.params["prototypes_per_group"] == 2
    assert not torch.allclose(proto.W, torch.eye(proto.W.shape[0], dtype=torch.float64), atol=1e-3)
    # synthesis optimised pixels only: every weight of the given model is untouched, and no grad is left
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state_before.items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.allclose(proto.model.visual.proj, (model.visual.proj.double() @ proto.W.T).float(), atol=1e-6)


@pytest.mark.parametrize("break_tower, needle", [
    (lambda m: setattr(m.visual, "proj", None), "unsupported tower: VisionTransformer without a projection"),
    (lambda m: setattr(m, "visual", torch.nn.Identity()), "unsupported tower: visual is Identity"),
])
def test_an_unsupported_tower_is_refused(tiny, break_tower, needle):
    """fold: image on an image tower without a final map is refused, naming fold: text; auto folds there."""
    from ccup_cli.errors import CheckpointError

    model, tokenizer = tiny
    break_tower(model)
    with pytest.raises(CheckpointError) as err:
        ccup_cli.unlearn(model, tokenizer, forget=["cat"], retain=["car"], templates="photo", retain_templates="photo",
                         fold="image")
    line = err.value.one_line()
    assert needle in line and "fold: text" in line and "\n" not in line
    auto = ccup_cli.unlearn(model, tokenizer, forget=["cat"], retain=["car"], templates="photo",
                            retain_templates="photo")
    assert (auto.site.path, auto.site.side) == ("text_projection", "text")


def test_retain_classes_closer_than_retain_warn_cosine_are_warned_about(tiny_vit_file, tmp_path):
    """Every retain class at -1; then a threshold between two measured cosines splits them exactly there."""
    from typer.testing import CliRunner

    from ccup_cli.cli import app
    from ccup_cli.jobs.unlearn import run_unlearn
    from ccup_cli.run.options import RunOptions
    from ccup_cli.spec.schema import build_spec

    flags = {"model": TINY_VIT, "pretrained": str(tiny_vit_file), "forget": "cat", "retain": "car,tree,house,boat",
             "templates": "photo", "retain_templates": "photo", "eval": None}
    options = RunOptions(device="cpu", use_cache=False)
    everything = run_unlearn(build_spec({}, {**flags, "retain_warn_cosine": -1.0}), options)["warnings"]
    assert len(everything) == 4 and all('close to forget class "cat" (cosine ' in w for w in everything)
    cosines = sorted(float(w.split("(cosine ")[1].split(")")[0]) for w in everything)
    assert cosines[0] < cosines[-1]
    threshold = (cosines[0] + cosines[1]) / 2
    some = run_unlearn(build_spec({}, {**flags, "retain_warn_cosine": threshold}), options)["warnings"]
    assert len(some) == 3
    none = run_unlearn(build_spec({}, {**flags, "retain_warn_cosine": 1.0}), options)["warnings"]
    assert none == []
    spec = tmp_path / "spec.yaml"  # a spec field, no flag
    spec.write_text("retain_warn_cosine: -1\n")
    shown = CliRunner().invoke(app, ["unlearn", str(spec), "--model", TINY_VIT, "--pretrained", str(tiny_vit_file),
                                     "--forget", "cat", "--retain", "car,tree,house,boat", "--templates", "photo",
                                     "--retain-templates", "photo", "--no-cache"])
    assert shown.exit_code == 0, shown.output
    assert shown.stderr.count("warning: retain class") == 4


def test_text_side_reads_the_query_the_patched_logits_use(tiny):
    """``text_side`` is cos(t_c, Wᵀ t_c): the logit t_cᵀ W f scores images with the query Wᵀ t_c.

    Checked against the patched model's own logits: (Wᵀ t)·f equals tᵀ (W f) for real features,
    and the reported cosine is that query's, which differs from cos(t, W t) for this W.
    """
    model, tokenizer = tiny
    result = ccup_cli.unlearn(model, tokenizer, forget=["cat"], retain=["car", "tree"], templates="photo",
                              retain_templates="photo")
    W = result.W
    t = result.retain.per_class.double()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        f_after = result.model.encode_image(images).double()
        f_before = model.encode_image(images).double()
    assert torch.allclose(t @ f_after.T, (t @ W) @ f_before.T, atol=1e-5)  # rows of t @ W are Wᵀ t_c
    reported = result.text_side()["retain"]
    by_query = F.cosine_similarity(t @ W, t, dim=-1)
    by_wrong_side = F.cosine_similarity(t @ W.T, t, dim=-1)
    assert (by_query - by_wrong_side).abs().max() > 1e-3  # the two sides differ for this W
    for name, want in zip(result.retain.classnames, by_query.tolist()):
        assert reported[name]["after"] == pytest.approx(want, abs=1e-12)


def _fashion_with_references():
    """The embedded ccup-tiny-fashion, its tokenizer, and the image features of the 150 shipped
    *train* images (unlabelled references)."""
    from pathlib import Path

    import numpy as np
    import open_clip
    from PIL import Image

    folder = Path(ccup_cli.__file__).parent / "assets" / "ccup-tiny-fashion"
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    with np.load(Path(__file__).parent / "assets" / "fashion-mnist-train-refs.npz") as z:
        pixels = torch.stack([preprocess(Image.fromarray(im)) for im in z["images"]])
    model.eval()
    with torch.no_grad():
        return model, tokenizer, pixels, model.encode_image(pixels)


def test_the_library_calibrates_on_reference_images_and_folds_the_erasure():
    from ccup_cli.data.catalog import preset_classnames

    model, tokenizer, pixels, refs = _fashion_with_references()
    names = preset_classnames("fashion-mnist")
    forget, retain = ["sandal", "sneaker"], [c for c in names if c not in ("sandal", "sneaker")]
    plain = ccup_cli.unlearn(model, tokenizer, forget=forget, retain=retain)
    calibrated = ccup_cli.unlearn(model, tokenizer, forget=forget, retain=retain, reference_images=refs)
    assert plain.projector.params["sink"] == "retain-mean-orthogonal"
    assert calibrated.projector.params["sink"] == "reference-chance"  # the default once references are given
    assert not torch.allclose(plain.W, calibrated.W)
    erased = ccup_cli.unlearn(model, tokenizer, forget=forget, retain=retain, reference_images=refs, erase="probe")
    assert erased.erasure is not None and erased.erasure.fitted_on == len(refs)
    with torch.no_grad():
        out = erased.model.encode_image(pixels).double()
    assert torch.allclose(out, erased.erasure(refs.double() @ erased.W.T), atol=1e-4)
    changed = [k for k, v in erased.model.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert changed == ["visual.proj"]


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"erase": "probe"}, "reads unlabelled reference images"),
    ({"sink": "reference-chance"}, "reads unlabelled reference images"),
    ({"erase": "lasso"}, "erase must be one of"),
    ({"reference_images": torch.zeros(10, 64)}, "at least 50"),
    ({"reference_images": torch.zeros(64)}, "[n, d] tensor"),
    ({"reference_images": torch.zeros(60, 64), "method": "nullspace"}, "method nullspace does not read them"),
])
def test_the_library_refuses_what_reference_images_cannot_do(tiny, kwargs, needle):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=re.escape(needle)):
        ccup_cli.unlearn(model, tokenizer, forget=["cat"], retain=["car", "tree"], templates="photo",
                         retain_templates="photo", **kwargs)
