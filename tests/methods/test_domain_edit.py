"""domain-edit: the rank-one logit edit read off unlabelled reference images (issue 24)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ccup_cli.cli import app
from ccup_cli.data.reference_images import parse_domain_images, resolve_domain_images
from ccup_cli.errors import SpecError
from ccup_cli.methods.domain_edit import DEFAULT_MARGIN, domain_edit_map, read_direction
from ccup_cli.spec.schema import build_spec, check_sweep

from ..conftest import make_image_folder

runner = CliRunner()
REFS = Path(__file__).resolve().parents[1] / "assets" / "fashion-mnist-train-refs.npz"  # 150 Fashion-MNIST *train* images
DOMAINS = ["photo", "sketch", "silhouette"]


# --- the map on a hand-built additive toy ------------------------------------------------------

def _toy(n_classes=3, n_domains=2, d=8):
    """x = (e_class + e_(n_classes + domain)) / √2: class and domain exactly additive, every cell one point."""
    eye = torch.eye(d, dtype=torch.float64)
    classes = eye[:n_classes]
    feats, labels, doms = [], [], []
    for k in range(n_domains):
        for c in range(n_classes):
            feats.append((eye[c] + eye[n_classes + k]) / math.sqrt(2))
            labels.append(c)
            doms.append(k)
    return classes, torch.stack(feats), torch.tensor(labels), torch.tensor(doms)


def test_the_edit_lowers_exactly_the_forget_class_in_the_forgotten_domain():
    classes, x, labels, doms = _toy()
    refs = {"photo": x[doms == 0], "sketch": x[doms == 1]}
    edit = domain_edit_map(classes, [1], refs, ["sketch"], ridge=1e-10)
    before, after = x @ classes.T, (x @ edit.W.T) @ classes.T
    # the exact answer: the forget class's logit falls by β on sketches and nothing else moves
    expected = before.clone()
    expected[doms == 1, 1] -= edit.strength
    assert torch.allclose(after, expected, atol=1e-6)
    # β: every reference's top-1 − top-2 gap is 1/√2 and vᵀx = 1 on sketches, so β = margin/√2
    assert edit.strength == pytest.approx(DEFAULT_MARGIN / math.sqrt(2), rel=1e-6)
    assert edit.mode == "lower" and edit.read_on_references["photo"][0] == pytest.approx(0, abs=1e-6)
    pred = after.argmax(1)
    assert bool((pred[(doms == 1) & (labels == 1)] != 1).all())  # the forgotten cell
    assert bool((pred[~((doms == 1) & (labels == 1))] == labels[~((doms == 1) & (labels == 1))]).all())
    assert torch.linalg.matrix_rank(edit.W - torch.eye(8, dtype=torch.float64)) == 1


def test_a_whole_domain_is_sent_to_one_class_and_the_other_domain_keeps_its_own():
    classes, x, labels, doms = _toy(n_classes=4, n_domains=3, d=10)
    refs = {d: x[doms == k] for k, d in enumerate(["photo", "sketch", "silhouette"])}
    edit = domain_edit_map(classes, [0, 1, 2, 3], refs, ["sketch"], ridge=1e-10)
    pred = ((x @ edit.W.T) @ classes.T).argmax(1)
    assert edit.mode == "collapse" and edit.target_class is not None
    assert bool((pred[doms == 1] == edit.target_class).all())
    assert bool((pred[doms != 1] == labels[doms != 1]).all())


def test_the_read_direction_weighs_each_domain_the_same():
    classes, x, labels, doms = _toy()
    many = torch.cat([x[doms == 0]] * 5 + [x[doms == 1]])  # five times as many photos
    many_doms = torch.cat([doms[doms == 0]] * 5 + [doms[doms == 1]])
    v_many = read_direction(many, many_doms == 1, many_doms, 1e-3)
    v_once = read_direction(x, doms == 1, doms, 1e-3)
    assert torch.allclose(v_many, v_once, atol=1e-9)
    with pytest.raises(ValueError, match="of the forgotten domain and of another"):
        read_direction(x, torch.ones(len(x), dtype=torch.bool), doms, 1e-3)


def test_real_features_need_not_be_normalised_and_a_kept_domain_is_required():
    classes, x, labels, doms = _toy()
    edit = domain_edit_map(classes, [1], {"photo": 3 * x[doms == 0], "sketch": 0.5 * x[doms == 1]}, ["sketch"],
                           ridge=1e-10)
    assert edit.strength == pytest.approx(DEFAULT_MARGIN / math.sqrt(2), rel=1e-6)
    with pytest.raises(ValueError, match="at least one kept domain"):
        domain_edit_map(classes, [1], {"sketch": x[doms == 1]}, ["sketch"])


# --- the reference-image input and its exits --------------------------------------------------

def _folders(root: Path, domains=DOMAINS, per_domain=2) -> dict[str, Path]:
    out = {}
    for d in domains:
        make_image_folder(root / d, ["any"], per_class=per_domain, size=16)  # a sub-folder: ignored as a label
        out[d] = root / d
    return out


def test_domain_images_flag_form_and_one_root_folder(tmp_path):
    assert parse_domain_images("sketch=a, photo=b/c") == {"sketch": "a", "photo": "b/c"}
    assert parse_domain_images("root") == "root"
    folders = _folders(tmp_path / "refs")
    spec = build_spec({"forget": "sandal", "forget_domains": "sketch", "method": "domain-edit",
                       "domain_images": ",".join(f"{d}={p}" for d, p in folders.items())}, {})
    assert spec.domain_images == {d: str(p) for d, p in folders.items()}
    assert resolve_domain_images(str(tmp_path / "refs"), DOMAINS) == folders
    assert resolve_domain_images({d: str(p) for d, p in folders.items()}, DOMAINS) == folders


def test_bad_domain_images_are_every_one_reported(tmp_path):
    folders = _folders(tmp_path / "refs", ["photo", "sketch"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError) as err:
        resolve_domain_images({"photo": str(folders["photo"]), "skecth": str(folders["sketch"]),
                               "sketch": str(tmp_path / "empty")}, DOMAINS)
    lines = err.value.one_line()
    assert 'domain_images.skecth: "skecth" is not a domain of the domain table; did you mean "sketch"?' in lines
    assert f"domain_images.sketch: folder {tmp_path / 'empty'} holds no images" in lines
    assert "domain_images.silhouette: no images for domain silhouette" in lines
    with pytest.raises(SpecError, match="not a folder"):
        resolve_domain_images(str(tmp_path / "missing"), DOMAINS)


def _unlearn(*args):
    return runner.invoke(app, ["unlearn", "-q", "--workers", "0", *[str(a) for a in args]])


@pytest.mark.parametrize("extra, message", [
    (["--method", "domain-edit"], "domain_images: method domain-edit needs a few unlabelled images of every domain"),
    (["--domain-images", "{refs}"], "domain_images: method ccup reads no reference images"),
    (["--method", "domain-edit", "--domain-images", "photo={refs}/photo,sketch={refs}/sketch"],
     "domain_images.silhouette: no images for domain silhouette"),
    (["--method", "domain-edit", "--domain-images", "{refs}/photo"], "not a domain of the domain table"),
    (["--method", "domain-edit", "--domain-images", "photo={refs}/photo,sketch={refs}/sketch,"
      "silhouette={refs}/none"], "domain_images.silhouette: folder"),
])
def test_bad_reference_input_exits_2_in_one_line_before_any_model_loads(tmp_path, extra, message):
    _folders(tmp_path / "refs")
    args = [a.replace("{refs}", str(tmp_path / "refs")) for a in extra]
    result = _unlearn("--model", "ccup-tiny-fashion-domains", "--forget", "sandal", "--forget-domains", "sketch",
                      *args, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_domain_edit_is_not_swept():
    with pytest.raises(SpecError, match="reads reference images and is not swept"):
        check_sweep([0.0, 1.0], ["domain-edit"])


# --- a domain forget on the embedded domain model ----------------------------------------------

def _shipped_reference_folders(root: Path, exclude: tuple[int, ...] = ()) -> dict[str, Path]:
    """The shipped Fashion-MNIST *train* images (none is in the mini test subset), 50 a domain, rendered."""
    from PIL import Image

    from ccup_cli.data.domains import render

    with np.load(REFS) as z:
        images, labels = z["images"], z["labels"]
    out = {}
    for k, d in enumerate(DOMAINS):
        folder = root / d
        folder.mkdir(parents=True)
        for i in range(50 * k, 50 * (k + 1)):
            if int(labels[i]) not in exclude:
                Image.fromarray(render(images[i], d)).save(folder / f"{i:03d}.png")
        out[d] = folder
    return out


@pytest.mark.embedded
@pytest.mark.xdist_group("domain-mini")  # one worker encodes the 6,000 domain images once (its feature cache)
@pytest.mark.parametrize("exclude, cell_bound", [((), 0.10), ((5,), 0.25)], ids=["any-class", "no-sandal"])
def test_domain_edit_forgets_sandal_in_sketch_on_the_mini_set(tmp_path, exclude, cell_bound):
    # about 50 references a domain; without a single sandal among them the label-free strength is
    # set by the other classes' margins and falls short of the sandals' (bench_domains: the curve)
    from ccup_cli.jobs.unlearn import run_unlearn
    from ccup_cli.run.options import RunOptions

    folders = _shipped_reference_folders(tmp_path / "refs", exclude)
    spec = build_spec({"model": "ccup-tiny-fashion-domains", "forget": ["sandal"], "forget_domains": ["sketch"],
                       "method": "domain-edit", "domain_images": {d: str(p) for d, p in folders.items()}}, {})
    report = run_unlearn(spec, RunOptions(device="cpu", workers=0, out=tmp_path / "out"))
    assert report["dataset"]["name"] == "fashion-mnist-domains-mini"
    grid = {(d, when): report["metrics"][when]["domains"][d]["overall"]["per_class"]
            for d in DOMAINS for when in ("before", "after")}
    assert grid[("sketch", "before")]["sandal"] > 0.8 and grid[("sketch", "after")]["sandal"] <= cell_bound
    for d in ("photo", "silhouette"):  # the same class elsewhere: within 4 points (200 images a cell)
        assert grid[(d, "after")]["sandal"] >= grid[(d, "before")]["sandal"] - 0.04
    for c in grid[("sketch", "before")]:  # other sketch classes keep theirs
        if c != "sandal":
            assert grid[("sketch", "after")][c] >= grid[("sketch", "before")][c] - 0.02
    record = report["domain_images"]["domains"]
    assert {d: record[d]["count"] for d in DOMAINS} == {d: len(list(folders[d].glob("*.png"))) for d in DOMAINS}
    assert all(len(record[d]["file_list_sha256"]) == 64 for d in DOMAINS)
    assert report["domain_images"]["edit"]["mode"] == "lower"
    assert json.loads((tmp_path / "out" / "report.json").read_text())["domain_images"]["domains"] == record
    if exclude:
        return
    # the audit of a domain forget reports the class x domain grid before and after
    from ccup_cli.jobs.audit import AuditRequest, run_audit

    audit = run_audit(AuditRequest(patched=str(tmp_path / "out"), probe_shots=[]), RunOptions(device="cpu", workers=0))
    assert audit["domain_grid"]["forget_domains"] == ["sketch"]
    assert audit["domain_grid"]["before"]["grid"]["sandal"]["sketch"] == grid[("sketch", "before")]["sandal"]
    assert audit["domain_grid"]["after"]["grid"]["sandal"]["sketch"] == pytest.approx(grid[("sketch", "after")]["sandal"])
    assert audit["domain_grid"]["after"]["grid"]["sandal"]["photo"] == pytest.approx(grid[("photo", "after")]["sandal"])


@pytest.mark.embedded
@pytest.mark.xdist_group("domain-mini")
def test_domain_edit_forgets_the_whole_sketch_domain_on_the_mini_set(tmp_path):
    from ccup_cli.jobs.unlearn import run_unlearn
    from ccup_cli.run.options import RunOptions

    folders = _shipped_reference_folders(tmp_path / "refs")
    spec = build_spec({"model": "ccup-tiny-fashion-domains", "forget_domains": ["sketch"], "method": "domain-edit",
                       "domain_images": {d: str(p) for d, p in folders.items()}}, {})
    report = run_unlearn(spec, RunOptions(device="cpu", workers=0, out=tmp_path / "out"))
    before, after = report["metrics"]["before"]["domains"], report["metrics"]["after"]["domains"]
    assert report["domain_images"]["edit"]["mode"] == "collapse"
    assert before["sketch"]["overall"]["top1"] > 0.8 and after["sketch"]["overall"]["top1"] <= 0.12
    for d in ("photo", "silhouette"):
        assert after[d]["overall"]["top1"] >= before[d]["overall"]["top1"] - 0.02
    # its audit: every class counts as forgotten in sketch, and the grid shows the collapse
    from ccup_cli.jobs.audit import AuditRequest, run_audit

    audit = run_audit(AuditRequest(patched=str(tmp_path / "out"), probe_shots=[]), RunOptions(device="cpu", workers=0))
    grid = audit["domain_grid"]
    assert len(grid["forget"]) == 10 and grid["forget_domains"] == ["sketch"]
    assert grid["after"]["domain_top1"]["sketch"] == pytest.approx(after["sketch"]["overall"]["top1"])
    assert grid["after"]["forgotten_cells_top1"] == pytest.approx(report["metrics"]["after"]["forget"]["top1"])
    target = report["domain_images"]["edit"]["target_class"]
    assert grid["after"]["grid"][target]["sketch"] >= 0.9  # every sketch goes to the one class


def test_the_library_takes_reference_features_and_moves_only_the_forget_logit(tiny_models):
    import open_clip

    import ccup_cli
    from ccup_cli.text.encode import class_embeddings, encode_prompts
    from ccup_cli.text.templates import build_prompts

    torch.manual_seed(3)
    model, tokenizer = open_clip.create_model("ccup-test-vit", pretrained=None).eval(), \
        open_clip.get_tokenizer("ccup-test-vit")
    table = {"photo": ["a photo of a {}."], "sketch": ["a sketch of a {}."]}
    with torch.no_grad():
        refs = {d: model.encode_image(torch.randn(6, 3, 32, 32) + shift) for d, shift in (("photo", 0), ("sketch", 2))}
    result = ccup_cli.unlearn(model, tokenizer, forget=["sandal"], retain=["bag", "coat"], domains=table,
                              forget_domains=["sketch"], method="domain-edit", templates="photo",
                              reference_features=refs)
    assert result.projector.method == "domain-edit" and result.projector.rank == 1
    classes = ["sandal", "bag", "coat"]
    from ccup_cli.text.templates import load_templates

    templates = load_templates("photo")
    with torch.no_grad():
        heads = class_embeddings(encode_prompts(model, tokenizer, build_prompts(classes, templates)), 3,
                                 len(templates)).double()
    moved = heads @ (result.W - torch.eye(result.W.shape[0], dtype=torch.float64))  # row k: t_kᵀ (W − I)
    assert moved[0].norm() > 1e-3  # the forget class's logit moves ...
    assert torch.allclose(moved[1:], torch.zeros_like(moved[1:]), atol=1e-8)  # ... and no other
    with pytest.raises(ValueError, match="give domain_images"):
        ccup_cli.unlearn(model, tokenizer, forget=["sandal"], retain=["bag"], domains=table,
                         forget_domains=["sketch"], method="domain-edit")
