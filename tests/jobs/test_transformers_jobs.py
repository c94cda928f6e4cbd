"""The jobs on a transformers CLIP folder, through the backend seam: unlearn, eval, sweep, auto-α, export."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from ccup_cli.errors import DependencyError  # noqa: E402
from ccup_cli.jobs.eval import EvalRequest, run_eval  # noqa: E402
from ccup_cli.jobs.sweep import run_sweep_job  # noqa: E402
from ccup_cli.jobs.unlearn import run_unlearn  # noqa: E402
from ccup_cli.run.options import RunOptions  # noqa: E402
from ccup_cli.spec.schema import build_spec  # noqa: E402

from ..conftest import assert_same_metrics  # noqa: E402

OPTIONS = RunOptions(device="cpu", use_cache=False)


@pytest.fixture()
def hf_spec(hf_clip_folder, fashion_folder):
    def make(**fields):
        return build_spec({}, {"model": f"transformers:{hf_clip_folder}", "eval": str(fashion_folder),
                               "templates": "photo", "retain_templates": "photo", "forget": "sandal,sneaker",
                               **fields})

    return make


@pytest.fixture(scope="module")
def hf_run(hf_clip_folder, fashion_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf-out") / "out"
    spec = build_spec({}, {"model": f"transformers:{hf_clip_folder}", "eval": str(fashion_folder),
                           "templates": "photo", "retain_templates": "photo", "forget": "sandal,sneaker"})
    return run_unlearn(spec, OPTIONS.but(out=out)), out


def test_unlearn_changes_only_visual_projection_and_loads_with_transformers_alone(hf_run, hf_clip_folder):
    report, out = hf_run
    assert report["model"]["backend"] == "transformers" and report["projector"]["fold_site"] == "visual_projection"
    assert report["environment"]["transformers"] == transformers.__version__
    src, dst = load_file(str(hf_clip_folder / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(src) == set(dst)
    assert {k for k in src if not torch.equal(src[k], dst[k])} == {"visual_projection.weight"}
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json", "spec.yaml", "report.json"):
        assert (out / name).is_file(), name
    W = expected_map(report, hf_clip_folder)
    weight = src["visual_projection.weight"].double()
    # weight' = W · weight, with W solved here from the text side alone, not read back from the output
    assert torch.allclose(dst["visual_projection.weight"].double(), W @ weight, rtol=0, atol=1e-6)
    assert not torch.allclose(W, torch.eye(W.shape[0], dtype=torch.float64), atol=1e-2)
    reported = torch.tensor(report["projector"]["singular_values_of_I_minus_W"], dtype=torch.float64)
    singular = torch.linalg.svdvals(torch.eye(W.shape[0], dtype=torch.float64) - W)  # the report keeps the leading ones
    assert len(reported) >= 5 and torch.allclose(reported, singular[:len(reported)], atol=1e-6)
    original = transformers.CLIPModel.from_pretrained(str(hf_clip_folder)).eval()
    patched = transformers.CLIPModel.from_pretrained(str(out)).eval()
    processor = transformers.CLIPProcessor.from_pretrained(str(out))
    assert processor.image_processor.crop_size == {"height": 32, "width": 32}
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = original.vision_model(pixel_values=pixels).pooler_output @ original.visual_projection.weight.T
        after = patched.vision_model(pixel_values=pixels).pooler_output @ patched.visual_projection.weight.T
    assert torch.allclose(after.double(), before.double() @ W.T, rtol=0, atol=1e-5 * before.abs().max().item())


def expected_map(report: dict, folder) -> torch.Tensor:
    """The report's method solved again from the source's text embeddings (library calls, no job, no fold)."""
    from ccup_cli.backends.transformers import load_transformers_model
    from ccup_cli.methods.table import MethodContext, build_projector
    from ccup_cli.text.embeddings import embed_forget_and_retain
    from ccup_cli.text.templates import load_templates

    loaded = load_transformers_model(folder)
    spec, proj = report["spec"], report["projector"]
    forget, retain = embed_forget_and_retain(loaded.encode_prompts, spec["forget"], spec["retain"],
                                             load_templates(spec["templates"]), load_templates(spec["retain_templates"]))
    return build_projector(proj["method"], forget, retain, proj["alpha"], proj["params"],
                           MethodContext(encode=loaded.encode_prompts)).W


def test_eval_of_the_output_folder_equals_metrics_after(hf_run, fashion_folder):
    report, out = hf_run
    again, failures = run_eval(EvalRequest(pretrained=str(out), eval=str(fashion_folder), templates="photo",
                                           forget=["sandal", "sneaker"]), OPTIONS)
    assert again["model"]["backend"] == "transformers" and not failures
    assert_same_metrics(again["metrics"]["before"], report["metrics"]["after"])


def test_same_inputs_give_byte_identical_folders(hf_spec, tmp_path):
    first = run_unlearn(hf_spec(), OPTIONS.but(out=tmp_path / "a"))
    second = run_unlearn(hf_spec(), OPTIONS.but(out=tmp_path / "b"))
    assert first["outputs"]["checkpoint"]["sha256"] == second["outputs"]["checkpoint"]["sha256"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_sweep_and_alpha_auto_run_on_a_transformers_folder(hf_spec, tmp_path):
    report = run_sweep_job(hf_spec(), [0.0, 1.0], ["ccup", "nullspace"], OPTIONS.but(out=tmp_path / "s"))
    assert len(report["rows"]) == 4 and report["model"]["backend"] == "transformers"
    assert [(r["method"], r["alpha"]) for r in report["rows"]] == [("ccup", 0.0), ("ccup", 1.0), ("nullspace", 0.0),
                                                                   ("nullspace", 1.0)]
    # forget the classes this random model does recognise, so that the curve has somewhere to fall from
    recognised = [c for c, v in report["rows"][0]["metrics"]["overall"]["per_class"].items() if v > 0]
    assert recognised
    forget = ",".join(recognised)
    curve = run_unlearn(hf_spec(forget=forget, alpha="auto", max_forget_acc=1.0, max_forget_retrieval=1.0), OPTIONS)["auto_alpha"]["curve"]
    assert len(curve) == 21
    top, bottom = curve[0]["forget_top1"], curve[-1]["forget_top1"]
    assert top > bottom, curve  # the random tiny model still loses its forget images along the curve
    target = (top + bottom) / 2  # between the curve's ends: the answer is not automatic
    auto = run_unlearn(hf_spec(forget=forget, alpha="auto", max_forget_acc=target,
                                       max_forget_retrieval=1.0), OPTIONS)
    chosen = auto["auto_alpha"]["chosen_alpha"]
    assert 0 < chosen <= 1 and auto["projector"]["alpha"] == chosen
    assert auto["metrics"]["after"]["forget"]["top1"] <= target
    assert all(c["forget_top1"] > target for c in curve if c["alpha"] < chosen)


def test_a_transformers_folder_without_the_extra_is_bad_input(hf_spec, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else
                        real(name, *a))
    with pytest.raises(DependencyError) as err:
        run_unlearn(hf_spec(), OPTIONS)
    assert "transformers package is missing; pip install 'ccup[transformers]'" in err.value.one_line()


def test_a_siglip2_folder_is_refused_in_one_line(tmp_path, fashion_folder):
    from typer.testing import CliRunner

    from ccup_cli.cli import app

    folder = tmp_path / "siglip2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    result = CliRunner().invoke(app, ["eval", "--pretrained", str(folder), "--eval", str(fashion_folder)])
    assert result.exit_code == 2
    assert "model_type 'siglip2' is not supported" in result.stderr and "NaFlex" in result.stderr


@pytest.mark.embedded
def test_an_unlearned_folder_exports_and_keeps_its_forget_figures(tmp_path):
    from ccup_cli.jobs.export import run_export

    spec = build_spec({}, {"forget": "sandal,sneaker", "eval_limit": 20})
    unlearned = run_unlearn(spec, OPTIONS.but(out=tmp_path / "out"))
    exported = run_export(str(tmp_path / "out"), None, "transformers", OPTIONS.but(out=tmp_path / "hf"))
    assert exported["export"]["files"]["model.safetensors"] and exported["model"]["backend"] == "open_clip"
    again, _ = run_eval(EvalRequest(pretrained=str(tmp_path / "hf"), eval_limit=20, forget=["sandal", "sneaker"]),
                        OPTIONS)
    assert again["model"]["backend"] == "transformers"
    before, after = unlearned["metrics"]["after"], again["metrics"]["before"]
    for split in ("forget", "retain", "retain_only", "overall"):  # identical, as the README promises
        assert after[split]["top1"] == before[split]["top1"], split
        assert after[split]["per_class"] == before[split]["per_class"], split
    assert after["forget"]["top1"] <= 0.02


def test_export_refuses_a_transformers_source_and_unknown_targets(hf_clip_folder, tmp_path):
    from ccup_cli.errors import SpecError
    from ccup_cli.jobs.export import run_export

    with pytest.raises(SpecError) as err:
        run_export(str(hf_clip_folder), None, "onnx", OPTIONS.but(out=tmp_path / "x"))
    assert 'to: "onnx" is not a target' in err.value.one_line()
    assert "is already a transformers folder" in err.value.one_line()
    assert not (tmp_path / "x").exists()
