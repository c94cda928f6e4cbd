#!/usr/bin/env python3
"""Choose the two thresholds of ``text/concepts.py`` on the validation split; report test figures apart.

    python scripts/tune_concepts.py --model ccup-lit-fashion              # selection -> section tune_concepts
    python scripts/tune_concepts.py --model ccup-lit-fashion --test-targets  # figures -> section concept_targets

Selection never reads the test split:

- ``concept_threshold``: concepts labelled by meaning (``CONCEPTS``: which Fashion-MNIST classes
  each one names; seven name none) are scored at every threshold of a grid by the errors of their
  coverage (a class covered that should not be, or missed); the default is the lowest threshold
  with the fewest errors (between equally many errors, covering a class beats missing one). Then each concept is forgotten at that
  threshold and measured on the validation split (the 5,000 train images held out of training).
- ``near_retain_threshold``: every class is forgotten with no eval dataset (the default retain
  vocabulary, ImageNet-1k names) at every threshold of a grid, and measured on the validation
  split. Score per class: forget top-1 + the drop in retain-only top-1; the default is the
  largest threshold (the fewest names left out) whose mean score is within 0.002 of the lowest.

``--test-targets`` measures issue 27's targets on the full test split with the defaults of
``presets/defaults.py``, through the same library path as ``ccup unlearn``; it chooses nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import write_section  # noqa: E402
from train_tiny_clip import split_indices  # noqa: E402

from ccup_cli.backends.fold import fold  # noqa: E402
from ccup_cli.data.catalog import generic_vocabulary, preset_classnames  # noqa: E402
from ccup_cli.data.dataset import array_dataset  # noqa: E402
from ccup_cli.data.idx import load_idx_split  # noqa: E402
from ccup_cli.methods.table import get_method, method_params, solve_full_map  # noqa: E402
from ccup_cli.metrics.compare import metrics_for  # noqa: E402
from ccup_cli.presets import defaults  # noqa: E402
from ccup_cli.run.door import admit  # noqa: E402
from ccup_cli.run.options import RunOptions  # noqa: E402
from ccup_cli.run.provenance import PhaseTimer  # noqa: E402
from ccup_cli.run.session import open_session  # noqa: E402
from ccup_cli.run.vocabulary import choose_sides, subset  # noqa: E402
from ccup_cli.spec.schema import UnlearnSpec, build_spec  # noqa: E402
from ccup_cli.text.concepts import near_names  # noqa: E402
from ccup_cli.text.embeddings import embed_classes  # noqa: E402
from ccup_cli.text.templates import load_templates  # noqa: E402

FASHION = preset_classnames("fashion-mnist")
SHOES = ["sandal", "sneaker", "ankle boot"]
# which classes each word names, written from the words' meaning (not from any similarity)
CONCEPTS = {
    "footwear": SHOES, "shoes": SHOES, "footgear": SHOES, "things you wear on your feet": SHOES,
    "boots": ["ankle boot"], "athletic shoes": ["sneaker"], "open-toed shoes": ["sandal"],
    "tops": ["t-shirt", "pullover", "shirt"], "knitwear": ["pullover"], "outerwear": ["coat"],
    "bags": ["bag"], "luggage": ["bag"], "dresses": ["dress"], "legwear": ["trouser"],
    "airplane": [], "dog": [], "pizza": [], "guitar": [], "bicycle": [], "furniture": [], "vegetables": [],
}
CONCEPT_GRID = [round(0.1 * k, 1) for k in range(2, 41)] + [5.0, 6.0, 8.0]  # 0.2 ... 4.0, then coarser
NEAR_GRID = [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 8.0, 100.0]  # 100: nothing left out
NEAR_TOLERANCE = 0.002  # a mean score this close to the lowest (0.2 pt) is as good: take the largest such threshold
TARGET_CONCEPTS = ["footwear", "shoes", "tops", "bags"]
TARGET_FORGETS = ["sneaker", "sandal", "ankle boot", "bag", "shirt", "t-shirt", "coat"]


class Study:
    """One model (through ``open_session``), one split's pre-projection features and classifier."""

    def __init__(self, model: str | None, pretrained: str | None, split: str, data_root: str, seed: int):
        images, labels = load_idx_split(data_root, "train" if split == "validation" else "test")
        if split == "validation":
            _, val_idx = split_indices(len(images), seed)
            images, labels = images[val_idx], labels[val_idx]
        self.ds = array_dataset(f"fashion-mnist-{split}", split, FASHION, images, labels, split)
        self.model, self.pretrained = model, pretrained
        self.options, self.timer = RunOptions(device="cpu", workers=0), PhaseTimer()
        self.session = open_session(model, pretrained, self.options, "cpu", self.timer)
        self.pre, _ = self.session.encode_images(self.ds)
        self.classifier = self.session.classifier(FASHION, load_templates(defaults.FORGET_TEMPLATES))
        self.before = self.metrics(self.session.original, [])
        self.vocabulary = None  # the default retain vocabulary's embeddings, once (near_rows)

    def plan(self, **fields):
        spec = build_spec({}, {"model": self.model, "pretrained": self.pretrained, **fields})
        return admit(spec, self.options, self.timer, need_eval=False)

    def metrics(self, tensors, forget):
        return metrics_for(self.session.site, tensors, self.pre, self.classifier, self.ds, forget)

    def forget_with(self, forget_emb, retain_emb, forget_classes) -> dict:
        """Forget at α = 1 with the default method; per-class overall top-1 before and after."""
        spec = UnlearnSpec()
        params = method_params(get_method(spec.method), spec)
        W = solve_full_map(spec.method, forget_emb, retain_emb, params, self.session.method_context())
        after = self.metrics(fold(self.session.site, self.session.original, W), forget_classes)
        before = self.metrics(self.session.original, forget_classes)
        return {"before": before, "after": after}


def per_class(m: dict) -> dict:
    return m["overall"]["per_class"]


def coverage_errors(records: list[dict], threshold: float) -> tuple[int, list[str]]:
    errors, notes = 0, []
    for r in records:
        covered = {s["class"] for s in r["similarity"] if s["z"] >= threshold}
        truth = set(CONCEPTS[r["concept"]])
        wrong = (covered - truth) | (truth - covered)
        errors += len(wrong)
        if wrong:
            notes.append(f"{r['concept']}: {', '.join(sorted(wrong))}")
    return errors, notes


def concept_records(study: Study) -> list[dict]:
    """Every concept's z to every class (threshold -inf: nothing is decided yet)."""
    records = []
    for concept in CONCEPTS:
        plan = study.plan(forget_concepts=[concept], eval="fashion-mnist", eval_limit=1, concept_threshold=-1e9)
        plan.dataset = study.ds  # the classes are the same; the split is this study's
        records.append(choose_sides(study.session, plan).record["concepts"]["per_concept"][0])
    return records


def choose_concept_threshold(records: list[dict]) -> tuple[float, list[tuple[float, int, list[str]]]]:
    scored = [(t, *coverage_errors(records, t)) for t in CONCEPT_GRID]
    fewest = min(e for _, e, _ in scored)
    runs, current = [], []
    for t, e, _ in scored:
        if e == fewest:
            current.append(t)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs[0][0], scored  # the lowest: between equally many errors, covering beats missing


def forget_concept(study: Study, concept: str, threshold: float) -> dict:
    plan = study.plan(forget_concepts=[concept], eval="fashion-mnist", eval_limit=1, concept_threshold=threshold)
    plan.dataset = study.ds
    try:
        choices = choose_sides(study.session, plan)
    except Exception as err:  # noqa: BLE001 - a concept that covers nothing is refused; report it as such
        return {"concept": concept, "covers": [], "refused": str(err).split(";")[0]}
    covered = choices.forget_names
    m = study.forget_with(choices.forget, choices.retain, covered)
    b, a = per_class(m["before"]), per_class(m["after"])
    others = [c for c in FASHION if c not in covered]
    return {"concept": concept, "covers": covered, "z": {s["class"]: s["z"] for s in
                                                          choices.record["concepts"]["per_concept"][0]["similarity"]},
            "covered_after": {c: a[c] for c in covered}, "covered_before": {c: b[c] for c in covered},
            "worst_other_change": min((a[c] - b[c] for c in others), default=0.0),
            "worst_other": min(others, key=lambda c: a[c] - b[c]) if others else None}


def near_rows(study: Study, forget: str, grid: list[float]) -> list[dict]:
    """Forget one class with no eval dataset at each near threshold of ``grid``.

    The same sides as ``run.vocabulary.choose_sides`` (the default vocabulary less the forget name,
    then less its near names), with the vocabulary embedded once for every forget class."""
    spec = UnlearnSpec()
    if study.vocabulary is None:
        study.vocabulary = embed_classes(study.session.loaded.encode_prompts, generic_vocabulary(),
                                         load_templates(spec.retain_templates), study.session.cache_id,
                                         study.session.text_cache_name, cache=study.session._cached_text)
    vocab = study.vocabulary
    pool = [i for i, n in enumerate(vocab.classnames) if n.lower() != forget.lower()]
    retain = subset(vocab, pool)
    forget_emb = embed_classes(study.session.loaded.encode_prompts, [forget], load_templates(spec.templates),
                               study.session.cache_id, study.session.text_cache_name,
                               cache=study.session._cached_text)
    _, scored = near_names([forget], forget_emb.per_class, retain.classnames, retain.per_class, -1e9)
    z = {r["name"]: r["z"] for r in scored}
    rows = []
    for t in grid:
        keep = [i for i, name in enumerate(retain.classnames) if z[name] < t]
        m = study.forget_with(forget_emb, subset(retain, keep), [forget])
        left_out = sorted((n for n in retain.classnames if z[n] >= t), key=lambda n: -z[n])
        drop = m["before"]["retain_only"]["top1"] - m["after"]["retain_only"]["top1"]
        b, a = per_class(m["before"]), per_class(m["after"])
        rows.append({"forget": forget, "threshold": t, "left_out": left_out, "forget_top1": m["after"]["forget"]["top1"],
                     "retain_only_drop": drop, "score": m["after"]["forget"]["top1"] + max(drop, 0.0),
                     "worst_other": min((c for c in FASHION if c != forget), key=lambda c: a[c] - b[c]),
                     "worst_other_change": min(a[c] - b[c] for c in FASHION if c != forget)})
    return rows


def select(args) -> None:
    study = Study(args.model, args.pretrained, "validation", args.data_root, args.seed)
    if args.near_only:
        return select_near(args, study, [])
    records = concept_records(study)
    threshold, scored = choose_concept_threshold(records)
    lines = [f"Model `{model_name(args)}`; {len(study.ds)} validation images (held out of "
             "training; the test split is not read).", "",
             "### concept_threshold: coverage errors of the labelled concepts", "",
             "| concept | names (by meaning) | z per class, closest first |", "|---|---|---|"]
    for r in records:
        sims = ", ".join(f"{s['class']} {s['z']:.1f}" for s in r["similarity"][:5])
        lines.append(f"| {r['concept']} | {', '.join(CONCEPTS[r['concept']]) or '(none)'} | {sims} |")
    lines += ["", "| threshold | errors | wrong |", "|---|---|---|"]
    lines += [f"| {t:g} | {e} | {'; '.join(n)} |" for t, e, n in scored if t in (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0,
                                                                                 4.5, 5.0, 6.0, 7.0, 8.0, threshold)]
    lines += ["", f"Chosen: **{threshold:g}** (the lowest threshold with the fewest errors).",
              "", "Each concept forgotten at that threshold (α = 1, defaults), validation split, per-class top-1:", "",
              "| concept | covers | covered after | worst other class (change, pt) |", "|---|---|---|---|"]
    for concept in CONCEPTS:
        r = forget_concept(study, concept, threshold)
        if "refused" in r:
            lines.append(f"| {concept} | none: refused | — | — |")
            continue
        after = ", ".join(f"{c} {v:.3f}" for c, v in r["covered_after"].items())
        lines.append(f"| {concept} | {', '.join(r['covers'])} | {after} | {r['worst_other']} "
                     f"{100 * r['worst_other_change']:+.1f} |")
    print("\n".join(lines), flush=True)  # the concept half, while the near half runs
    select_near(args, study, lines, threshold)


def select_near(args, study: Study, lines: list[str], threshold: float | None = None) -> None:
    grid_rows = {c: near_rows(study, c, NEAR_GRID) for c in FASHION}
    mean_score = {t: float(np.mean([next(r["score"] for r in rows if r["threshold"] == t)
                                    for rows in grid_rows.values()])) for t in NEAR_GRID}
    lowest = min(mean_score.values())
    best = max(t for t in NEAR_GRID if mean_score[t] <= lowest + NEAR_TOLERANCE)
    lines += ["", "### near_retain_threshold: each class forgotten with no eval dataset (ImageNet-1k retain names)",
              "", "Score = forget top-1 + drop in retain-only top-1 (validation, α = 1, defaults); 100 leaves "
              "nothing out.", "", "| threshold | mean score | " + " | ".join(FASHION) + " |",
              "|---|---|" + "---|" * len(FASHION)]
    for t in NEAR_GRID:
        cells = [next(r for r in grid_rows[c] if r["threshold"] == t) for c in FASHION]
        lines.append(f"| {t:g} | {mean_score[t]:.4f} | " + " | ".join(
            f"{r['forget_top1']:.3f} / {100 * r['retain_only_drop']:+.1f} ({len(r['left_out'])})" for r in cells) + " |")
    lines += ["", "Cell: forget top-1 / retain-only drop in points (names left out).", "",
              f"Chosen: **{best:g}** (the largest threshold within {NEAR_TOLERANCE} of the lowest mean score). "
              "Names left out at it:", ""]
    for c in FASHION:
        r = next(r for r in grid_rows[c] if r["threshold"] == best)
        lines.append(f"- {c}: {', '.join(r['left_out'][:12])}{' ...' if len(r['left_out']) > 12 else ''}")
    body = "\n".join(lines)
    print(body)
    for name, value, current in (("CONCEPT_THRESHOLD", threshold, defaults.CONCEPT_THRESHOLD),
                                 ("NEAR_RETAIN_THRESHOLD", best, defaults.NEAR_RETAIN_THRESHOLD)):
        if value is not None and value != current:
            print(f"\nNOTE: defaults.{name} is {current} but this run chooses {value}", file=sys.stderr)
    if not args.no_doc:
        near = " --near-only" if args.near_only else ""
        write_section(f"tune_concepts{' near' if near else ''} ({model_name(args)})",
                      f"python scripts/tune_concepts.py{model_flags(args)}{near}", body)


def test_targets(args) -> None:
    study = Study(args.model, args.pretrained, "test", args.data_root, args.seed)
    lines = [f"Model `{model_name(args)}`, full test split ({len(study.ds)} images), α = 1, "
             "defaults (concept_threshold "
             f"{defaults.CONCEPT_THRESHOLD:g}, near_retain_threshold {defaults.NEAR_RETAIN_THRESHOLD:g}; how they "
             "were chosen: docs/concepts.md). Reported only; nothing is chosen here.", "",
             "| concept | covers (z) | covered top-1 after (≤ 0.05) | worst other class change (≥ −1 pt) |",
             "|---|---|---|---|"]
    for concept in TARGET_CONCEPTS:
        r = forget_concept(study, concept, defaults.CONCEPT_THRESHOLD)
        if "refused" in r:
            lines.append(f"| {concept} | {r['refused']} | — | — |")
            continue
        covers = ", ".join(f"{c} ({r['z'][c]:.1f})" for c in r["covers"])
        after = ", ".join(("✓ " if v <= 0.05 else "✗ ") + f"{c} {v:.3f}" for c, v in r["covered_after"].items())
        ok = r["worst_other_change"] >= -0.01
        lines.append(f"| {concept} | {covers} | {after} | {'✓' if ok else '✗'} {r['worst_other']} "
                     f"{100 * r['worst_other_change']:+.2f} pt |")
    lines += ["", "No eval dataset (the default retain vocabulary, near names left out at the default "
              "threshold; 100: none left out):", "",
              "| forget | threshold | forget top-1 after | retain-only drop (pt) | worst other class (pt) | "
              "names left out |", "|---|---|---|---|---|---|"]
    for forget in TARGET_FORGETS:
        for r in near_rows(study, forget, [defaults.NEAR_RETAIN_THRESHOLD, 100.0]):
            names = ", ".join(r["left_out"][:8]) + (" ..." if len(r["left_out"]) > 8 else "")
            lines.append(f"| {forget} | {r['threshold']:g} | {r['forget_top1']:.3f} | {100 * r['retain_only_drop']:+.2f}"
                         f" | {r['worst_other']} {100 * r['worst_other_change']:+.1f} | {len(r['left_out'])}: "
                         f"{names} |")
    body = "\n".join(lines)
    print(body)
    if not args.no_doc:
        write_section(f"concept_targets ({model_name(args)})",
                      f"python scripts/tune_concepts.py{model_flags(args)} --test-targets", body)


def model_name(args) -> str:
    return args.model or "ccup-tiny-fashion"


def model_flags(args) -> str:
    return (f" --model {args.model}" if args.model else "") + (f" --pretrained {args.pretrained}"
                                                               if args.pretrained else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded ccup-tiny-fashion")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--seed", type=int, default=0, help="the validation split's seed (train_tiny_clip.py)")
    parser.add_argument("--test-targets", action="store_true")
    parser.add_argument("--near-only", action="store_true", help="selection: near_retain_threshold only")
    parser.add_argument("--no-doc", action="store_true", help="print only; do not write docs/benchmarks.md")
    args = parser.parse_args()
    (test_targets if args.test_targets else select)(args)


if __name__ == "__main__":
    main()
