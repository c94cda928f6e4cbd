"""Domain forgetting: renderings, domain datasets, prompt sides, per-domain metrics, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ccup_cli.cli import app
from ccup_cli.data import domains
from ccup_cli.data.dataset import EvalDataset
from ccup_cli.data.datasets import open_dataset
from ccup_cli.data.domain_data import is_domain_folder
from ccup_cli.errors import SpecError
from ccup_cli.methods.prompt_sides import build_sides, embed_side, load_domains
from ccup_cli.metrics.domains import cell_grid, domain_aware_metrics
from ccup_cli.spec.schema import build_spec

from ..conftest import TINY_VIT, make_image_folder

runner = CliRunner()
TABLE = {"photo": ["a photo of a {}."], "sketch": ["a sketch of a {}.", "a drawing of a {}."]}


def _ring() -> np.ndarray:
    image = np.zeros((12, 12), dtype=np.uint8)
    image[2:10, 2:10] = 200
    image[5:7, 5:7] = 0  # a hole: filled in the silhouette
    return image


def test_renderings_are_deterministic_and_distinct():
    image = _ring()
    assert np.array_equal(domains.photo(image), image)
    sil = domains.silhouette(image)
    assert sil[5, 5] == 0 and sil[0, 0] == 255 and (sil == 0).sum() == 64  # the hole is filled
    sketch = domains.sketch(image)
    assert sketch[0, 0] == 255 and sketch[5, 2] < 128 and np.array_equal(sketch, domains.sketch(image))
    assert sketch[3, 5] == 255  # flat inside: no stroke


def test_mini_domain_dataset_is_the_mini_subset_drawn_three_ways():
    mini, ds = open_dataset("fashion-mnist-mini"), open_dataset("fashion-mnist-domains-mini")
    n = len(mini)
    assert len(ds) == 3 * n and ds.domain_names == ["photo", "sketch", "silhouette"]
    assert np.array_equal(ds.labels[n:2 * n], mini.labels) and set(ds.domains[2 * n:]) == {2}
    assert np.array_equal(np.asarray(ds.load_image(n + 7)), domains.sketch(np.asarray(mini.load_image(7))))
    limited = ds.limit_per_class(2)
    assert len(limited) == 2 * 10 * 3 and limited.domains is not None


def test_domain_folder_layout_is_read_with_the_right_labels(tmp_path):
    make_image_folder(tmp_path / "pacs" / "cartoon", ["dog", "horse"], per_class=2, size=8)
    make_image_folder(tmp_path / "pacs" / "sketch", ["dog", "guitar"], per_class=1, size=8)
    root = tmp_path / "pacs"
    assert is_domain_folder(root) and not is_domain_folder(tmp_path / "pacs" / "cartoon")
    ds = open_dataset(str(root))
    assert ds.classnames == ["dog", "guitar", "horse"] and ds.domain_names == ["cartoon", "sketch"]
    got = sorted((item.split("/")[0], ds.classnames[label], ds.domain_names[dom])
                 for item, label, dom in zip(ds.item_ids, ds.labels, ds.domains))
    assert got == [("cartoon", "dog", "cartoon")] * 2 + [("cartoon", "horse", "cartoon")] * 2 + \
        [("sketch", "dog", "sketch"), ("sketch", "guitar", "sketch")]
    plain = make_image_folder(tmp_path / "plain", ["a", "b"], per_class=1, size=8)
    assert open_dataset(str(plain)).domains is None


def test_domain_sides_follow_the_issue():
    forget, retain = build_sides(["sandal"], ["bag"], [], [], ["sandal", "bag"], TABLE, ["sketch"])
    assert forget.prompts == ["a sketch of a sandal.", "a drawing of a sandal."]
    assert retain.labels == ["sandal in photo", "bag in photo", "bag in sketch"]
    assert retain.prompts == ["a photo of a sandal.", "a photo of a bag.", "a sketch of a bag.", "a drawing of a bag."]
    whole, rest = build_sides([], ["sandal", "bag"], [], [], ["sandal", "bag"], TABLE, ["sketch"],
                              forget_prompts=["Acme logo"], retain_prompts=["a photo of Acme shoes"])
    assert whole.labels == ["sandal in sketch", "bag in sketch", "Acme logo"]
    assert rest.labels == ["sandal in photo", "bag in photo", "a photo of Acme shoes"]
    plain, _ = build_sides(["cat"], ["dog"], ["a {}."], ["the {}."])
    assert plain.prompts == ["a cat."]
    with pytest.raises(SpecError, match="forget side is empty"):
        build_sides([], ["dog"], ["a {}."], ["the {}."])


def test_sides_are_embedded_prompt_by_prompt_with_group_means():
    forget_side, retain_side = build_sides(["sandal"], ["bag"], [], [], ["sandal", "bag"], TABLE, ["sketch"])
    vectors = {p: torch.randn(8, generator=torch.Generator().manual_seed(i))
               for i, p in enumerate(forget_side.prompts + retain_side.prompts)}
    seen = []

    def encode(prompts):
        seen.append(list(prompts))
        return torch.stack([vectors[p] for p in prompts]), False

    forget = embed_side(encode, forget_side)
    retain = embed_side(encode, retain_side)
    assert seen == [forget_side.prompts, retain_side.prompts]
    expected = F.normalize(torch.stack([vectors["a sketch of a sandal."], vectors["a drawing of a sandal."]]), dim=-1)
    assert torch.allclose(forget.per_template, expected)
    assert torch.allclose(forget.per_class[0], F.normalize(expected.mean(0), dim=0))
    assert retain.classnames == ["sandal in photo", "bag in photo", "bag in sketch"]
    assert torch.allclose(retain.per_class[0], F.normalize(vectors["a photo of a sandal."], dim=0))


def _generated_domain_dataset():
    # 2 classes x 2 domains, 2 images per cell; features chosen so predictions are known
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    doms = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    ds = EvalDataset("gen", "test", ["cat", "dog"], labels, [str(i) for i in range(8)], lambda i: None, "",
                     doms, ["photo", "sketch"])
    classifier = torch.eye(2)
    predicted = [0, 1, 1, 1, 1, 1, 0, 1]  # photo: cat 1/2, dog 2/2; sketch: cat 0/2, dog 1/2
    feats = torch.stack([classifier[p] for p in predicted]).float()
    return ds, classifier, feats


def test_per_domain_metrics_agree_with_hand_counts():
    ds, classifier, feats = _generated_domain_dataset()
    m = domain_aware_metrics(feats, classifier, ds, ["cat"], ["sketch"])
    assert m["forget"]["n"] == 2 and m["forget"]["top1"] == 0.0  # cat in sketch
    assert m["retain"]["n"] == 6 and m["retain"]["top1"] == pytest.approx(4 / 6)
    assert m["retain_only"]["n"] == 4 and m["retain_only"]["top1"] == 1.0  # dog only, one candidate
    assert m["overall"]["top1"] == pytest.approx(4 / 8)
    assert m["domains"]["photo"]["overall"]["top1"] == pytest.approx(3 / 4)
    assert m["domains"]["photo"]["forget"]["n"] == 0
    assert m["domains"]["sketch"]["forget"]["n"] == 2
    assert m["domains"]["sketch"]["overall"]["per_class"] == {"cat": 0.0, "dog": 0.5}
    assert cell_grid(m, ["cat"]) == {"cat": {"photo": 0.5, "sketch": 0.0}}
    whole = domain_aware_metrics(feats, classifier, ds, ["cat", "dog"], ["sketch"])
    assert whole["forget"]["n"] == 4 and whole["forget"]["top1"] == pytest.approx(1 / 4)


def test_domain_preset_and_files(tmp_path):
    assert set(load_domains("fashion-mnist-domains")) == {"photo", "sketch", "silhouette"}
    empty = tmp_path / "d.yaml"
    empty.write_text("photo: []\nsketch: ['a sketch of a {}.']\n")
    with pytest.raises(SpecError, match=r"domains.photo: .* no templates"):
        load_domains(str(empty))


def test_spec_accepts_domains_without_forget_classes():
    spec = build_spec({"forget_domains": "sketch"}, {})
    assert spec.forget_domains == ["sketch"] and spec.forget == []
    with pytest.raises(SpecError, match="forget: the list is empty"):
        build_spec({}, {})


def _unlearn(*args):
    return runner.invoke(app, ["unlearn", "-q", "--workers", "0", *[str(a) for a in args]])


@pytest.mark.parametrize("args, message", [
    (["--forget", "sandal", "--forget-domains", "skecth"],
     'forget_domains[0]: unknown domain "skecth"; did you mean "sketch"'),
    (["--forget", "sandal", "--forget-domains", "sketch", "--domains", "{bad}"],
     'error: domains: "{bad}" is neither a domain preset nor a file'),
    (["--forget", "sandal", "--forget-domains", "sketch", "--eval", "fashion-mnist-mini", "--domains", "fashion-mnist-domains"], "has no domains"),
])
def test_bad_domain_input_exits_2(args, message, tmp_path):
    result = _unlearn(*args, "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_domain_file_without_templates_and_empty_sides_exit_2(tmp_path):
    file = tmp_path / "domains.yaml"
    file.write_text("photo: []\n")
    result = _unlearn("--forget", "sandal", "--domains", file)
    assert result.exit_code == 2 and "no templates" in result.output
    spec = tmp_path / "spec.yaml"
    spec.write_text("forget_prompts: ['']\n")
    result = _unlearn(spec)
    assert result.exit_code == 2 and "forget_prompts[0]: empty entry" in result.output


def test_unlearn_in_one_domain_reports_domain_metrics(tiny_vit_file, tmp_path):
    folder = tmp_path / "dom"
    for d in ("photo", "sketch"):
        make_image_folder(folder / d, ["sandal", "bag", "coat"], per_class=2, size=16)
    table = tmp_path / "domains.yaml"
    table.write_text("photo: ['a photo of a {}.']\nsketch: ['a sketch of a {}.']\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model: {TINY_VIT}\npretrained: {tiny_vit_file}\nforget: [sandal]\nforget_domains: [sketch]\n"
                    f"domains: {table}\neval: {folder}\nforget_prompts: ['sandal sketch']\n")
    result = runner.invoke(app, ["unlearn", str(spec), "--json", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(result.stdout)
    after = report["metrics"]["after"]
    assert set(after["domains"]) == {"photo", "sketch"}
    assert after["forget"]["n"] == 2 and after["domains"]["photo"]["forget"]["n"] == 0
    assert report["text"]["forget_groups"] == ["sandal in sketch", "sandal sketch"]
    assert report["text"]["forget_prompts"] == 2 and report["text"]["retain_prompts"] == 1 + 2 * 2


def test_sweep_takes_forget_domains_and_finetune_refuses_them(tiny_vit_file, tmp_path):
    folder = tmp_path / "dom"
    for d in ("photo", "sketch"):
        make_image_folder(folder / d, ["sandal", "bag"], per_class=2, size=16)
    table = tmp_path / "domains.yaml"
    table.write_text("photo: ['a photo of a {}.']\nsketch: ['a sketch of a {}.']\n")
    common = ["--model", TINY_VIT, "--pretrained", tiny_vit_file, "--eval", folder, "--domains", table,
              "--forget", "sandal", "--forget-domains", "sketch", "--workers", "0", "--device", "cpu"]
    result = runner.invoke(app, ["sweep", *map(str, common), "--alphas", "0,1", "--methods", "ccup",
                                 "--out", str(tmp_path / "sweep"), "-q"])
    assert result.exit_code == 0, result.output
    import json

    rows = [json.loads(line) for line in (tmp_path / "sweep" / "sweep.jsonl").read_text().splitlines()]
    assert [r["metrics"]["forget"]["n"] for r in rows] == [2, 2]  # sandal in sketch only, not 4
    assert "domains" in rows[0]["metrics"]
    result = _unlearn(*common, "--method", "finetune")
    assert result.exit_code == 2 and "method: finetune" in result.output
