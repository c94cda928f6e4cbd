#!/usr/bin/env python3
"""A few unlabelled reference images: the calibrated sink and ``erase: probe`` (issue 29).

    python scripts/bench_reference_images.py                 # validation split: choose/confirm settings
    python scripts/bench_reference_images.py --test          # full test split: the reported tables
    python scripts/bench_reference_images.py --tune          # validation: the sink's target AUC
    python scripts/bench_reference_images.py --test --sink-curve   # test: the curve without erase
    python scripts/bench_reference_images.py --retrained DIR --forget sandal,sneaker   # the yardstick
    python scripts/bench_reference_images.py --write-refs DIR --n 2000 [--without sandal]   # PNGs for the CLI

Reference images are drawn (seeded) from the Fashion-MNIST TRAIN split, from the part the tiny model
trained on, never from the validation part or the test split; their labels are never read except to
build the reference sets that hold no image of a forgotten class. Pseudo-labels are the original model's
zero-shot. Every figure comes from the same library functions ``ccup unlearn --reference-images`` runs:
``sinks.reference_chance_targets`` (the sink), ``erasure.fit_erasure`` (the erasure), composed as
``methods.references.solve_with_references``. Features are encoded once per split and cached.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import write_section  # noqa: E402
from train_tiny_clip import split_indices  # noqa: E402

from ccup_cli.audit.probe import k_shot_indices, probe_predict, train_probe  # noqa: E402
from ccup_cli.backends.base import load_backend  # noqa: E402
from ccup_cli.backends.features import encode_pre_projection  # noqa: E402
from ccup_cli.backends.fold import project, site_tensors  # noqa: E402
from ccup_cli.data.catalog import preset_classnames  # noqa: E402
from ccup_cli.data.dataset import array_dataset  # noqa: E402
from ccup_cli.data.idx import load_idx_split  # noqa: E402
from ccup_cli.methods.projector import ccup_map  # noqa: E402
from ccup_cli.methods.references import calibration_for, solve_with_references  # noqa: E402
from ccup_cli.methods.sinks import resolve_sink  # noqa: E402
from ccup_cli.metrics.zero_shot import zero_shot_metrics  # noqa: E402
from ccup_cli.text.embeddings import embed_classes  # noqa: E402
from ccup_cli.text.templates import load_templates  # noqa: E402

NAMED_SETS = [["sandal", "sneaker"], ["shirt", "t-shirt"], ["bag"]]
OTHER_SETS = [["sandal"], ["trouser"], ["pullover", "coat"], ["dress"], ["ankle boot"], ["t-shirt", "pullover", "shirt"],
              ["sandal", "sneaker", "ankle boot"]]
TARGETS = {"auc": (0.35, 0.65), "bottom_100": 0.20, "p_at_10": 0.10, "p_at_100": 0.10, "r_precision": 0.20,
           "forget_top1": 0.01, "retain_only_drop": 0.003, "retain_p100_drop": 0.01}
PROBE_SHOTS, PROBE_DRAWS = 16, 5
POOL = 8000  # train images encoded once; reference sets and probe shots are drawn from them
REFERENCE_SIZES = [100, 500, 2000]


class Data:
    """The embedded model, its eval classifier and the cached pre-projection features of each split."""

    def __init__(self, data_root: str, cache_dir: Path, seed: int = 0, model: str | None = None):
        self.classnames = preset_classnames("fashion-mnist")
        self.loaded = load_backend(model, None)
        self.site = self.loaded.select_fold("auto")
        self.model = model or "ccup-tiny-fashion"
        self.original = {k: v.detach().clone() for k, v in site_tensors(self.loaded.model, self.site).items()}
        self.templates, self.retain_templates = load_templates("openai"), load_templates("simple")
        self.openai = embed_classes(self.loaded.encode_prompts, self.classnames, self.templates)
        self.simple = embed_classes(self.loaded.encode_prompts, self.classnames, self.retain_templates)
        self.classifier = self.openai.per_class.double()
        self.cache_dir, self.data_root, self.seed = cache_dir, data_root, seed
        train_images, train_labels = load_idx_split(data_root, "train")
        train_idx, val_idx = split_indices(len(train_images), seed)
        pool = np.sort(np.random.default_rng(1000 + seed).choice(train_idx, POOL, replace=False))
        self.splits = {"pool": (train_images[pool], train_labels[pool]),
                       "validation": (train_images[val_idx], train_labels[val_idx]),
                       "test": load_idx_split(data_root, "test")}
        self._features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def features(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The ORIGINAL model's image features ``[n, d]`` float64 and labels of ``split``."""
        if split not in self._features:
            tag = "" if self.model == "ccup-tiny-fashion" else f"{self.model}-"
            path = self.cache_dir / f"refimages-{tag}{split}-seed{self.seed}.pt"
            if path.is_file():
                cached = torch.load(path)
            else:
                images, labels = self.splits[split]
                ds = array_dataset(f"fashion-mnist-{split}", split, self.classnames, images, labels, split)
                pre, _ = encode_pre_projection(self.loaded, ds)
                cached = {"pre": pre, "labels": torch.as_tensor(np.asarray(labels), dtype=torch.long)}
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                torch.save(cached, path)
            self._features[split] = (project(self.site, self.original, cached["pre"]).double(), cached["labels"])
        return self._features[split]

    def sides(self, forget):
        nt, ns = len(self.templates), len(self.retain_templates)
        fi = [self.classnames.index(c) for c in forget]
        ri = [i for i in range(len(self.classnames)) if i not in fi]
        d = self.classifier.shape[1]
        fe = self.openai.per_template.double().reshape(len(self.classnames), nt, d)[fi].reshape(-1, d)
        re = self.simple.per_template.double().reshape(len(self.classnames), ns, d)[ri].reshape(-1, d)
        return fi, ri, fe, re

    def references(self, n: int, without: list[str] = (), seed: int = 0) -> torch.Tensor:
        """Indices into the pool: ``n`` seeded references, none of a class in ``without`` (true labels
        are read only to leave those out)."""
        _, labels = self.features("pool")
        allowed = np.flatnonzero(~np.isin(labels.numpy(), [self.classnames.index(c) for c in without]))
        return torch.as_tensor(np.sort(np.random.default_rng(seed).choice(allowed[: POOL // 2], n, replace=False)))

    def probe_pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The labelled half of the pool (k-shot probe training images), disjoint from every reference set."""
        feats, labels = self.features("pool")
        return feats[POOL // 2:], labels[POOL // 2:]


def pseudo_labels(data: Data, feats: torch.Tensor) -> torch.Tensor:
    return (F.normalize(feats, dim=-1) @ data.classifier.T).argmax(dim=1)


def variant(data: Data, forget, refs_idx: torch.Tensor | None, erase: bool):
    """``(W [d, d], erasure or None, calibration facts)`` for one forget set and reference set."""
    fi, ri, fe, re = data.sides(forget)
    if refs_idx is None:  # the data-free default
        return ccup_map(fe, re, sink_embeddings=resolve_sink("retain-mean-orthogonal", fe, re, data.templates, None)), \
            None, {}
    feats = data.features("pool")[0][refs_idx]
    calibration = calibration_for(feats, pseudo_labels(data, feats), data.classifier, fi, data.classnames)
    return solve_with_references(lambda targets: ccup_map(fe, re, sink_embeddings=targets), fe, re, data.templates,
                                 calibration, erase)


def final(feats: torch.Tensor, W: torch.Tensor, erasure) -> torch.Tensor:
    out = feats @ W.T
    return erasure(out) if erasure is not None else out


def probe_recall(data: Data, forget, W, erasure, split: str) -> dict:
    """16-shot probes (5 seeded draws) on the final features: per-class recall on ``split``, and retain top-1."""
    train, train_y = data.probe_pool()
    test, test_y = data.features(split)
    train_f, test_f = final(train, W, erasure), final(test, W, erasure)
    fi = [data.classnames.index(c) for c in forget]
    recall = {c: [] for c in forget}
    retain = []
    for j in range(PROBE_DRAWS):
        idx = torch.as_tensor(k_shot_indices(train_y.numpy(), PROBE_SHOTS, j))
        w, b = train_probe(train_f[idx], train_y[idx], len(data.classnames), seed=j)
        pred = probe_predict(w, b, test_f)
        for c, i in zip(forget, fi):
            recall[c].append(float(pred[test_y.eq(i)].eq(i).double().mean()))
        keep = ~torch.isin(test_y, torch.as_tensor(fi))
        retain.append(float(pred[keep].eq(test_y[keep]).double().mean()))
    return {"recall": {c: float(np.mean(v)) for c, v in recall.items()}, "retain": float(np.mean(retain))}


def measure(data: Data, forget, W, erasure, split: str, before: dict | None = None, probes: bool = True) -> dict:
    feats, labels = data.features(split)
    m = zero_shot_metrics(final(feats, W, erasure), data.classifier, labels.numpy(), data.classnames, forget)
    per = {c: m["retrieval"]["per_class"][c] for c in forget}
    row = {"forget": forget, "auc": [per[c]["auc"] for c in forget],
           **{k: max(per[c][k] for c in forget) for k in ("bottom_100", "p_at_10", "p_at_100", "r_precision")},
           "forget_top1": m["forget"]["top1"], "retain_only": m["retain_only"]["top1"],
           "retain_p100": m["retrieval"]["retain"]["p_at_100"]}
    if probes:
        row["probe"] = probe_recall(data, forget, W, erasure, split)
    if before is not None:
        row["retain_only_drop"] = before["retain_only"] - row["retain_only"]
        row["retain_p100_drop"] = before["retain_p100"] - row["retain_p100"]
        if probes:
            row["probe_retain_drop"] = before["probe"]["retain"] - row["probe"]["retain"]
        lo, hi = TARGETS["auc"]
        row["search_ok"] = all(lo <= a <= hi for a in row["auc"]) and all(
            row[k] <= TARGETS[k] for k in ("bottom_100", "p_at_10", "p_at_100", "r_precision"))
        row["class_ok"] = all(row[k] <= TARGETS[k] for k in ("forget_top1", "retain_only_drop", "retain_p100_drop"))
    return row


def _fmt_row(name: str, r: dict, probes: bool = True) -> str:
    cells = [", ".join(r["forget"]), name, ", ".join(f"{a:.2f}" for a in r["auc"]), f"{r['bottom_100']:.2f}",
             f"{r['p_at_10']:.2f}", f"{r['p_at_100']:.2f}", f"{r['r_precision']:.2f}", f"{r['forget_top1']:.3f}",
             f"{100 * r.get('retain_only_drop', 0):+.2f}", f"{100 * r.get('retain_p100_drop', 0):+.1f}"]
    if probes:
        cells += [", ".join(f"{v:.2f}" for v in r["probe"]["recall"].values()),
                  f"{100 * r.get('probe_retain_drop', 0):+.1f}"]
    cells.append("yes" if r.get("search_ok") and r.get("class_ok") else ("—" if "search_ok" not in r else "no"))
    return "| " + " | ".join(cells) + " |"


HEADER = ("| forget | variant | AUC per class | worst bottom-100 | worst P@10 | worst P@100 | worst R-precision | "
          "forget top-1 | retain-only drop (pt) | retain P@100 drop (pt) | 16-shot probe recall per class | "
          "retain probe drop (pt) | search + classification targets |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def table(data: Data, sets, split: str, n_refs: int = 2000, probes: bool = True) -> tuple[list[str], list[dict]]:
    lines, rows = [HEADER], []
    refs = data.references(n_refs)
    eye = torch.eye(data.classifier.shape[1], dtype=torch.float64)
    for forget in sets:
        before = measure(data, forget, eye, None, split, probes=probes)
        lines.append(_fmt_row("original", before, probes))
        for name, idx, erase in (("data-free default", None, False), (f"reference-chance ({n_refs} refs)", refs, False),
                                 (f"reference-chance + erase probe ({n_refs} refs)", refs, True),
                                 (f"+ erase, {n_refs} refs without {'/'.join(forget)}",
                                  data.references(n_refs, forget), True)):
            W, erasure, facts = variant(data, forget, idx, erase)
            r = measure(data, forget, W, erasure, split, before, probes)
            r["variant"], r["facts"] = name, facts
            rows.append(r)
            lines.append(_fmt_row(name, r, probes))
    return lines, rows


def curve(data: Data, sets, split: str, erase: bool = True) -> list[str]:
    lines = ["| forget | references | without the class | AUC per class | worst bottom-100 | worst P@10 | "
             "worst R-precision | retain-only drop (pt) | 16-shot probe recall per class | targets |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    eye = torch.eye(data.classifier.shape[1], dtype=torch.float64)
    for forget in sets:
        before = measure(data, forget, eye, None, split)
        for n in REFERENCE_SIZES:
            for without in (False, True):
                W, erasure, _ = variant(data, forget, data.references(n, forget if without else ()), erase)
                r = measure(data, forget, W, erasure, split, before)
                lines.append(f"| {', '.join(forget)} | {n} | {'yes' if without else 'no'} | "
                             f"{', '.join(f'{a:.2f}' for a in r['auc'])} | {r['bottom_100']:.2f} | {r['p_at_10']:.2f} | "
                             f"{r['r_precision']:.2f} | {100 * r['retain_only_drop']:+.2f} | "
                             f"{', '.join(f'{v:.2f}' for v in r['probe']['recall'].values())} | "
                             f"{'yes' if r['search_ok'] and r['class_ok'] else 'no'} |")
    return lines


TUNE_AIMS = [0.5, 0.45, 0.42, 0.38]


def tune(data: Data, sets) -> list[str]:
    """The sink's aim (``sinks.REFERENCE_TARGET_AUC``) on the validation split, no erasure, 2,000 references."""
    lines = [HEADER.replace(" 16-shot probe recall per class | retain probe drop (pt) |", "")
             .replace("|---|---|---|---|---|---|---|---|---|---|---|---|---|", "|---|---|---|---|---|---|---|---|---|---|---|")]
    refs = data.references(2000)
    eye = torch.eye(data.classifier.shape[1], dtype=torch.float64)
    for forget in sets:
        before = measure(data, forget, eye, None, "validation", probes=False)
        for aim in TUNE_AIMS:
            fi, ri, fe, re = data.sides(forget)
            feats = data.features("pool")[0][refs]
            calibration = calibration_for(feats, pseudo_labels(data, feats), data.classifier, fi, data.classnames)
            calibration.target_auc = aim
            W, _, _ = solve_with_references(lambda t, fe=fe, re=re: ccup_map(fe, re, sink_embeddings=t), fe, re,
                                            data.templates, calibration, False)
            lines.append(_fmt_row(f"aim AUC {aim}", measure(data, forget, W, None, "validation", before, False),
                                  False))
    return lines


def retrained_probe(data: Data, folder: str, forget: list[str]) -> dict:
    """The same 16-shot probes (pool, draws, test split) on a model retrained without ``forget``."""
    lit = (Path(folder) / "config.json").is_file()  # a transformers folder (the LiT reference)
    loaded = load_backend(folder if lit else f"local-dir:{folder}", None)
    site = loaded.select_fold("auto")
    tensors = {k: v.detach().clone() for k, v in site_tensors(loaded.model, site).items()}
    own = {}
    for split in ("pool", "test"):
        images, labels = data.splits[split]
        pre, _ = encode_pre_projection(loaded, array_dataset(f"retrained-{split}", split, data.classnames, images,
                                                             labels, split))
        own[split] = (project(site, tensors, pre).double(), torch.as_tensor(np.asarray(labels)))
    data._features = own  # the retrained model's features stand in for the original's
    return probe_recall(data, forget, torch.eye(data.classifier.shape[1], dtype=torch.float64), None, "test")


def write_refs(args) -> None:
    """PNGs of ``--n`` seeded train references (none of ``--without``) under ``DIR`` (flat, no labels)."""
    from PIL import Image

    data_images, labels = load_idx_split(args.data_root, "train")
    train_idx, _ = split_indices(len(data_images), args.seed)
    names = preset_classnames("fashion-mnist")
    drop = [names.index(c) for c in args.without.split(",")] if args.without else []
    allowed = train_idx[~np.isin(labels[train_idx], drop)]
    chosen = np.sort(np.random.default_rng(args.seed).choice(allowed, args.n, replace=False))
    out = Path(args.write_refs)
    out.mkdir(parents=True, exist_ok=True)
    for i in chosen:
        Image.fromarray(data_images[i]).save(out / f"train-{i:05d}.png")
    print(f"wrote {len(chosen)} train images to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="ccup-tiny-fashion", help="ccup-tiny-fashion or ccup-lit-fashion")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("CCUP_CACHE_DIR", Path.home() / ".cache" / "ccup")) / "studies")
    parser.add_argument("--test", action="store_true", help="report the full test split")
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--tune", action="store_true", help="validation: the sink's target AUC")
    parser.add_argument("--sink-curve", action="store_true", help="only the reference-size curve, sink alone")
    parser.add_argument("--retrained", metavar="DIR", help="16-shot probes of a model retrained without --forget")
    parser.add_argument("--forget", default="sandal,sneaker", help="with --retrained: the classes it never saw")
    parser.add_argument("--write-refs", metavar="DIR", help="write reference PNGs and stop")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--without", default="", help="comma-separated classes to leave out of --write-refs")
    args = parser.parse_args()
    if args.write_refs:
        return write_refs(args)
    torch.manual_seed(0)
    data = Data(args.data_root, args.cache_dir, args.seed, args.model)
    if args.retrained:
        r = retrained_probe(data, args.retrained, args.forget.split(","))
        print("| model | 16-shot probe recall per class | retain probe top-1 |\n|---|---|---|\n"
              f"| {Path(args.retrained).name} | "
              + ", ".join(f"{c} {v:.3f}" for c, v in r["recall"].items()) + f" | {r['retain']:.3f} |")
        return
    suffix = "" if args.model == "ccup-tiny-fashion" else "_lit"
    flag = "" if args.model == "ccup-tiny-fashion" else f" --model {args.model}"
    if args.tune:
        body = "\n".join(tune(data, NAMED_SETS + [["pullover", "coat"], ["sandal", "sneaker", "ankle boot"],
                                                 ["t-shirt", "pullover", "shirt"]]))
        print(body)
        if not args.no_doc:
            write_section(f"reference_images_tune{suffix}", f"python scripts/bench_reference_images.py{flag} --tune",
                          body)
        return
    split = "test" if args.test else "validation"
    if args.sink_curve:
        body = "\n".join(curve(data, NAMED_SETS, split, erase=False))
        print(body)
        if not args.no_doc:
            write_section(f"reference_images_sink_curve_{split}{suffix}", "python scripts/bench_reference_images.py"
                          + flag + (" --test" if args.test else "") + " --sink-curve", body)
        return
    lines, _ = table(data, NAMED_SETS + OTHER_SETS, split)
    body = "\n".join(lines)
    body += "\n\nReference-set size, with and without images of the forgotten classes (erase probe on):\n\n"
    body += "\n".join(curve(data, NAMED_SETS, split))
    print(body)
    if not args.no_doc:
        section = ("reference_images_test" if args.test else "reference_images_validation") + suffix
        write_section(section, "python scripts/bench_reference_images.py" + flag + (" --test" if args.test else ""),
                      body)


if __name__ == "__main__":
    main()
