"""``ccup eval``, datasets, metrics, and before/after from one pass over the images."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ccup_cli.cli import app
from ccup_cli.data.datasets import open_dataset
from ccup_cli.errors import DatasetError
from ccup_cli.metrics.zero_shot import zero_shot_metrics

from ..conftest import FASHION, TINY_VIT, make_image_folder

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def eval_json(*args) -> dict:
    result = run("eval", "--json", "--templates", "photo", *args)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


@pytest.fixture()
def model_args(tiny_vit_file):
    return ["--model", TINY_VIT, "--pretrained", tiny_vit_file]


def write_idx(path, array: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = b"\0\0" + bytes([codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.fixture(scope="module")
def fake_idx_root(tmp_path_factory):
    """A torchvision-style root (raw/ with gzipped idx files), 4 test images per class."""
    root = tmp_path_factory.mktemp("idx-root")
    (root / "raw").mkdir()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10, dtype=np.uint8), 4)
    write_idx(root / "raw" / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (40, 28, 28), dtype=np.uint8))
    write_idx(root / "raw" / "t10k-labels-idx1-ubyte.gz", labels)
    return root


# --- datasets --------------------------------------------------------------------------------


def test_image_folder_counts_and_classnames_file(tmp_path):
    root = make_image_folder(tmp_path / "ds", ["a_cls", "b_cls", "c_cls"], per_class=2)
    (root / "c_cls" / "extra.png").write_bytes((root / "c_cls" / "0.png").read_bytes())
    (root / "classnames.txt").write_text("a_cls\tapple\nb_cls\tbanana\nc_cls\tcherry\n")
    ds = open_dataset(str(root))
    assert ds.classnames == ["apple", "banana", "cherry"]
    assert ds.counts() == {"apple": 2, "banana": 2, "cherry": 3}
    assert ds.load_image(0).size == (40, 40)


def test_idx_root_as_torchvision_lays_it_out(fake_idx_root):
    ds = open_dataset("fashion-mnist", data_root=str(fake_idx_root))
    assert ds.classnames == FASHION
    assert ds.counts() == {c: 4 for c in FASHION}
    assert ds.load_image(3).mode == "L"


def test_eval_limit_is_stratified_and_seeded(fake_idx_root):
    a = open_dataset("fashion-mnist", data_root=str(fake_idx_root), limit=2)
    b = open_dataset("fashion-mnist", data_root=str(fake_idx_root), limit=2)
    assert a.counts() == {c: 2 for c in FASHION}
    assert a.item_ids == b.item_ids


def test_debian_fashion_mnist_files_read_as_they_lie():
    import os

    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("dataset-fashion-mnist is not installed")
    ds = open_dataset("fashion-mnist", data_root="/usr/share/datasets/fashion-mnist")
    assert len(ds) == 10_000
    assert set(ds.counts().values()) == {1000}


@pytest.mark.parametrize("setup, words", [
    ("missing", "does not exist"),
    ("no_classes", "no class sub-folders"),
    ("no_images", "holds no images"),
])
def test_missing_or_empty_folders_are_clear_errors(tmp_path, model_args, setup, words):
    root = tmp_path / "ds"
    if setup != "missing":
        root.mkdir()
    if setup == "no_images":
        (root / "cat").mkdir()
    result = run("eval", *model_args, "--eval", root)
    assert result.exit_code == 2
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_named_dataset_without_files_never_downloads_unasked(tmp_path, model_args):
    result = run("eval", *model_args, "--eval", "cifar10", "--data-root", tmp_path)
    assert result.exit_code == 2
    assert "--download" in result.stderr
    assert list(tmp_path.iterdir()) == []
    result = run("eval", *model_args, "--eval", "fashion-mnist", "--data-root", tmp_path)
    assert result.exit_code == 2
    assert "idx files" in result.stderr


def test_unknown_forget_class_is_named_with_close_matches(model_args, fashion_folder):
    result = run("eval", *model_args, "--eval", fashion_folder, "--forget", "sneakers")
    assert result.exit_code == 2
    assert '"sneakers" is not a class of' in result.stderr
    assert '"sneaker"' in result.stderr


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_on_a_known_example():
    classes = ["a", "b", "c"]
    text = torch.eye(3)
    # image 0,1 of class a (0 right, 1 predicted b); image 2 of class b right; image 3 of class c right
    feats = torch.tensor([[1.0, 0, 0], [0.1, 1, 0], [0, 1, 0], [0, 0, 1]])
    m = zero_shot_metrics(feats, text, np.array([0, 0, 1, 2]), classes, forget=["a"])
    assert m["forget"]["top1"] == 0.5
    assert m["forget"]["top5"] is None  # fewer than 5 classes
    assert m["forget"]["mean_true_class_rank"] == 1.5
    assert m["retain"]["top1"] == 1.0
    assert m["retain"]["per_class"] == {"b": 1.0, "c": 1.0}
    assert m["overall"]["top1"] == 0.75
    assert m["overall"]["mean_per_class_recall"] == pytest.approx((0.5 + 1 + 1) / 3)
    # retain_only: candidates are b and c only
    feats2 = torch.tensor([[1.0, 0.5, 0], [1.0, 0, 0.5]])
    m2 = zero_shot_metrics(feats2, text, np.array([1, 2]), classes, forget=["a"])
    assert m2["retain"]["top1"] == 0.0 and m2["retain_only"]["top1"] == 1.0


def test_agrees_with_an_independent_zero_shot_implementation(tiny_models, tiny_vit_file, fashion_folder):
    """open_clip's own classifier builder and encode_image, with the same transform and templates."""
    import open_clip
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    report = eval_json("--model", TINY_VIT, "--pretrained", tiny_vit_file, "--eval", fashion_folder, "--no-cache")
    model, _, transform = open_clip.create_model_and_transforms(TINY_VIT, pretrained=str(tiny_vit_file))
    model.eval()
    ds = open_dataset(str(fashion_folder))
    with torch.no_grad():
        classifier = build_zero_shot_classifier(model, open_clip.get_tokenizer(TINY_VIT), ds.classnames,
                                                [lambda c: f"a photo of a {c}."], 5, "cpu", use_tqdm=False)
        images = torch.stack([transform(ds.load_image(i)) for i in range(len(ds))])
        logits = 100 * F.normalize(model.encode_image(images), dim=-1) @ classifier
    top1 = float((logits.argmax(1) == torch.as_tensor(ds.labels)).float().mean())
    assert abs(report["metrics"]["before"]["overall"]["top1"] - top1) <= 0.001


def test_mean_true_class_prob_is_the_softmax_of_the_true_class_over_forget_images():
    """Three forget images of "a" at moderate angles, so that the probabilities are far from 0 and 1."""
    classes = ["a", "b", "c"]
    text = torch.eye(3)
    feats = torch.tensor([[1.0, 0.99, 0.0], [1.0, 1.01, 0.97], [0.5, 0.0, 0.52], [0.0, 1.0, 0.0]])
    labels = np.array([0, 0, 0, 1])
    m = zero_shot_metrics(feats, text, labels, classes, forget=["a"])
    logits = 100 * feats.double() / feats.double().norm(dim=1, keepdim=True)  # text is the identity
    probs = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
    expected = float(probs[:3, 0].mean())
    assert 0.2 < expected < 0.6  # a figure that can be wrong in either direction
    assert m["forget"]["mean_true_class_prob"] == pytest.approx(expected, rel=1e-6)
    assert m["forget"]["mean_true_class_rank"] == pytest.approx((1 + 2 + 2) / 3)
    none = zero_shot_metrics(feats[3:], text, labels[3:], classes, forget=["a"])  # no forget image
    assert none["forget"]["mean_true_class_prob"] is None


# --- one pass, caches, thresholds ------------------------------------------------------------


def test_feature_cache_path_equals_slow_path(model_args, fashion_folder):
    slow = eval_json(*model_args, "--eval", fashion_folder, "--no-cache")
    first = eval_json(*model_args, "--eval", fashion_folder)
    second = eval_json(*model_args, "--eval", fashion_folder)
    assert second["dataset"]["feature_cache_hit"] is True
    assert slow["dataset"]["feature_cache_hit"] is False
    assert slow["metrics"] == first["metrics"] == second["metrics"]


def test_patched_model_evaluated_from_scratch_matches_metrics_after(model_args, fashion_folder, tmp_path):
    out = tmp_path / "out"
    result = run("unlearn", *model_args, "--eval", fashion_folder, "--forget", "sandal,sneaker",
                 "--templates", "photo", "--retain-templates", "photo", "--out", out, "--json", "--no-cache")
    assert result.exit_code == 0, result.output
    after = json.loads(result.stdout)["metrics"]["after"]
    scratch = eval_json("--model", TINY_VIT, "--pretrained", out / "model.safetensors", "--eval", fashion_folder,
                        "--forget", "sandal,sneaker", "--no-cache")
    assert scratch["metrics"]["before"] == after
    folder = eval_json("--pretrained", out, "--eval", fashion_folder, "--forget", "sandal,sneaker", "--no-cache")
    assert folder["metrics"]["before"] == after
    bare_file = eval_json("--pretrained", out / "model.safetensors", "--eval", fashion_folder, "--forget",
                          "sandal,sneaker")  # no --model: the config beside the file says what it is
    assert bare_file["metrics"]["before"] == after
    local_dir = eval_json("--model", f"local-dir:{out}", "--eval", fashion_folder, "--forget", "sandal,sneaker")
    assert local_dir["metrics"]["before"] == after
    assert local_dir["preprocess_cfg"] == folder["preprocess_cfg"]


def test_thresholds_exit_codes(model_args, fashion_folder, tmp_path):
    """Each threshold just above / just below the measured figure: exit 0; just on the wrong side: exit 1.
    Messages are in %, like the tables; one line says when every threshold held."""
    per_class = eval_json(*model_args, "--eval", fashion_folder)["metrics"]["before"]["overall"]["per_class"]
    recognised = max(per_class, key=per_class.get)  # a class this random model gets right, to forget
    args = ["eval", *model_args, "--eval", fashion_folder, "--templates", "photo", "--forget", recognised]
    measured = eval_json(*args[1:])["metrics"]["before"]
    forget_top1, retain_top1 = measured["forget"]["top1"], measured["retain"]["top1"]
    assert forget_top1 > 0 and retain_top1 > 0  # both thresholds can be missed from below
    ok = run(*args, "--max-forget-acc", forget_top1, "--min-retain-acc", retain_top1)
    assert ok.exit_code == 0, ok.output
    assert "threshold failed" not in ok.stderr
    # one model: its column is labelled for what it is, and one line says every threshold held, in %
    assert "this model" in ok.stdout and "before" not in ok.stdout
    held = [line for line in ok.stdout.splitlines() if line.startswith("every threshold held: ")]
    assert held == [f"every threshold held: forget top-1 {100 * forget_top1:.1f} % ≤ {100 * forget_top1:.1f} %; "
                    f"retain top-1 {100 * retain_top1:.1f} % ≥ {100 * retain_top1:.1f} %"], ok.stdout
    lower = round(forget_top1 - 0.05, 4)
    failed = run(*args, "--max-forget-acc", lower, "--min-retain-acc", retain_top1,
                 "--out", tmp_path / "forget.json", "-q")
    assert failed.exit_code == 1, failed.output
    assert (f"forget top-1 {100 * forget_top1:.1f} % is above --max-forget-acc {100 * lower:.1f} % "
            f"by {100 * (forget_top1 - lower):.1f} points" in failed.stderr), failed.stderr
    assert "below --min-retain-acc" not in failed.stderr  # only the threshold that failed is named
    report = json.loads((tmp_path / "forget.json").read_text())
    assert report["thresholds"]["passed"] is False
    failed = run(*args, "--min-retain-acc", 1.0, "--out", tmp_path / "r.json", "-q")
    assert failed.exit_code == 1
    assert (f"retain top-1 {100 * retain_top1:.1f} % is below --min-retain-acc 100.0 % "
            f"by {100 * (1 - retain_top1):.1f} points" in failed.stderr), failed.stderr
    assert "above --max-forget-acc" not in failed.stderr and "every threshold held" not in failed.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["thresholds"]["passed"] is False
    assert "after" not in report["metrics"] and "delta" not in report["metrics"]


@pytest.mark.parametrize("flag", ["--max-forget-acc", "--min-retain-acc"])
def test_threshold_outside_unit_interval_is_bad_input(model_args, fashion_folder, flag):
    result = run("eval", *model_args, "--eval", fashion_folder, "--forget", "bag", flag, "5")
    assert result.exit_code == 2
    assert "outside [0, 1]" in result.stderr


def test_report_fields_and_per_class_counts(model_args, fashion_folder):
    report = eval_json(*model_args, "--eval", fashion_folder, "--forget", "bag")
    ds = report["dataset"]
    assert ds["images_per_class"] == {c: 3 for c in FASHION}
    assert len(ds["file_list_sha256"]) == 64
    before = report["metrics"]["before"]
    for split in ("forget", "retain", "retain_only", "overall"):
        assert set(before[split]) >= {"top1", "top5", "mean_per_class_recall", "per_class"}
    assert before["forget"]["n"] == 3 and before["retain"]["n"] == 27
    assert list(before["forget"]["per_class"]) == ["bag"]


def test_fewer_than_five_classes_give_null_top5(model_args, tmp_path):
    root = make_image_folder(tmp_path / "ds", ["cat", "dog", "car"], per_class=2)
    report = eval_json(*model_args, "--eval", root)
    assert report["metrics"]["before"]["overall"]["top5"] is None


def test_dataset_errors_are_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset"):
        open_dataset("cifar-10")


def test_classnames_file_renames_a_named_dataset(model_args, fake_idx_root, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"garment {i}" for i in range(10)) + "\n")
    report = eval_json(*model_args, "--eval", "fashion-mnist", "--data-root", fake_idx_root, "--classnames", names,
                       "--forget", "garment 3")
    assert report["dataset"]["images_per_class"]["garment 3"] == 4
    assert list(report["metrics"]["before"]["forget"]["per_class"]) == ["garment 3"]
    names.write_text("only\ntwo\n")
    result = run("eval", *model_args, "--eval", "fashion-mnist", "--data-root", fake_idx_root, "--classnames", names)
    assert result.exit_code == 2
    assert "has 2 class names but the dataset has 10 classes" in result.stderr


def test_random_init_models_are_never_cached(tiny_vit_file, fashion_folder, tmp_path, monkeypatch):
    """--pretrained none writes nothing to the cache; the same run on a checkpoint file does (the cache works)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CCUP_CACHE_DIR", str(cache))
    args = ["--model", TINY_VIT, "--eval", fashion_folder, "--forget", "bag"]
    random_init = eval_json(*args, "--pretrained", "none")
    assert random_init["model"]["pretrained"] is None and random_init["dataset"]["feature_cache_hit"] is False
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
    again = eval_json(*args, "--pretrained", "none")
    assert again["dataset"]["feature_cache_hit"] is False
    eval_json(*args, "--pretrained", tiny_vit_file)
    assert any(p.is_file() for p in cache.rglob("*"))
