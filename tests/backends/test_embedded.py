"""The embedded ccup-tiny-fashion model and fashion-mnist-mini subset, as shipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ccup_cli.backends.open_clip import ASSETS, EMBEDDED_DIR, embedded_names
from ccup_cli.cli import app
from ccup_cli.data.datasets import MINI_FILE, open_dataset
from ccup_cli.presets.defaults import EMBEDDED_MODELS, LIT_MODELS

pytestmark = pytest.mark.embedded

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo") / "out"
    result = runner.invoke(app, ["unlearn", "--forget", "sandal,sneaker", "--alpha", "1.0", "--out", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    report["_out"] = str(out)
    return report


@pytest.mark.parametrize("name", [n for n in EMBEDDED_MODELS if n not in LIT_MODELS])  # LiT: tests/backends/test_lit.py
def test_assets_are_small_and_complete(name):
    folder = ASSETS / name
    weights = folder / "open_clip_model.safetensors"
    assert weights.stat().st_size <= 16 * 2**20
    assert MINI_FILE.stat().st_size <= 2 * 2**20
    assert (MINI_FILE.parent / "LICENSE").read_text().count("MIT License") == 1
    assert (folder / "MODEL_CARD.md").is_file()
    local = json.loads((folder / "open_clip_config.json").read_text())
    registry = json.loads((ASSETS / "model_configs" / f"{name}.json").read_text())
    assert local["model_cfg"] == registry
    assert embedded_names() == list(EMBEDDED_MODELS)


@pytest.mark.xdist_group("domain-mini")  # shares the domain images' feature cache with test_domain_edit
def test_domain_model_forgets_sandal_in_sketch_far_more_than_in_photo():
    from ccup_cli.jobs.unlearn import run_unlearn
    from ccup_cli.run.options import RunOptions
    from ccup_cli.spec.schema import build_spec

    spec = build_spec({"model": "ccup-tiny-fashion-domains", "forget": ["sandal"], "forget_domains": ["sketch"]}, {})
    report = run_unlearn(spec, RunOptions(device="cpu", workers=0))
    assert report["dataset"]["name"] == "fashion-mnist-domains-mini"
    cell = {(d, when): report["metrics"][when]["domains"][d]["overall"]["per_class"]["sandal"]
            for d in ("photo", "sketch") for when in ("before", "after")}
    sketch_drop = cell[("sketch", "before")] - cell[("sketch", "after")]
    photo_drop = cell[("photo", "before")] - cell[("photo", "after")]
    assert cell[("sketch", "before")] > 0.8 and cell[("sketch", "after")] <= 0.05
    assert sketch_drop > photo_drop + 0.5
    # ccup eval --forget-domains on the same model also defaults to the domain mini set
    from ccup_cli.jobs.eval import EvalRequest, run_eval

    checked, _ = run_eval(EvalRequest(model="ccup-tiny-fashion-domains", forget_domains=["sketch"]),
                          RunOptions(device="cpu", workers=0))
    assert checked["dataset"]["name"] == "fashion-mnist-domains-mini"
    assert checked["metrics"]["before"]["forget"]["n"] == checked["metrics"]["before"]["domains"]["sketch"]["overall"]["n"]


def test_mini_subset_is_stratified():
    ds = open_dataset("fashion-mnist-mini")
    assert set(ds.counts().values()) == {200}


def test_training_preprocessing_is_exactly_the_shipped_transform():
    """train_tiny_clip.py feeds tensors directly; they must equal open_clip's transform of the PIL image."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from train_tiny_clip import to_model_input

    from ccup_cli.backends.open_clip import load_model

    loaded = load_model()
    ds = open_dataset("fashion-mnist-mini")
    images = np.stack([np.asarray(ds.load_image(i)) for i in range(16)])
    via_open_clip = torch.stack([loaded.preprocess(ds.load_image(i)) for i in range(16)])
    assert torch.allclose(to_model_input(images), via_open_clip, atol=1e-6)


def test_shipped_model_scores_its_measured_0917_on_the_mini_set():
    """The README's demo table: overall top-1 91.7 % before unlearning; a regression of half a point fails."""
    result = runner.invoke(app, ["eval", "--json", "--min-retain-acc", "0.80"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"]["name"] == "fashion-mnist-mini"
    assert report["metrics"]["before"]["overall"]["top1"] == pytest.approx(0.917, abs=0.005)


def test_demo_pair_meets_its_targets_on_the_mini_set(demo_report):
    m = demo_report["metrics"]
    assert m["after"]["forget"]["top1"] <= 0.02
    assert m["delta"]["retain"]["top1"] >= -0.01
    assert m["delta"]["retain_only"]["top1"] >= -0.01


def test_default_sink_removes_text_search_as_the_readme_says(demo_report):
    """README, the 60-second example: "precision@10 from 95 % to 0 %" for sandal and sneaker, default sink."""
    assert demo_report["projector"]["params"]["sink"] == "retain-mean-orthogonal"
    before, after = (demo_report["metrics"][w]["retrieval"] for w in ("before", "after"))
    assert before["forget"]["p_at_10"] == pytest.approx(0.95, abs=1e-9)
    assert after["forget"]["p_at_10"] == 0.0
    assert all(after["per_class"][c]["p_at_10"] == 0.0 for c in ("sandal", "sneaker"))
    assert after["forget"]["p_at_100"] == 0.0  # the table's P@100 row: 97.5 % to 0 %
    assert after["retain"]["p_at_100"] >= before["retain"]["p_at_100"] - 0.01  # retain search is kept


def test_local_dir_loading_reproduces_ccup_eval(demo_report):
    """A plain open_clip user on the output folder gets ccup's numbers (template recipe as in the README)."""
    import open_clip
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    for folder, expected in ((EMBEDDED_DIR, demo_report["metrics"]["before"]),
                             (Path(demo_report["_out"]), demo_report["metrics"]["after"])):
        model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        model.eval()
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        ds = open_dataset("fashion-mnist-mini")
        with torch.no_grad():
            classifier = build_zero_shot_classifier(model, tokenizer, ds.classnames, OPENAI_IMAGENET_TEMPLATES, 10,
                                                    "cpu", use_tqdm=False)
            images = torch.stack([transform(ds.load_image(i)) for i in range(len(ds))])
            logits = F.normalize(model.encode_image(images), dim=-1) @ classifier
        top1 = float((logits.argmax(1) == torch.as_tensor(ds.labels)).float().mean())
        assert abs(top1 - expected["overall"]["top1"]) <= 0.001, folder


def test_package_install_ships_the_assets(tmp_path):
    """`pip install .` (not editable) into a fresh folder carries every asset."""
    import shutil

    source = tmp_path / "src"  # build from a copy: setuptools leaves build/ and *.egg-info behind
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "demo-out",
                                                                "__pycache__", ".pytest_cache", ".ruff_cache"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-compile",
                    "-q", "--target", str(target), str(source)], check=True, capture_output=True)
    for needed in ("ccup_cli/assets/ccup-tiny-fashion/open_clip_model.safetensors",
                   "ccup_cli/assets/ccup-tiny-fashion-domains/open_clip_model.safetensors",
                   "ccup_cli/assets/model_configs/ccup-tiny-fashion-domains.json",
                   "ccup_cli/assets/ccup-tiny-fashion/open_clip_config.json",
                   "ccup_cli/assets/ccup-tiny-fashion/MODEL_CARD.md",
                   "ccup_cli/assets/model_configs/ccup-tiny-fashion.json",
                   "ccup_cli/assets/fashion-mnist-mini/fashion-mnist-mini.npz",
                   "ccup_cli/assets/fashion-mnist-mini/LICENSE",
                   "ccup_cli/presets/classnames.json"):
        assert (target / needed).is_file(), needed
    shipped = (target / "ccup_cli/assets/ccup-tiny-fashion/open_clip_model.safetensors").read_bytes()
    assert shipped == (EMBEDDED_DIR / "open_clip_model.safetensors").read_bytes()
