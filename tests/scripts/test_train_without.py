"""scripts/train_tiny_clip.py --without: a reference model that never saw the classes, and says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
sys.path.insert(0, str(SCRIPTS))
HAS_FASHION = (FASHION_ROOT / "train-images-idx3-ubyte.gz").exists() or (FASHION_ROOT / "train-images-idx3-ubyte").exists()


def test_no_training_caption_names_a_left_out_class_or_its_synonyms():
    import train_tiny_clip as train

    from ccup_cli.text.templates import build_prompts

    for without in (["sandal", "sneaker"], ["shirt", "t-shirt"], ["bag"], ["shirt"]):
        banned = train.left_out_names(without)
        assert set(without) <= set(banned) and "beach sandal" in train.left_out_names(["sandal"])
        train_syn, heldout, dropped = train.synonym_tables(without)
        assert not set(train_syn) & set(without)
        captions = [p for c in train_syn for p in build_prompts(train_syn[c], train.train_templates())]
        assert captions and not [p for p in captions if train.names_phrase(p, banned)]
        assert all(train_syn[c][0] == c for c in train_syn)  # the class name itself still trains (half the captions)
    # a retained synonym that names a left-out class is dropped, and "t-shirt" does not name "shirt"
    assert train.synonym_tables(["shirt"])[2] == {"t-shirt": ["tee shirt", "t shirt"]}
    assert not train.names_phrase("a photo of a t-shirt.", ["shirt"]) and train.names_phrase("a tee shirt", ["shirt"])
    # nothing left out: exactly the shipped recipe's synonyms
    assert train.synonym_tables([])[0] == {c: s[0] for c, s in train.SYNONYMS.items()}


def test_without_an_unknown_class_exits_2_in_one_line():
    done = subprocess.run([sys.executable, str(SCRIPTS / "train_tiny_clip.py"), "--without", "sandl"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--without: sandl is not a Fashion-MNIST class" in done.stderr


@pytest.mark.embedded
@pytest.mark.skipif(not HAS_FASHION, reason="no Debian fashion-mnist")
def test_two_step_without_run_writes_a_reference_with_its_card(tmp_path):
    import open_clip

    cmd = [sys.executable, str(SCRIPTS / "train_tiny_clip.py"), "--without", "sandal,sneaker", "--max-steps", "2",
           "--train-limit", "64", "--test-limit", "40", "--eval-templates", "1", "--batch-size", "16",
           "--epochs", "1", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    name = "ccup-tiny-fashion-without-sandal-sneaker"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no registry entry: never over the shipped model
    folder = tmp_path / name
    log = json.loads((folder / "training_log.json").read_text())
    assert log["model"] == name and log["steps"] == 2 and log["without"] == ["sandal", "sneaker"]
    assert log["train_images_per_class"]["sandal"] == 0 and log["train_images_per_class"]["sneaker"] == 0
    assert sum(log["train_images_per_class"].values()) == 64
    assert log["left_out"]["train_images_removed"] > 10000  # ~5,500 per class in the 55,000-image split
    assert "tennis shoe" in log["left_out"]["names"] and "strappy sandal" in log["left_out"]["names"]
    assert set(log["test_top1_per_class_openai_templates"]) <= set(log["train_images_per_class"])
    card = (folder / "MODEL_CARD.md").read_text()
    assert "never\nshown sandal or sneaker" in card or "never shown sandal or sneaker" in card.replace("\n", " ")
    assert "tennis shoe" in card and "| sandal |" in card and "left out" in card
    # it loads with the plain library, offline
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    assert model.visual.proj.shape[1] == 64
