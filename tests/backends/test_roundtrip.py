"""Real architectures with random weights: fold, write, and load back with plain open_clip."""

from __future__ import annotations

import importlib.metadata
import json

import open_clip
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ccup_cli.jobs.unlearn import run_unlearn
from ccup_cli.output.atomic import sha256_file
from ccup_cli.run.options import RunOptions
from ccup_cli.spec.schema import build_spec

from ..conftest import TINY_TIMM, TINY_VIT, save_random

FORGET = ["cat", "dog"]
RETAIN = ["car", "tree", "house", "boat"]


def _unlearn(model: str, pretrained: str, out, **extra) -> dict:
    spec = build_spec({}, {"model": model, "pretrained": pretrained, "forget": FORGET, "retain": RETAIN,
                           "templates": "photo", "retain_templates": "photo", "eval": None, **extra})
    return run_unlearn(spec, RunOptions(device="cpu", out=out, use_cache=False))


@pytest.fixture(scope="module", params=["ViT-S-32", "RN50", TINY_TIMM])
def arch_run(request, tmp_path_factory, tiny_models):
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    source = save_random(name, folder / "source.safetensors")
    out = folder / "out"
    report = _unlearn(name, str(source), out)
    return name, source, out, report


def test_plain_open_clip_loads_the_patched_file_and_features_are_W_times_original(arch_run):
    name, source, out, report = arch_run
    original, _, _ = open_clip.create_model_and_transforms(name, pretrained=str(source))
    patched, _, _ = open_clip.create_model_and_transforms(name, pretrained=str(out / "model.safetensors"))
    original.eval()
    patched.eval()
    size = original.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = original.encode_image(images).double()
        after = patched.encode_image(images).double()
    W = _library_W(original, name, report)  # patches `original` in place: it has done its part
    scale = before.abs().max().item()
    assert torch.allclose(after, before @ W.T, rtol=0, atol=1e-5 * scale)
    assert not torch.allclose(after, before, atol=1e-3 * scale)
    # the folded tensors themselves, and the report's singular values, are those of this W
    src, dst = load_file(str(source)), load_file(str(out / "model.safetensors"))
    for key, expected in _folded(report, src, W).items():
        assert torch.allclose(dst[key].double(), expected, rtol=0, atol=2e-6 * expected.abs().max().item()), key
    reported = torch.tensor(report["projector"]["singular_values_of_I_minus_W"], dtype=torch.float64)
    singular = torch.linalg.svdvals(torch.eye(W.shape[0], dtype=torch.float64) - W)
    assert len(reported) >= 5 and torch.allclose(reported, singular[:len(reported)], atol=1e-6)


def _library_W(model, name: str, report: dict) -> torch.Tensor:
    """W from ``ccup_cli.unlearn`` on the original model with the job's settings: solved apart from the job."""
    import ccup_cli

    proj = report["projector"]
    return ccup_cli.unlearn(model, open_clip.get_tokenizer(name), forget=FORGET, retain=RETAIN, alpha=proj["alpha"],
                            templates="photo", retain_templates="photo", inplace=True, **proj["params"]).W


def _folded(report: dict, src: dict, W: torch.Tensor) -> dict[str, torch.Tensor]:
    """The fold-site tensors W makes from the source's, written out here rather than by ``fold``."""
    keys = report["projector"]["fold_keys"]
    if report["projector"]["fold_site"] == "visual.proj":  # x @ P: P' = P Wᵀ
        return {keys[0]: src[keys[0]].double() @ W.T}
    return {k: W @ src[k].double() for k in keys}  # Linear: weight' = W weight, bias' = W bias


def assert_same_transform(a, b) -> None:
    """Same steps with the same settings (lists and tuples alike), and the same output on an odd-sized image."""
    import numpy as np
    from PIL import Image

    def norm(t) -> str:
        return repr(t).replace("[", "(").replace("]", ")")

    assert norm(a) == norm(b)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 50, 3), dtype=np.uint8))
    assert torch.equal(a(img), b(img))


def test_only_fold_site_tensors_differ_byte_for_byte(arch_run):
    name, source, out, report = arch_run
    fold_keys = set(report["projector"]["fold_keys"])
    src, dst = load_file(str(source)), load_file(str(out / "model.safetensors"))
    assert set(src) == set(dst)
    changed = {k for k in src if not torch.equal(src[k], dst[k]) or src[k].dtype != dst[k].dtype}
    assert changed == fold_keys
    expected_site = {"ViT-S-32": "visual.proj", "RN50": "visual.attnpool.c_proj",
                     TINY_TIMM: "visual.head.proj"}[name]
    assert report["projector"]["fold_site"] == expected_site
    if name == "RN50":
        assert fold_keys == {"visual.attnpool.c_proj.weight", "visual.attnpool.c_proj.bias"}


def test_outputs_carry_provenance(arch_run):
    _, source, out, report = arch_run
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["method"] == "ccup"
    assert json.loads(meta["forget"]) == FORGET
    assert meta["spec_sha256"] == report["spec_sha256"]
    # the README's metadata: alpha, the ccup version and the source's sha256
    assert float(meta["alpha"]) == report["projector"]["alpha"] == report["spec"]["alpha"]
    assert meta["ccup_version"] == report["ccup_version"] == importlib.metadata.version("ccup")
    assert meta["source_sha256"] == report["inputs"]["checkpoint"]["sha256"] == sha256_file(source)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["outputs"]["checkpoint"]["sha256"] == report["outputs"]["checkpoint"]["sha256"]
    assert on_disk["inputs"]["checkpoint"]["sha256"] == report["inputs"]["checkpoint"]["sha256"]
    assert set(on_disk["timings"]) >= {"load_model", "text", "solve_and_fold", "write"}


@pytest.mark.parametrize("arch_run", ["ViT-S-32", "RN50"], indirect=True)
def test_local_dir_round_trip_keeps_the_source_transform(arch_run):
    name, source, out, _ = arch_run
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{out}")
    _, _, source_transform = open_clip.create_model_and_transforms(name, pretrained=str(source))
    assert_same_transform(transform, source_transform)
    by_file, _, _ = open_clip.create_model_and_transforms(name, pretrained=str(out / "model.safetensors"))
    folder_state, file_state = model.state_dict(), by_file.state_dict()
    assert list(folder_state) == list(file_state)
    for k in folder_state:
        assert torch.equal(folder_state[k], file_state[k]), k
    prompts = ["a photo of a cat.", "dog", "sneaker & sandal"]
    assert torch.equal(open_clip.get_tokenizer(f"local-dir:{out}")(prompts), open_clip.get_tokenizer(name)(prompts))


def test_same_inputs_give_byte_identical_checkpoints(tiny_vit_file, tmp_path):
    _unlearn(TINY_VIT, str(tiny_vit_file), tmp_path / "a")
    _unlearn(TINY_VIT, str(tiny_vit_file), tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_tag_with_its_own_preprocessing_is_kept_in_the_output(tiny_models, tiny_vit_file, tmp_path, monkeypatch):
    """A tag whose pretrained config says mean = std = 0.5 (as SigLIP tags do), faked without a download."""
    from open_clip import pretrained as oc_pretrained

    tag_cfg = {"file": str(tiny_vit_file), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
               "interpolation": "bilinear", "resize_mode": "squash"}
    monkeypatch.setitem(oc_pretrained._PRETRAINED, TINY_VIT, {"fake": tag_cfg})
    report = _unlearn(TINY_VIT, "fake", tmp_path / "out")
    assert report["preprocess_cfg"]["mean"] == [0.5, 0.5, 0.5]
    written = json.loads((tmp_path / "out" / "open_clip_config.json").read_text())
    assert written["preprocess_cfg"]["mean"] == [0.5, 0.5, 0.5]
    assert written["preprocess_cfg"]["resize_mode"] == "squash"
    _, _, from_folder = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'out'}")
    _, _, from_tag = open_clip.create_model_and_transforms(TINY_VIT, pretrained="fake")
    assert_same_transform(from_folder, from_tag)
    assert "0.5" in repr(from_folder)
