"""Reference images for ccup: the reference-chance sink and erase: probe (issue 29)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

from ccup_cli.backends.fold import FoldSite, NoOffsetSite, fold_affine, identity_map, offset_carrier, project
from ccup_cli.cli import app
from ccup_cli.data.reference_images import MIN_REFERENCE_IMAGES, resolve_reference_images
from ccup_cli.errors import SpecError
from ccup_cli.methods.erasure import fit_erasure
from ccup_cli.methods.references import calibration_for
from ccup_cli.methods.sinks import reference_chance_targets
from ccup_cli.spec.schema import build_spec

runner = CliRunner()
REFS = Path(__file__).resolve().parents[1] / "assets" / "fashion-mnist-train-refs.npz"  # 150 *train* images


def _unlearn(*args):
    return runner.invoke(app, ["unlearn", "-q", "--workers", "0", *[str(a) for a in args]])


def _write_refs(folder: Path, n: int = 150, nested: bool = True) -> Path:
    """The shipped Fashion-MNIST train images as PNGs, half of them one folder down (found recursively)."""
    from PIL import Image

    with np.load(REFS) as z:
        images = z["images"][:n]
    for i, im in enumerate(images):
        where = folder / "batch-b" if nested and i % 2 else folder
        where.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(where / f"{i:03d}.png")
    return folder


# --- the spec: nothing changes without references ------------------------------------------------

def test_a_spec_without_references_records_and_hashes_as_before():
    spec = build_spec({}, {"forget": "sandal,sneaker"})
    assert "reference_images" not in spec.record() and "erase" not in spec.record()
    assert "reference_images" not in spec.to_yaml() and spec.sink == "retain-mean-orthogonal"
    # the sha256 main's 0.3 spec had for exactly this spec (written into model.safetensors' metadata)
    assert spec.sha256() == "72914a7c262e97dff6764852453c6f9ebb9f1a3e354904b7539aa7b4c051ef5e"
    with_refs = build_spec({}, {"forget": "sandal", "reference_images": "refs"})
    assert with_refs.sink == "reference-chance" and with_refs.record()["reference_images"] == "refs"
    named = build_spec({}, {"forget": "sandal", "reference_images": "refs", "sink": "zero"})
    assert named.sink == "zero"  # a sink the user names is kept


@pytest.mark.parametrize("overrides, message", [
    ({"erase": "probe"}, "erase: probe is fitted on unlabelled reference images; pass --reference-images DIR"),
    ({"sink": "reference-chance"}, "sink: reference-chance calibrates on unlabelled reference images"),
    ({"reference_images": "r", "erase": "probe", "alpha": "auto", "max_forget_acc": 0.1},
     "erase: probe with alpha: auto is not supported"),
    ({"reference_images": "r", "erase": "probe", "fold": "text"}, "erase: probe erases from image features"),
    ({"reference_images": "r", "method": "nullspace"}, "reference_images: method nullspace does not read them"),
    ({"erase": "leace"}, "erase: Input should be 'none' or 'probe'"),
])
def test_what_needs_references_says_so(overrides, message):
    with pytest.raises(SpecError) as err:
        build_spec({}, {"forget": "sandal", **overrides})
    assert message in err.value.one_line()


# --- bad reference folders: one line, exit 2, nothing written ------------------------------------

def test_reference_folders_are_checked(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="holds no images"):
        resolve_reference_images(str(tmp_path / "empty"))
    with pytest.raises(SpecError, match="is not a folder"):
        resolve_reference_images(str(tmp_path / "missing"))
    few = _write_refs(tmp_path / "few", n=MIN_REFERENCE_IMAGES - 1, nested=False)
    with pytest.raises(SpecError, match=f"holds {MIN_REFERENCE_IMAGES - 1} images, too few"):
        resolve_reference_images(str(few))
    good = _write_refs(tmp_path / "good", n=60)
    assert resolve_reference_images(str(good)) == {"deployment": good}
    (good / "batch-b" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(SpecError) as err:
        resolve_reference_images(str(good))
    assert "1 of 61 images" in err.value.one_line() and "batch-b/broken.png" in err.value.one_line()


@pytest.mark.embedded
@pytest.mark.parametrize("case", ["empty", "few", "unreadable"])
def test_bad_reference_images_exit_2_in_one_line_and_write_nothing(tmp_path, case):
    refs = tmp_path / "refs"
    if case == "empty":
        refs.mkdir()
    else:
        _write_refs(refs, n=10 if case == "few" else 60)
    if case == "unreadable":
        (refs / "x.jpg").write_bytes(b"\xff\xd8 truncated")
    result = _unlearn("--forget", "sandal", "--reference-images", refs, "--erase", "probe", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "reference_images:" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# --- the calibration and the erasure on a toy -----------------------------------------------------

def test_the_sink_bisection_lands_the_class_at_the_target_auc_on_the_references():
    """A toy where the map's own-direction share moves class 0's scores along its query."""
    torch.manual_seed(0)
    d, n = 6, 400
    labels = torch.randint(0, 3, (n,))
    eye = torch.eye(d, dtype=torch.float64)
    feats = eye[labels] + 0.4 * torch.randn(n, d, dtype=torch.float64)
    classifier = eye[:3].clone()
    classifier[0, 1] = 1.0  # class 0's query also reads e_1, so its AUC moves smoothly with γ
    calibration = calibration_for(feats, labels, classifier, [0], ["a", "b", "c"])
    calibration.classifier, calibration.target_auc = None, 0.5  # no top-1 guard in this toy

    def solve(targets):  # W sends e_0 to targets[0]: the class's own share is γ
        W = eye.clone()
        W[:, 0] = targets[0]
        return W

    base = torch.zeros(1, d, dtype=torch.float64)
    base[0, 1] = 0.5
    targets = reference_chance_targets(eye[:1], 1, base, solve, calibration, directions=eye[:1])
    assert float(calibration.read(solve(targets))["auc"][0]) == pytest.approx(0.5, abs=0.02)
    gamma = float(calibration.chosen["gamma"][0])
    assert torch.allclose(targets, base + gamma * eye[:1])
    calibration.target_auc = 0.35
    reference_chance_targets(eye[:1], 1, base, solve, calibration, directions=eye[:1])
    assert float(calibration.chosen["gamma"][0]) < gamma


def _spread_toy(n=3000, seed=0):
    """Class 0 stands out by 1.0 along e_0 with a wide spread, and by 0.3 along e_1 with a narrow one;
    classes 1-3 differ from each other on e_2 and e_3; everyone reads 3 on e_4."""
    torch.manual_seed(seed)
    d = 5
    eye = torch.eye(d, dtype=torch.float64)
    labels = torch.randint(0, 4, (n,))
    centres = torch.stack([eye[0] + 0.3 * eye[1], eye[2], -eye[2], eye[3]]) + 3 * eye[4]
    spread = torch.tensor([0.3, 0.02, 0.3, 0.3, 0.3], dtype=torch.float64)
    feats = centres[labels] + spread * torch.randn(n, d, dtype=torch.float64)
    mine = labels.eq(0)
    feats[mine, 0] += 0.9 * torch.randn(int(mine.sum()), dtype=torch.float64)
    return feats, labels, eye


def test_the_references_own_direction_separates_the_class_most_for_its_spread():
    """The sink moves a class along the direction where its mean stands out most against the
    references' within-class spread (a Fisher ratio), not along its wide own query, so it moves as a
    band instead of dragging a top tail along."""
    feats, labels, eye = _spread_toy()
    calibration = calibration_for(feats, labels, eye[:4], [0], ["a", "b", "c", "d"])
    x = F.normalize(feats, dim=-1)
    delta = x[labels.eq(0)].mean(0) - x[labels.ne(0)].mean(0)
    within = sum(torch.cov((x[labels.eq(c)]).T, correction=0) * float(labels.eq(c).double().mean()) for c in range(4))

    def fisher(u):
        return float((delta @ u) ** 2 / (u @ within @ u))

    u = calibration.directions()[0]
    assert float(u.norm()) == pytest.approx(1.0)
    assert fisher(u) > 1.5 * fisher(F.normalize(delta, dim=0)) and fisher(u) > 1.5 * fisher(eye[0])


def _absent_toy(seed: int, d: int = 8, n: int = 800):
    """``(features [n, d], labels, text [5, d])``: five classes whose image means sit on their text
    queries; the references hold no image of class 0."""
    torch.manual_seed(seed)
    text = F.normalize(torch.eye(d, dtype=torch.float64)[:5] + 0.3, dim=-1)
    labels = torch.randint(1, 5, (n,))
    return text[labels] + 0.05 * torch.randn(n, d, dtype=torch.float64), labels, text


def test_a_class_the_references_lack_is_calibrated_on_stand_ins_placed_by_the_text():
    """Image means sit on the text queries; the references hold no image of class 0."""
    d = 8
    feats, labels, text = _absent_toy(seed=2)
    n = len(feats)
    calibration = calibration_for(feats, labels, text, [0], list("abcde"))
    assert not bool(calibration.present()[0]) and int(calibration.positives()[0]) == 0
    estimate = calibration.estimated_mean(0)
    assert float(F.cosine_similarity(estimate, text[0], dim=0)) > 0.95
    pool, rel = calibration.pool()
    assert int(rel[0, :n].sum()) == 0 and int(rel[0, n:].sum()) == len(pool) - n
    # the stand-ins are one present class's references, moved: as many as it has
    assert len(pool) - n in calibration.pseudo_labels.bincount()[1:].tolist()
    moved = F.normalize(pool[n:], dim=-1).mean(0)
    assert float(F.cosine_similarity(moved, text[0], dim=0)) > 0.95
    # with the class among the references, it calibrates on its own pseudo-labelled images
    labels_with = torch.cat([labels, torch.zeros(200, dtype=torch.long)])
    feats_with = torch.cat([feats, text[0] + 0.05 * torch.randn(200, d, dtype=torch.float64)])
    with_class = calibration_for(feats_with, labels_with, text, [0], list("abcde"))
    assert bool(with_class.present()[0]) and len(with_class.pool()[0]) == len(feats_with)


def test_erase_with_an_absent_class_fits_on_the_real_references_and_reads_its_stand_ins():
    from ccup_cli.methods.references import solve_with_references

    feats, labels, text = _absent_toy(seed=4)
    n, eye = len(feats), torch.eye(feats.shape[1], dtype=torch.float64)
    calibration = calibration_for(feats, labels, text, [0], list("abcde"))

    def solve(targets):  # the forget query is sent to its target
        W = eye.clone()
        W += torch.outer(targets[0] - text[0], text[0])
        return W

    W, erasure, facts = solve_with_references(solve, text[:1], text[1:], ["{}"], calibration, erase=True)
    assert torch.isfinite(W).all() and erasure is not None and erasure.fitted_on == n
    assert facts["a"]["estimated"] and facts["a"]["calibrated_on"] == len(calibration.pool()[0]) - n


def test_the_guard_shortens_a_target_that_would_win_zero_shot():
    """At chance in search, class 0's images would still win zero-shot; a shorter target does not."""
    torch.manual_seed(3)
    d, n = 4, 900
    eye = torch.eye(d, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,))
    feats = eye[labels] + 0.1 * torch.randn(n, d, dtype=torch.float64) + 0.5 * eye[3]
    feats[labels.eq(0)] += 0.6 * eye[1]  # class 0 looks a little like class 1, its zero-shot rival
    calibration = calibration_for(feats, labels, eye[:3], [0], ["a", "b", "c"])

    def solve(targets):  # the query e_0 is sent to the target
        W = eye.clone()
        W[0] = targets[0]
        return W

    base = 1.5 * eye[3:4]  # every image reads e_3: a long target scores everyone high
    targets = reference_chance_targets(eye[:1], 1, base, solve, calibration, directions=eye[:1])
    assert float(calibration.chosen["scale"][0]) < 1.0
    assert float(calibration.own_top1(solve(targets))[0]) <= 0.005


def test_the_erasure_leaves_no_linear_trace_of_the_pseudo_labels():
    torch.manual_seed(1)
    n, d = 600, 8
    labels = torch.randint(0, 4, (n,))
    feats = torch.randn(n, d, dtype=torch.float64) + 3 * torch.eye(d, dtype=torch.float64)[labels]
    erasure = fit_erasure(feats, labels, [1], ["b"])
    erased = erasure(feats)
    mine = labels.eq(1)
    # LEACE: equal class-conditional means of the indicator, so no linear probe beats a constant
    assert torch.allclose(erased[mine].mean(0), erased[~mine].mean(0), atol=1e-8)
    assert erasure.rank == 1 and erasure.positives == {"b": int(mine.sum())}
    assert torch.allclose(erased, feats @ erasure.M.T + erasure.c)


# --- the fold of the offset ------------------------------------------------------------------------

def test_a_layernorm_carries_an_exact_offset_through_the_final_map():
    norm = torch.nn.LayerNorm(16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.4)
    model = torch.nn.Module()
    model.visual = torch.nn.Module()
    model.visual.ln_post = norm
    model.visual.proj = torch.nn.Parameter(torch.randn(16, 4))
    site = FoldSite("visual.proj", "parameter", "visual.proj", None, 16, 4)
    g = offset_carrier(model, site)
    x = norm(torch.randn(50, 16)).double()
    assert torch.allclose(x @ g, torch.ones(50, dtype=torch.float64), atol=1e-5)
    W, c = torch.randn(4, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    tensors = {"visual.proj": model.visual.proj.detach().double()}
    folded = fold_affine(site, tensors, W, c, g)
    assert list(folded) == ["visual.proj"]
    expected = project(site, tensors, x).double() @ W.T + c
    assert torch.allclose(project(site, folded, x).double(), expected, atol=1e-4)
    # a Linear site with a bias takes the offset there
    lin = FoldSite("head", "linear", "head.weight", "head.bias", 16, 4)
    lt = {"head.weight": torch.randn(4, 16, dtype=torch.float64), "head.bias": torch.randn(4, dtype=torch.float64)}
    out = fold_affine(lin, lt, W, c, None)
    assert torch.allclose(project(lin, out, x).double(), project(lin, lt, x).double() @ W.T + c, atol=1e-6)
    with torch.no_grad():
        norm.bias.zero_()  # Σβ/γ = 0: nothing to carry a constant
    with pytest.raises(NoOffsetSite, match="bias too close to zero"):
        offset_carrier(model, site)
    with pytest.raises(NoOffsetSite, match="no bias and no LayerNorm"):
        offset_carrier(model, FoldSite("visual.head", "parameter", "visual.head", None, 16, 4))


@pytest.mark.embedded
def test_erase_probe_folds_into_the_final_map_alone_and_plain_open_clip_reloads_it(tmp_path):
    import open_clip

    from ccup_cli.backends.open_clip import load_model

    refs = _write_refs(tmp_path / "refs")
    out = tmp_path / "out"
    result = _unlearn("--forget", "sandal,sneaker", "--reference-images", refs, "--erase", "probe", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    ri = report["reference_images"]
    assert ri["count"] == 150 and report["projector"]["params"]["sink"] == "reference-chance"
    assert set(ri["sink"]["per_class"]) == {"sandal", "sneaker"} and ri["erase"]["rank"] == 2
    assert sum(ri["pseudo_labels"].values()) == 150
    original = load_model()
    before = {k: v for k, v in original.model.state_dict().items()}
    after = load_file(str(out / "model.safetensors"))
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["visual.proj"]  # the offset rides on the LayerNorm's mean-free output: no other tensor
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    model.eval()
    with np.load(REFS) as z:
        images = z["images"][:8]
    from PIL import Image

    px = torch.stack([preprocess(Image.fromarray(im)) for im in images])
    site = original.site
    with torch.no_grad(), identity_map(original.model, site):
        pooled = original.model.encode_image(px).double()  # the features before the final map
    with torch.no_grad():
        got = model.encode_image(px).double()
        y = original.model.encode_image(px).double()
    # plain open_clip computes the written map on the LayerNorm's output, and that output reads the
    # constant 1 the offset rides on
    assert torch.allclose(pooled @ after["visual.proj"].double(), got, atol=1e-4)
    assert torch.allclose(pooled @ offset_carrier(original.model, site), torch.ones(8, dtype=torch.float64), atol=1e-4)
    assert F.cosine_similarity(got, y).min() < 0.999  # the map did change the features


@pytest.mark.embedded
def test_references_without_the_class_calibrate_it_on_stand_ins_and_the_report_says_so(tmp_path):
    from PIL import Image

    with np.load(REFS) as z:
        images, labels = z["images"], z["labels"]
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in np.flatnonzero(labels != 8):  # no bag among them (the labels pick the folder, never the run)
        Image.fromarray(images[i]).save(refs / f"{i:03d}.png")
    out = tmp_path / "out"
    result = _unlearn("--forget", "bag", "--reference-images", refs, "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    fact = report["reference_images"]["sink"]["per_class"]["bag"]
    assert fact["estimated"] is True and fact["pseudo_labelled"] < 5 and fact["calibrated_on"] >= 5
    assert report["metrics"]["after"]["forget"]["top1"] <= 0.01  # the estimate does not undo the forgetting


@pytest.mark.embedded
def test_a_tower_whose_layernorm_cannot_carry_the_offset_says_so(tmp_path, tiny_vit_file):
    refs = _write_refs(tmp_path / "refs")
    result = _unlearn("--model", "ccup-test-vit", "--pretrained", tiny_vit_file, "--forget", "cat",
                      "--retain", "dog,bird", "--reference-images", refs, "--erase", "probe", "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert "erase: probe cannot be folded into this tower" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_the_audit_page_says_how_many_references_the_unlearning_read_and_what_they_set():
    from ccup_cli.audit.page import references_section

    assert references_section({}) == []
    refs = {"count": 500, "sink": {"per_class": {"sandal": {"gamma": 0.21, "scale": 1.0, "pseudo_labelled": 51,
                                                            "auc": 0.45, "bottom_share": 0.04, "base_rate": 0.1,
                                                            "estimated": False, "calibrated_on": 51}}},
            "erase": {"method": "LEACE", "rank": 1, "fitted_on": 500}}
    page = "\n".join(references_section({"reference_images": refs}))
    assert "## Reference images used by the unlearning: 500" in page
    assert "| sandal | 0.210 (1.0) | 51 | its references | 0.45 | 0.04 (0.10) |" in page
    assert "rank 1, fitted on 500 references" in page and "estimated" not in page
    refs["sink"]["per_class"]["sandal"].update(estimated=True, calibrated_on=180, pseudo_labelled=2, scale=0.8)
    rare = "\n".join(references_section({"reference_images": refs}))
    assert "| sandal | 0.210 (0.8) | 2 | 180 stand-ins (estimated) |" in rare and "is an estimate" in rare
    beside = "\n".join(references_section({"reference_images": refs,
                                           "reference": {"rows": [
                                               {"key": "search_auc", "subject": "sandal", "reference": 0.52},
                                               {"key": "search_p_at_10", "subject": "sandal", "reference": 0.9}]}}))
    assert "retrained reference AUC" in beside and "| 0.52 |" in beside
