"""``fold: image | text | auto`` on every open_clip tower shape: tiny random-init models, no network.

For each shape: unlearn through the job, reload the folder with plain open_clip, check that only the
fold tensors differ, and that the patched model's raw logits are ``tᵀ W f`` of the original.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ccup_cli.errors import CheckpointError, SpecError
from ccup_cli.jobs.eval import EvalRequest, run_eval
from ccup_cli.jobs.unlearn import run_unlearn
from ccup_cli.run.options import RunOptions
from ccup_cli.spec.schema import build_spec

from ..conftest import (
    FASHION,
    TINY_RN,
    TINY_SIGLIP,
    TINY_TIMM,
    TINY_TIMM_MLP,
    TINY_TRUNK_FC,
    TINY_TRUNK_HEAD,
    TINY_VIT,
    save_random,
)

OPTIONS = RunOptions(device="cpu", use_cache=False)
# (config, fold) -> the site and its side; every tower shape of the coverage table, both sides where both exist
CASES = [
    (TINY_VIT, "image", "visual.proj", ("visual.proj",)),
    (TINY_VIT, "text", "text_projection", ("text_projection",)),
    (TINY_RN, "image", "visual.attnpool.c_proj", ("visual.attnpool.c_proj.weight", "visual.attnpool.c_proj.bias")),
    (TINY_RN, "text", "text_projection", ("text_projection",)),
    (TINY_TIMM, "image", "visual.head.proj", ("visual.head.proj.weight",)),
    (TINY_TIMM_MLP, "image", "visual.head.mlp.fc2", ("visual.head.mlp.fc2.weight",)),
    (TINY_TRUNK_HEAD, "image", "visual.trunk.head", ("visual.trunk.head.weight", "visual.trunk.head.bias")),
    (TINY_TRUNK_FC, "text", "text_projection", ("text_projection",)),
    (TINY_TRUNK_FC, "image", "visual.trunk.head.fc", ("visual.trunk.head.fc.weight", "visual.trunk.head.fc.bias")),
    (TINY_SIGLIP, "text", "text.text_projection", ("text.text_projection.weight", "text.text_projection.bias")),
]
RETAIN = [c for c in FASHION if c not in ("sandal", "sneaker")]


@pytest.fixture(scope="module")
def weights(tiny_models, tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("fold-weights")
    files = {}
    for name in sorted({case[0] for case in CASES}):
        path = save_random(name, folder / f"{name}.safetensors")
        state = load_file(str(path))
        gen = torch.Generator().manual_seed(2)
        for key, value in state.items():  # biases start at zero; a fold must carry them too
            if key.endswith(".bias") and not value.any():
                state[key] = 0.1 * torch.randn(value.shape, generator=gen)
        save_file(state, str(path))
        files[name] = path
    return files


def _spec(name, weights_file, folder, **fields):
    return build_spec({}, {"model": name, "pretrained": str(weights_file), "eval": str(folder), "templates": "photo",
                           "retain_templates": "photo", "forget": "sandal,sneaker", **fields})


def _images(size: int) -> torch.Tensor:
    return torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("name", "fold", "path", "keys"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_each_tower_shape_folds_reloads_with_plain_open_clip_and_keeps_the_logit(
        name, fold, path, keys, weights, fashion_folder, tmp_path):
    import open_clip

    import ccup_cli

    out = tmp_path / "out"
    report = run_unlearn(_spec(name, weights[name], fashion_folder, fold=fold), OPTIONS.but(out=out))
    proj = report["projector"]
    assert (proj["fold_site"], proj["fold_side"], tuple(proj["fold_keys"])) == (path, fold, keys)

    source, patched_file = load_file(str(weights[name])), load_file(str(out / "model.safetensors"))
    assert set(source) == set(patched_file)
    assert {k for k in source if not torch.equal(source[k], patched_file[k])} == set(keys)

    patched, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")  # plain open_clip, the folder alone
    original = open_clip.create_model(name, pretrained=str(weights[name]))
    patched.eval(), original.eval()
    tokenizer = open_clip.get_tokenizer(name)
    # the same W, from the library with the job's forget and retain prompts
    result = ccup_cli.unlearn(original, tokenizer, forget=["sandal", "sneaker"], retain=RETAIN, templates="photo",
                              retain_templates="photo", fold=fold)
    assert result.site.path == path
    W = result.W.float()
    tokens = tokenizer(["a photo of a sandal.", "a photo of a bag.", "a photo of a coat."])
    size = getattr(patched.visual, "image_size", 64)
    pixels = _images(size if isinstance(size, int) else size[0])
    with torch.no_grad():
        t, f = original.encode_text(tokens), original.encode_image(pixels)
        t_p, f_p = patched.encode_text(tokens), patched.encode_image(pixels)
    expected = t @ W @ f.T
    assert torch.allclose(t_p @ f_p.T, expected, atol=1e-5 * float(expected.abs().max()), rtol=0)
    if fold == "text":  # the image tower is untouched: image search and probes see no change
        assert torch.equal(f_p, f)
        assert not torch.allclose(t_p, t, atol=1e-3)
    else:
        assert torch.equal(t_p, t)


def test_auto_folds_on_the_image_side_where_it_can_and_on_the_text_side_otherwise(weights, fashion_folder):
    vit = run_unlearn(_spec(TINY_VIT, weights[TINY_VIT], fashion_folder), OPTIONS)
    siglip = run_unlearn(_spec(TINY_SIGLIP, weights[TINY_SIGLIP], fashion_folder), OPTIONS)
    assert (vit["spec"]["fold"], vit["projector"]["fold_side"]) == ("auto", "image")
    assert (siglip["spec"]["fold"], siglip["projector"]["fold_side"]) == ("auto", "text")
    assert siglip["metrics"]["after"]["forget"]["top1"] is not None


def test_fold_image_on_a_tower_without_an_image_site_exits_2_naming_fold_text(weights, fashion_folder, tmp_path):
    from typer.testing import CliRunner

    from ccup_cli.cli import app

    result = CliRunner().invoke(app, ["unlearn", "--model", TINY_SIGLIP, "--pretrained", str(weights[TINY_SIGLIP]),
                                      "--forget", "sandal", "--eval", str(fashion_folder), "--templates", "photo",
                                      "--retain-templates", "photo", "--fold", "image", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and "fold: text" in line and "TimmModel without a final Linear" in line
    assert not (tmp_path / "o").exists()


def test_fold_must_be_image_text_or_auto_and_finetune_cannot_fold_text():
    with pytest.raises(SpecError) as err:
        build_spec({}, {"forget": "bag", "fold": "vision"})
    assert err.value.problems[0].startswith("fold:")
    with pytest.raises(SpecError) as err:
        build_spec({}, {"forget": "bag", "fold": "text", "method": "finetune"})
    assert "fold: text does not apply to method finetune" in err.value.one_line()


def test_text_fold_eval_of_the_output_equals_metrics_after(weights, fashion_folder, tmp_path):
    out = tmp_path / "out"
    report = run_unlearn(_spec(TINY_SIGLIP, weights[TINY_SIGLIP], fashion_folder), OPTIONS.but(out=out))
    again, failures = run_eval(EvalRequest(pretrained=str(out), eval=str(fashion_folder), templates="photo",
                                           forget=["sandal", "sneaker"]), OPTIONS)
    assert not failures
    assert again["metrics"]["before"] == report["metrics"]["after"]
    assert report["metrics"]["before"] != report["metrics"]["after"]


@pytest.mark.parametrize("forget", ["bag", "coat,dress,shirt"])
def test_text_fold_one_pass_metrics_equal_the_patched_model_run_in_full(forget, weights, fashion_folder, tmp_path):
    """One pass (image features once, the classifier's prompts before the site) against the patched model
    loaded and run end to end; on a ViT, where eval folds on the image side and so recomputes everything."""
    out = tmp_path / "out"
    report = run_unlearn(_spec(TINY_VIT, weights[TINY_VIT], fashion_folder, fold="text", forget=forget),
                         OPTIONS.but(out=out))
    again, _ = run_eval(EvalRequest(pretrained=str(out), eval=str(fashion_folder), templates="photo",
                                    forget=forget.split(",")), OPTIONS)
    after, full = report["metrics"]["after"], again["metrics"]["before"]
    for split in ("forget", "retain", "retain_only", "overall"):
        assert after[split]["top1"] == full[split]["top1"]
        assert after[split]["per_class"] == full[split]["per_class"]
    assert after["forget"]["mean_true_class_prob"] == pytest.approx(full["forget"]["mean_true_class_prob"], abs=1e-5)
    assert after["retrieval"]["per_class"] == full["retrieval"]["per_class"]


def test_sweep_and_alpha_auto_work_with_a_text_fold(weights, fashion_folder, tmp_path):
    from ccup_cli.jobs.sweep import run_sweep_job

    spec = _spec(TINY_SIGLIP, weights[TINY_SIGLIP], fashion_folder)
    sweep = run_sweep_job(spec, [0.0, 0.5, 1.0], ["ccup", "nullspace"], OPTIONS.but(out=tmp_path / "s"))
    assert sweep["sweep"]["fold_side"] == "text" and len(sweep["rows"]) == 6
    alone = run_unlearn(spec, OPTIONS)
    at_one = next(r for r in sweep["rows"] if r["method"] == "ccup" and r["alpha"] == 1.0)
    assert at_one["metrics"] == alone["metrics"]["after"]
    at_zero = next(r for r in sweep["rows"] if r["method"] == "ccup" and r["alpha"] == 0.0)
    assert at_zero["metrics"] == alone["metrics"]["before"]
    auto = run_unlearn(_spec(TINY_SIGLIP, weights[TINY_SIGLIP], fashion_folder, alpha="auto", max_forget_acc=1.0),
                       OPTIONS)
    assert auto["auto_alpha"]["chosen_alpha"] == 0.0 and len(auto["auto_alpha"]["curve"]) == 21


def test_the_fast_text_path_steps_aside_on_a_bidirectional_last_token_tower(tiny_models):
    import open_clip

    from ccup_cli.text.encode import encode_prompts, supports_fast_text

    torch.manual_seed(0)
    model = open_clip.create_model(TINY_SIGLIP, pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer(TINY_SIGLIP)
    assert not supports_fast_text(model)
    prompts = ["a photo of a bag.", "a bag.", "a very long photo of a small red ankle boot on a table."]
    with torch.no_grad():
        expected = model.encode_text(tokenizer(prompts))
    assert torch.allclose(encode_prompts(model, tokenizer, prompts, batch_size=2), expected, atol=1e-5)


def test_a_real_siglip_tag_is_refused_fast_offline_like_other_tags(monkeypatch):
    import ccup_cli.backends.open_clip as models

    monkeypatch.setattr(models, "_network_reachable", lambda *a, **k: False)
    with pytest.raises(CheckpointError) as err:
        models.load_model("ViT-B-16-SigLIP")
    assert "ViT-B-16-SigLIP pretrained=webli needs a download and no network answers" in err.value.one_line()
    with pytest.raises(CheckpointError) as err:  # random init still needs SigLIP's tokenizer from the hub
        models.load_model("ViT-B-16-SigLIP", "none")
    assert "the tokenizer timm/ViT-B-16-SigLIP of ViT-B-16-SigLIP needs a download" in err.value.one_line()


def test_text_fold_report_and_card_say_what_stays_reachable(weights, fashion_folder, tmp_path):
    out = tmp_path / "out"
    run_unlearn(_spec(TINY_SIGLIP, weights[TINY_SIGLIP], fashion_folder), OPTIONS.but(out=out))
    report = json.loads((out / "report.json").read_text())
    assert report["projector"]["fold_side"] == "text"
    assert report["projector"]["fold_keys"] == ["text.text_projection.weight", "text.text_projection.bias"]
    card = (out / "README.md").read_text()
    assert "text tower's final linear map" in card and "image-to-image search" in card
    assert load_file(str(out / "model.safetensors")).keys() == load_file(str(weights[TINY_SIGLIP])).keys()
