"""scripts/train_tiny_clip.py --domains: caption templates per domain, and a smoke run on a tiny slice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
sys.path.insert(0, str(SCRIPTS))


def test_domain_captions_name_their_domain_and_hold_templates_out():
    import train_tiny_clip as train

    from ccup_cli.methods.prompt_sides import load_domains

    per_domain = train.domain_train_templates()
    assert set(per_domain) == {"photo", "sketch", "silhouette"}
    assert not [t for t in per_domain["photo"] if "sketch" in t or "drawing" in t]
    assert all("sketch" in t or "drawing" in t or "doodle" in t for t in per_domain["sketch"])
    for domain, heldout in train.DOMAIN_HELDOUT_TEMPLATES.items():
        assert not set(heldout) & set(per_domain[domain])
    for domain, templates in load_domains("fashion-mnist-domains").items():  # ccup's sides use trained phrasings
        assert set(templates) <= set(per_domain[domain])
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[:, 8:20, 8:20] = 200
    rendered = train.render_all(images, ("photo", "sketch", "silhouette"))
    assert rendered.shape == (3, 2, 28, 28) and rendered[2, 0, 0, 0] == 255 and rendered[0, 0, 0, 0] == 0


def test_a_caption_naming_a_domain_is_a_negative_for_its_class_elsewhere():
    import torch
    import train_tiny_clip as train

    labels = torch.tensor([0, 0, 0, 1])  # images (and their captions, in the same order)
    image_domain = torch.tensor([0, 1, 1, 1])  # photo, sketch, sketch, sketch
    caption_slot = torch.tensor([0, 1, 3, 1])  # "a photo of a ..", "a sketch of a ..", neutral, "a sketch of a .."
    expected = torch.tensor([[1, 0, 1, 0],   # photo class 0: its photo caption and the neutral one
                             [0, 1, 1, 0],   # sketch class 0: the sketch and neutral captions of class 0
                             [0, 1, 1, 0],
                             [0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(train.positive_pairs(labels, image_domain, caption_slot, 3), expected)


@pytest.mark.embedded
@pytest.mark.skipif(not (FASHION_ROOT / "train-images-idx3-ubyte.gz").exists()
                    and not (FASHION_ROOT / "train-images-idx3-ubyte").exists(), reason="no Debian fashion-mnist")
def test_domain_training_smoke_run(tmp_path):
    cmd = [sys.executable, str(SCRIPTS / "train_tiny_clip.py"), "--domains", "--max-steps", "1", "--train-limit", "32",
           "--test-limit", "20", "--eval-templates", "1", "--batch-size", "16", "--epochs", "1", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    log = json.loads((tmp_path / "ccup-tiny-fashion-domains" / "training_log.json").read_text())
    assert log["model"] == "ccup-tiny-fashion-domains" and log["steps"] == 1
    assert set(log["test_top1_by_domain"]) == {"photo", "sketch", "silhouette"}
    assert (tmp_path / "model_configs" / "ccup-tiny-fashion-domains.json").is_file()
