#!/usr/bin/env python3
"""Domain-specific forgetting (issue 14): the issue's measurements on a domain test set.

    python scripts/bench_domains.py [--model ccup-tiny-fashion-domains] [--pretrained PATH]
                                    [--methods ccup,ccup-proto] [--eval fashion-mnist-domains]
                                    [--eval-limit N] [--sweep 1e-5,...] [--write-doc]

Every case runs through the ``ccup unlearn`` job (``unlearn_job.run_unlearn``) at α = 1 with
the ``fashion-mnist-domains`` domain templates, for each method side by side (text-only
``ccup`` and ``ccup-proto``, which adds synthetic image prototypes); image features are cached,
so the images are encoded once. Cases: sandal in sketch; shirt,t-shirt in silhouette; the
whole sketch domain; class-level forgetting of the same classes (every domain) for comparison;
a trade-off sweep over λ_identity for sandal in sketch; and a diagnostic of why a text-only
map misses (how far the forgotten cell lies in the span of the kept cells). Each row is checked against the issue's targets:
forgotten cells ≤ 0.05 top-1; the same classes in other domains and the other classes in the
same domain drop ≤ 2 points; retain_only drops ≤ 1 point; a forgotten domain at or below
chance (0.10) while the other domains drop ≤ 2 points.

The default ``ccup-tiny-fashion`` was trained without domain captions, so on it these figures
show what a domain-blind model gives; the embedded ``ccup-tiny-fashion-domains``
(``scripts/train_tiny_clip.py --domains``) is what the targets are for.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from ccup_cli.jobs.unlearn import run_unlearn  # noqa: E402
from ccup_cli.run.options import RunOptions  # noqa: E402
from ccup_cli.spec.schema import build_spec  # noqa: E402

CASES = [  # (label, forget classes, forget domains)
    ("sandal in sketch", ["sandal"], ["sketch"]),
    ("shirt,t-shirt in silhouette", ["shirt", "t-shirt"], ["silhouette"]),
    ("the whole sketch domain", [], ["sketch"]),
    ("class-level: sandal, every domain", ["sandal"], []),
    ("class-level: shirt,t-shirt, every domain", ["shirt", "t-shirt"], []),
]
SWEEP_LAMBDA_IDENTITY = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]


def write_reference_folders(out: str | Path, per_domain: int, seed: int = 0, exclude: tuple[str, ...] = (),
                            data_root: str | None = None) -> dict[str, Path]:
    """Reference images for ``domain-edit``: ``per_domain`` Fashion-MNIST *train* images per domain,
    rendered in that domain, as PNGs under ``out/<domain>/`` (no labels in the layout).

    Each domain draws its own base images (disjoint across domains, as a user's sketches and
    photos would be), seeded; ``exclude`` leaves out images of those classes.
    """
    import numpy as np
    from PIL import Image

    from ccup_cli.data.datasets import open_dataset
    from ccup_cli.data.domains import DOMAIN_NAMES, render

    train = open_dataset("fashion-mnist", data_root, "train")
    drop = [train.classnames.index(c) for c in exclude]
    pool = np.random.default_rng(seed).permutation(np.flatnonzero(~np.isin(train.labels, drop)))
    folders = {}
    for k, domain in enumerate(DOMAIN_NAMES):
        folder = Path(out) / domain
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        for i in pool[k * per_domain:(k + 1) * per_domain]:
            photo = np.asarray(train.load_image(int(i)).convert("L"))
            Image.fromarray(render(photo, domain)).save(folder / f"train-{int(i):05d}.png")
        folders[domain] = folder
    return folders


def _top1(metrics: dict, domain: str, cls: str) -> float | None:
    return metrics["domains"][domain]["overall"]["per_class"].get(cls)


def cell_figures(report: dict, forget: list[str], forget_domains: list[str]) -> dict:
    """The issue's figures from one report, in top-1 fractions and points (×100)."""
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    domains = list(before["domains"])
    classnames = list(before["overall"]["per_class"])
    targets = forget or classnames
    forgotten = forget_domains or domains
    kept = [d for d in domains if d not in forgotten]
    drop = lambda d, c: 100 * ((_top1(after, d, c) or 0) - (_top1(before, d, c) or 0))  # noqa: E731
    out = {
        "forgotten_cells_before": before["forget"]["top1"], "forgotten_cells_after": after["forget"]["top1"],
        "same_class_other_domains_worst_pt": min((drop(d, c) for d in kept for c in targets), default=None),
        "same_domain_other_classes_worst_pt": min((drop(d, c) for d in forgotten for c in classnames
                                                   if c not in targets), default=None),
        "retain_only_pt": None if after["retain_only"]["top1"] is None else
        100 * (after["retain_only"]["top1"] - before["retain_only"]["top1"]),
        "domain_top1_after": {d: after["domains"][d]["overall"]["top1"] for d in domains},
        "domain_top1_before": {d: before["domains"][d]["overall"]["top1"] for d in domains},
    }
    if not forget:  # a whole domain: its top-1, and the other domains' drops
        out["kept_domain_worst_pt"] = min((100 * (out["domain_top1_after"][d] - out["domain_top1_before"][d])
                                           for d in kept), default=None)
    return out


def meets_targets(fig: dict, whole_domain: bool) -> bool:
    if whole_domain:
        worst = fig["kept_domain_worst_pt"]
        return fig["forgotten_cells_after"] <= 0.10 and (worst is None or worst >= -2)
    checks = [fig["forgotten_cells_after"] <= 0.05]
    for key, floor in (("same_class_other_domains_worst_pt", -2), ("same_domain_other_classes_worst_pt", -2),
                       ("retain_only_pt", -1)):
        if fig[key] is not None:
            checks.append(fig[key] >= floor)
    return all(checks)


def run_case(base: dict, forget: list[str], forget_domains: list[str], options: RunOptions, **extra) -> dict:
    fields = {**base, "forget": forget, "forget_domains": forget_domains, "domains": "fashion-mnist-domains",
              **extra}
    spec = build_spec({k: v for k, v in fields.items() if v is not None}, {})
    report = run_unlearn(spec, options)
    return cell_figures(report, forget, forget_domains)


def _f(v, points=False) -> str:
    if v is None:
        return "–"
    return f"{v:+.1f}" if points else f"{v:.3f}"


def additivity(base: dict, options: RunOptions) -> list[str]:
    """Why a text-only map misses: how additive the class and domain parts are (sandal in sketch).

    Two-way fit over the (class, domain) cells, x_cd ≈ x_c· + x_·d − x_··, on the text side
    (group means of the domain prompts) and on the image side (mean image feature of each cell,
    through the original model). The interaction share is the part of the cell's own domain shift
    x_cd − x_c· that the domain's average shift does not explain. Near 0: "sandal in sketch" is
    sandal + sketch, and a map that removes it from the text side alone removes sandal or sketch
    everywhere.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ccup_cli.backends.fold import project
    from ccup_cli.run.door import admit
    from ccup_cli.run.provenance import PhaseTimer
    from ccup_cli.run.session import open_session

    spec = build_spec({k: v for k, v in {**base, "forget": ["sandal"], "forget_domains": ["sketch"],
                                          "domains": "fashion-mnist-domains"}.items() if v is not None}, {})
    timer = PhaseTimer()
    plan = admit(spec, options, timer, need_eval=True)
    session = open_session(plan.spec.model, plan.spec.pretrained, options, "cpu", timer)
    forget_emb, retain_emb = session.embed_prompt_sides(*plan.sides)
    ds = plan.dataset
    pre, _ = session.encode_images(ds)
    feats = F.normalize(project(session.site, session.original, pre), dim=-1).double()
    labels, doms = np.asarray(ds.labels), np.asarray(ds.domains)
    cells = {(c, d): F.normalize(feats[torch.as_tensor((labels == i) & (doms == k))].mean(0), dim=0)
             for i, c in enumerate(ds.classnames) for k, d in enumerate(ds.domain_names)}
    groups = dict(zip(forget_emb.classnames + retain_emb.classnames,
                      torch.cat([forget_emb.per_class, retain_emb.per_class]).double()))
    text_cells = {(c, d): groups[f"{c} in {d}"] for c in ds.classnames for d in ds.domain_names
                  if f"{c} in {d}" in groups}

    def interaction_share(table: dict, cls: str, dom: str) -> tuple[float, float]:
        classes = sorted({c for c, _ in table})
        doms = sorted({d for _, d in table})
        mean = lambda keys: torch.stack([table[k] for k in keys]).mean(0)  # noqa: E731
        grand = mean(list(table))
        cls_mean = mean([(cls, d) for d in doms])
        dom_mean = mean([(c, dom) for c in classes])
        own_shift = table[(cls, dom)] - cls_mean
        return float(own_shift.norm()), float((own_shift - (dom_mean - grand)).norm() / own_shift.norm())

    (t_shift, t_share), (i_shift, i_share) = interaction_share(text_cells, "sandal", "sketch"), \
        interaction_share(cells, "sandal", "sketch")
    return [f"Why a text-only map misses (sandal in sketch), cells as unit vectors: the cell's shift from its "
            f"class mean |x_cd − x_c·| is {t_shift:.3f} on the text side and {i_shift:.3f} on the image side; "
            f"the share of that shift the domain's average shift does not explain is {t_share:.2f} (text) and "
            f"{i_share:.2f} (images); 0 would be purely additive, class + domain."]


def case_row(label: str, fig: dict, ok) -> str:
    return (f"| {label} | {_f(fig['forgotten_cells_before'])} → {_f(fig['forgotten_cells_after'])} | "
            f"{_f(fig['same_class_other_domains_worst_pt'], True)} | "
            f"{_f(fig['same_domain_other_classes_worst_pt'], True)} | {_f(fig['retain_only_pt'], True)} | "
            f"{_f(fig.get('kept_domain_worst_pt'), True)} | {'–' if ok is None else ('yes' if ok else 'no')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--model", default=None)
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--eval", default="fashion-mnist-domains")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--eval-limit", type=int, default=None, help="images per class and domain")
    parser.add_argument("--methods", default="ccup,ccup-proto", help="closed-form methods, side by side")
    parser.add_argument("--sink", default=None, help="ccup sink (default: ccup's)")
    parser.add_argument("--sweep", default=",".join(f"{v:g}" for v in SWEEP_LAMBDA_IDENTITY),
                        help="λ_identity values of the trade-off sweep (empty: none)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument("--write-doc", action="store_true", help="write the section into docs/benchmarks.md")
    parser.add_argument("--domain-edit", action="store_true", help="method domain-edit with reference images "
                        "instead: the validation grid, the test curve over the reference count, and job rows "
                        "(its own section, bench_domain_edit)")
    parser.add_argument("--ref-counts", default=",".join(map(str, REF_COUNTS)), help="references a domain")
    parser.add_argument("--ref-draws", type=int, default=8, help="seeded reference draws per point of the curve")
    parser.add_argument("--job-draws", type=int, default=2, help="ccup unlearn runs per case (at the largest count)")
    args = parser.parse_args()
    import logging
    import time

    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "initialized randomly" precedes ccup's own load

    base = {"model": args.model, "pretrained": args.pretrained, "eval": args.eval, "data_root": args.data_root,
            "eval_limit": args.eval_limit}
    options = RunOptions(device="cpu", workers=args.workers, argv=sys.argv)
    if args.domain_edit:
        domain_edit_main(args, options)
        return
    methods = [m for m in args.methods.split(",") if m]
    diagnosis = additivity(base, options)  # first: it encodes (and caches) the images every case reuses
    print(diagnosis[0], flush=True)
    rows, lines = [], []
    lines.append("| method: forget | forgotten cells before → after | same class, other domains (worst, pt) | "
                 "same domain, other classes (worst, pt) | retain_only (pt) | other domains (worst, pt) | "
                 "targets met |")
    lines.append("|---|---|---|---|---|---|---|")
    for method in methods:
        extra = {"method": method, "sink": args.sink if method == "ccup" else None}
        for label, forget, forget_domains in CASES:
            if not forget_domains and method != methods[0]:
                continue  # class-level forgetting: the comparison row, once
            started = time.perf_counter()
            fig = run_case({**base, **extra}, forget, forget_domains, options)
            fig["seconds"] = round(time.perf_counter() - started, 1)
            ok = meets_targets(fig, whole_domain=not forget) if forget_domains else None
            rows.append({"method": method, "case": label, "forget": forget, "forget_domains": forget_domains, **fig,
                         "targets_met": ok})
            lines.append(case_row(f"{method}: {label}", fig, ok))
            print(lines[-1], flush=True)
    sweep = [float(v) for v in args.sweep.split(",") if v]
    if sweep:
        lines += ["", "Trade-off, sandal in sketch (λ_identity sweep, α = 1):", "",
                  "| method | λ_identity | forgotten cell | same class, other domains (worst, pt) | "
                  "same domain, other classes (worst, pt) |", "|---|---|---|---|---|"]
        for method in methods:
            extra = {"method": method, "sink": args.sink if method == "ccup" else None}
            for lam in sweep:
                fig = run_case({**base, **extra}, ["sandal"], ["sketch"], options, lambda_identity=lam)
                rows.append({"method": method, "case": "sweep sandal in sketch", "lambda_identity": lam, **fig})
                lines.append(f"| {method} | {lam:g} | {_f(fig['forgotten_cells_after'])} | "
                             f"{_f(fig['same_class_other_domains_worst_pt'], True)} | "
                             f"{_f(fig['same_domain_other_classes_worst_pt'], True)} |")
                print(lines[-1], flush=True)
    lines += [""] + diagnosis
    body = "\n".join(lines)
    print(body)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.write_doc:
        from benchdoc import write_section

        write_section("bench_domains", "python " + " ".join(sys.argv), body)


# --- domain-edit (issue 24): unlabelled reference images per domain ------------------------------

EDIT_CASES = [("sandal in sketch", ["sandal"], ["sketch"]), ("shirt,t-shirt in silhouette", ["shirt", "t-shirt"],
                                                               ["silhouette"]),
              ("the whole sketch domain", [], ["sketch"])]
REF_COUNTS = [20, 40, 60, 80, 100]
POOL_PER_DOMAIN = 1000  # train images a domain's reference draws come from (disjoint across domains)
VALIDATION_PER_CLASS = 100  # other train images, drawn in every domain: the validation split


def edit_features(options: RunOptions, model: str, data_root: str | None):
    """Everything the domain-edit curves need, encoded once (and cached): the test split, a pool of
    train images per domain for the reference draws, a validation split of other train images, and
    the zero-shot classifier. Features are the original model's, after its final map."""
    import numpy as np

    from ccup_cli.backends.fold import project
    from ccup_cli.data.datasets import open_dataset
    from ccup_cli.run.provenance import PhaseTimer
    from ccup_cli.run.session import open_session
    from ccup_cli.text.templates import load_templates

    session = open_session(model, None, options, "cpu", PhaseTimer())
    test = open_dataset("fashion-mnist-domains", data_root, "test")
    train = open_dataset("fashion-mnist-domains", data_root, "train")
    n = len(train) // len(train.domain_names)
    labels = np.asarray(train.labels[:n])
    perm = np.random.default_rng(0).permutation(n)
    val_base = np.concatenate([perm[labels[perm] == c][:VALIDATION_PER_CLASS] for c in range(len(train.classnames))])
    rest = np.random.default_rng(0).permutation(np.setdiff1d(perm, val_base))
    pool_idx = np.concatenate([k * n + rest[k * POOL_PER_DOMAIN:(k + 1) * POOL_PER_DOMAIN]
                               for k in range(len(train.domain_names))])
    val_idx = np.concatenate([k * n + np.sort(val_base) for k in range(len(train.domain_names))])
    out = {"classnames": test.classnames, "domains": list(test.domain_names),
           "classifier": session.classifier(test.classnames, load_templates("openai")).double()}
    for key, ds in (("test", test), ("pool", train.subset(pool_idx)), ("val", train.subset(val_idx))):
        pre, _ = session.encode_images(ds)
        out[key] = (project(session.site, session.original, pre).double(), np.asarray(ds.labels),
                    np.asarray(ds.domains))
    return out


def edit_figures(data: dict, split: str, W, forget: list[str], forget_domains: list[str]) -> dict:
    """The issue's figures for the map ``W`` on ``split`` (test or val), in fractions and points."""
    import numpy as np

    feats, labels, doms = data[split]
    classes, domains, T = data["classnames"], data["domains"], data["classifier"]
    before, after = (feats @ T.T).argmax(1).numpy(), ((feats @ W.T) @ T.T).argmax(1).numpy()
    cell = lambda pred, c, d: float((pred[(labels == c) & (doms == d)] == c).mean())  # noqa: E731
    fc = [classes.index(c) for c in forget] or list(range(len(classes)))
    fd = [domains.index(d) for d in forget_domains]
    drop = lambda c, d: 100 * (cell(after, c, d) - cell(before, c, d))  # noqa: E731
    out = {"cells_before": float(np.mean([cell(before, c, d) for c in fc for d in fd])),
           "cells_after": float(np.mean([cell(after, c, d) for c in fc for d in fd]))}
    if forget:
        kept_cells = [(c, d) for c in range(len(classes)) for d in range(len(domains)) if not (c in fc and d in fd)]
        out["same_class_pt"] = min(drop(c, d) for c in fc for d in range(len(domains)) if d not in fd)
        out["same_domain_pt"] = min(drop(c, d) for c in range(len(classes)) if c not in fc for d in fd)
        out["other_cells_pt"] = min(drop(c, d) for c, d in kept_cells)
        keep = [c for c in range(len(classes)) if c not in fc]
        rows = ~np.isin(labels, fc)
        only = lambda F_: (np.asarray(keep)[(F_[rows] @ T[keep].T).argmax(1).numpy()] == labels[rows]).mean()  # noqa: E731
        out["retain_only_pt"] = float(100 * (only(feats @ W.T) - only(feats)))
    else:
        acc = lambda pred, d: float((pred[doms == d] == labels[doms == d]).mean())  # noqa: E731
        out["domain_top1_after"] = float(np.mean([acc(after, d) for d in fd]))
        out["kept_domains_pt"] = min(100 * (acc(after, d) - acc(before, d)) for d in range(len(domains))
                                     if d not in fd)
    return out


def draw_references(data: dict, per_domain: int, seed: int, exclude: list[str]) -> dict:
    """``{domain: features}``: ``per_domain`` seeded draws from each domain's pool, without ``exclude``'s images."""
    import numpy as np
    import torch

    feats, labels, doms = data["pool"]
    drop = [data["classnames"].index(c) for c in exclude]
    rng = np.random.default_rng(seed)
    out = {}
    for k, d in enumerate(data["domains"]):
        rows = np.flatnonzero((doms == k) & ~np.isin(labels, drop))
        out[d] = feats[torch.as_tensor(np.sort(rng.permutation(rows)[:per_domain]))]
    return out


def edit_curve(data: dict, split: str, counts: list[int], draws: int, ridge: float, margin: float) -> list[dict]:
    """Mean and worst (over seeded draws) of every figure, per case, reference count, and whether the
    references hold images of the forgotten classes."""
    import numpy as np

    from ccup_cli.methods.domain_edit import domain_edit_map

    rows = []
    for label, forget, forget_domains in EDIT_CASES:
        for without in ([False, True] if forget else [False]):
            for count in counts:
                figs = []
                for seed in range(draws):
                    refs = draw_references(data, count, seed, forget if without else [])
                    ids = [data["classnames"].index(c) for c in forget] or list(range(len(data["classnames"])))
                    edit = domain_edit_map(data["classifier"], ids, refs, forget_domains, ridge, margin)
                    figs.append({**edit_figures(data, split, edit.W, forget, forget_domains), "strength": edit.strength})
                worst = {k: (max(f[k] for f in figs) if k in ("cells_after", "domain_top1_after", "strength")
                             else min(f[k] for f in figs)) for k in figs[0]}
                mean = {k: float(np.mean([f[k] for f in figs])) for k in figs[0]}
                rows.append({"case": label, "forget": forget, "forget_domains": forget_domains, "count": count,
                             "without_forget_class": without, "draws": draws, "mean": mean, "worst": worst})
    return rows


def dual_rows(data: dict, split: str, count: int, draws: int) -> list[dict]:
    """The issue's own rank-one edit, for comparison: v the dual of the reference domain means
    (vᵀμ_forgotten = 1, vᵀμ_kept = 0), β = 1, the same write directions."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ccup_cli.methods.domain_edit import write_directions

    rows = []
    for label, forget, forget_domains in EDIT_CASES[:2]:
        figs = []
        for seed in range(draws):
            refs = draw_references(data, count, seed, [])
            means = torch.stack([F.normalize(refs[d], dim=-1).mean(0) for d in data["domains"]])
            target = torch.tensor([1.0 if d in forget_domains else 0.0 for d in data["domains"]], dtype=torch.float64)
            v = torch.linalg.pinv(means) @ target
            U = write_directions(data["classifier"])[:, [data["classnames"].index(c) for c in forget]]
            W = torch.eye(len(v), dtype=torch.float64) - U.sum(1, keepdim=True) @ v[None, :]
            figs.append({**edit_figures(data, split, W, forget, forget_domains), "strength": 1.0})
        worst = {k: (max(f[k] for f in figs) if k in ("cells_after", "strength") else min(f[k] for f in figs))
                 for k in figs[0]}
        rows.append({"case": f"{label} (the issue's dual of domain means, β = 1)", "forget": forget,
                     "forget_domains": forget_domains, "count": count, "without_forget_class": False, "draws": draws,
                     "mean": {k: float(np.mean([f[k] for f in figs])) for k in figs[0]}, "worst": worst})
    return rows


def edit_targets_met(row: dict, slack: float = 0.0) -> bool:
    """The issue's targets on a curve row's *mean* over draws (``slack``: points allowed on top).

    A whole domain sent to one class sits at 0.1000 on a balanced set at best, so its top-1 is
    compared at the target's precision (three decimals)."""
    m = row["mean"]
    if not row["forget"]:
        return round(m["domain_top1_after"], 3) <= 0.10 + slack / 100 and m["kept_domains_pt"] >= -2 - slack
    return (m["cells_after"] <= 0.05 + slack / 100 and m["same_class_pt"] >= -2 - slack
            and m["same_domain_pt"] >= -2 - slack and m["other_cells_pt"] >= -2 - slack
            and m["retain_only_pt"] >= -1 - slack)


def edit_table(rows: list[dict]) -> list[str]:
    lines = ["| forget | references a domain | forget class among them | forgotten cells (mean / worst) | "
             "same class, other domains (pt) | same domain, other classes (pt) | every other cell (pt) | "
             "retain_only (pt) | other domains (pt) | strength β | targets met (mean) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    pt = lambda r, k: "–" if k not in r["mean"] else f"{r['mean'][k]:+.1f} / {r['worst'][k]:+.1f}"  # noqa: E731
    for r in rows:
        key = "cells_after" if r["forget"] else "domain_top1_after"
        slack = 1.0 if r["without_forget_class"] else 0.0
        lines.append(f"| {r['case']} | {r['count']} | {'no' if r['without_forget_class'] else 'any'} | "
                     f"{r['mean']['cells_before']:.3f} → {r['mean'][key]:.4f} / {r['worst'][key]:.4f} | "
                     f"{pt(r, 'same_class_pt')} | {pt(r, 'same_domain_pt')} | {pt(r, 'other_cells_pt')} | "
                     f"{pt(r, 'retain_only_pt')} | {pt(r, 'kept_domains_pt')} | {r['mean']['strength']:.2f} | "
                     f"{'yes' if edit_targets_met(r, slack) else 'no'} |")
    return lines


def edit_job_rows(options: RunOptions, model: str, data_root: str | None, per_domain: int, draws: int,
                  workdir: Path) -> list[str]:
    """The headline: ``ccup unlearn --method domain-edit`` itself, with PNG reference folders."""
    lines = ["| forget | references (seed) | forget class among them | forgotten cells before → after | "
             "same class, other domains (pt) | same domain, other classes (pt) | retain_only (pt) | "
             "other domains (pt) | β |", "|---|---|---|---|---|---|---|---|---|"]
    for label, forget, forget_domains in EDIT_CASES:
        for without in ([False, True] if forget else [False]):
            for seed in range(draws):
                folders = write_reference_folders(workdir / f"{seed}-{int(without)}", per_domain, seed,
                                                  tuple(forget) if without else (), data_root)
                base = {"model": model, "eval": "fashion-mnist-domains", "data_root": data_root,
                        "method": "domain-edit", "domain_images": {d: str(p) for d, p in folders.items()}}
                spec = build_spec({**base, "forget": forget, "forget_domains": forget_domains}, {})
                report = run_unlearn(spec, options)
                fig = cell_figures(report, forget, forget_domains)
                beta = report["domain_images"]["edit"]["strength"]
                lines.append(f"| {label} | {per_domain} ({seed}) | {'no' if without else 'any'} | "
                             f"{_f(fig['forgotten_cells_before'])} → {_f(fig['forgotten_cells_after'])} | "
                             f"{_f(fig['same_class_other_domains_worst_pt'], True)} | "
                             f"{_f(fig['same_domain_other_classes_worst_pt'], True)} | "
                             f"{_f(fig['retain_only_pt'], True)} | {_f(fig.get('kept_domain_worst_pt'), True)} | "
                             f"{beta:.2f} |")
                print(lines[-1], flush=True)
    return lines


def domain_edit_main(args, options: RunOptions) -> None:
    """``--domain-edit``: the method's validation grid, its test curve and the job's own rows."""
    import json as _json
    import tempfile

    from ccup_cli.methods.domain_edit import DEFAULT_MARGIN, DEFAULT_RIDGE

    model = args.model or "ccup-tiny-fashion-domains"
    data = edit_features(options, model, args.data_root)
    lines = ["`method: domain-edit` (issue 24) on the full `fashion-mnist-domains` test split (3 × 10,000 images), "
             "α = 1, reference images drawn from the Fashion-MNIST *train* split (each domain its own images).", ""]
    grid = []
    for ridge in (1e-4, 1e-3, 1e-2):
        for margin in (1.0, 1.1, 1.2, 1.5):
            rows = edit_curve(data, "val", [100], args.ref_draws, ridge, margin)
            ok = sum(edit_targets_met(r, 1.0 if r["without_forget_class"] else 0.0) for r in rows)
            cells = max(r["mean"]["cells_after" if r["forget"] else "domain_top1_after"] for r in rows)
            worst = min(min(v for k, v in r["mean"].items() if k.endswith("_pt")) for r in rows)
            grid.append({"ridge": ridge, "margin": margin, "targets_met": ok, "cases": len(rows),
                         "worst_cell_after": cells, "worst_drop_pt": worst})
            print(grid[-1], flush=True)
    lines += ["Validation split (3 × 1,000 other train images, 100 a class; 100 references a domain, mean over "
              f"{args.ref_draws} draws): the defaults λ = {DEFAULT_RIDGE:g}, margin = {DEFAULT_MARGIN:g} are the "
              "setting with the most cases on target, then the lowest forgotten cells.", "",
              "| ridge λ | margin | cases on target (of 5) | worst forgotten cells / domain top-1 | worst drop (pt) |",
              "|---|---|---|---|---|"]
    best = max(grid, key=lambda g: (g["targets_met"], -g["worst_cell_after"], g["worst_drop_pt"]))
    lines += [f"| {g['ridge']:g} | {g['margin']:g} | {g['targets_met']} | {g['worst_cell_after']:.3f} | "
              f"{g['worst_drop_pt']:+.1f} |{' ← chosen' if g is best else ''}" for g in grid]
    if (best["ridge"], best["margin"]) != (DEFAULT_RIDGE, DEFAULT_MARGIN):
        lines += ["", f"**The validation split now picks λ = {best['ridge']:g}, margin = {best['margin']:g}, not the "
                  "shipped defaults**: update domain_edit.py."]
    curve = edit_curve(data, "test", [int(c) for c in args.ref_counts.split(",")], args.ref_draws, DEFAULT_RIDGE,
                       DEFAULT_MARGIN)
    curve += dual_rows(data, "test", max(int(c) for c in args.ref_counts.split(",")), args.ref_draws)
    lines += ["", f"Test split, the curve over the reference count (mean / worst of {args.ref_draws} seeded draws; "
              "drops are the worst cell of each group, in points; \"no\": the references hold no image of the "
              "forgotten classes, whose targets allow 1 point more):", ""] + edit_table(curve)
    with tempfile.TemporaryDirectory() as tmp:
        job = edit_job_rows(options, model, args.data_root, max(int(c) for c in args.ref_counts.split(",")),
                            args.job_draws, Path(tmp))
    lines += ["", "The same through `ccup unlearn --method domain-edit --domain-images ...` (PNG folders written "
              "from the train split by `write_reference_folders`; one run per row):", ""] + job
    body = "\n".join(lines)
    print(body)
    if args.json:
        args.json.write_text(_json.dumps({"validation": grid, "curve": curve}, indent=1) + "\n")
    if args.write_doc:
        from benchdoc import write_section

        write_section("bench_domain_edit", "python " + " ".join(sys.argv), body)


if __name__ == "__main__":
    main()
