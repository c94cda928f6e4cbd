"""The three-way comparison of ``ccup audit --reference``: original, unlearned, and a model that never learnt.

The yardstick of unlearning in the literature is a model retrained without the forgotten data
("exact unlearning"). A reference is a *different* model: its images are encoded by its own
image tower and its class vectors come from its own text tower, so every measure here reads one
``ModelView`` per model and never mixes features across models. Each measure is taken for the
three models with the same recipe (same templates, same aliases, same probe draws, same
queries), then the unlearned model is judged against the reference:

- ``as if never learnt``: within the measure's tolerance (``TOLERANCES``) of the reference;
- ``more forgotten than a retrained model``: further from "known" than the reference is, e.g. a
  class pushed to the bottom of its own search, which a reversed search reads back;
- ``less forgotten``: nearer "known" than the reference, e.g. a probe that still decodes it;
- where the forgotten images go has no direction: ``unlike a retrained model`` when the shares
  differ by more than the tolerance (total-variation distance).

Tolerances are absolute differences of shares (top-1, precision, recall, AUC). They are not a
significance test; one retrained seed is one draw of the yardstick, so a gap near a tolerance
says little. The tolerances are stated in every report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics.zero_shot import LOGIT_SCALE, ranking_metrics, zero_shot_metrics
from .figures import search_ranking
from .probe import probe_predict, train_probe

AS_IF_NEVER_LEARNT = "as if never learnt"
MORE_FORGOTTEN = "more forgotten than a retrained model"
LESS_FORGOTTEN = "less forgotten"
UNLIKE = "unlike a retrained model"  # a measure without a direction (where the images go)
VERDICTS = (AS_IF_NEVER_LEARNT, MORE_FORGOTTEN, LESS_FORGOTTEN, UNLIKE)

# Absolute tolerances per measure. Top-1 at ~1,000 images per class has a binomial std of at most
# 0.016; P@10 moves in steps of 0.1; the rest are shares over hundreds of images or the AUC.
TOLERANCES = {
    "zero_shot_top1": 0.02,
    "confusion_distance": 0.15,
    "search_p_at_10": 0.10,
    "search_p_at_100": 0.05,
    "search_r_precision": 0.05,
    "search_bottom_100": 0.05,
    "search_auc": 0.05,
    "alias_top1": 0.02,
    "alias_auc": 0.05,
    "probe_recall": 0.05,
    "image_search_p_at_10": 0.05,
    "image_search_p_at_100": 0.05,
}
# "known" reads upwards for every measure but these two: a class ranked last, or away from its own
# images, is *more* removed than one at chance
LOWER_IS_KNOWN = {"search_bottom_100"}
MODELS = ("original", "unlearned", "reference")
IMAGE_QUERY_CHUNK = 256  # image-to-image queries ranked at once: bounds the [chunk, n] sort's memory


@dataclass
class ModelView:
    """What one model sees: its own image features and its own class vectors.

    ``images [n, d]`` eval features (projected, unnormalised); ``classifier [C, d]`` and
    ``second [C, d]`` normalised class vectors under the unlearning's templates and the second
    set; ``alias_vectors`` ``{class: [a, d]}``; ``probe_train [m, d]`` the probe pool's features.
    """

    images: torch.Tensor
    classifier: torch.Tensor
    second: torch.Tensor
    alias_vectors: dict[str, torch.Tensor] = field(default_factory=dict)
    probe_train: torch.Tensor | None = None


@dataclass
class ProbeSetup:
    """The k-shot draws every model is probed with (paired): ``pool[k][j]`` indexes the pool."""

    labels: np.ndarray  # [m] labels of the probe pool
    pool: dict[int, list[np.ndarray]]
    test: slice | torch.Tensor  # which eval images the probes are tested on
    seed: int = 0
    train_on: str = ""


def judge(unlearned: float | None, reference: float | None, tolerance: float, known_when_lower: bool = False,
          directed: bool = True) -> str | None:
    """The verdict of one measure; None when either value is missing.

    Within ``tolerance`` (inclusive) of the reference: as if never learnt. Otherwise the side of
    the reference it falls on: "known" is the higher value unless ``known_when_lower``;
    ``directed`` False (a distance) gives ``UNLIKE`` instead of a side.
    """
    if unlearned is None or reference is None:
        return None
    gap = unlearned - reference
    if abs(gap) <= tolerance + 1e-9:  # the float noise of a gap stated at the tolerance itself
        return AS_IF_NEVER_LEARNT
    if not directed:
        return UNLIKE
    nearer_known = gap < 0 if known_when_lower else gap > 0
    return LESS_FORGOTTEN if nearer_known else MORE_FORGOTTEN


def _row(group: str, measure: str, subject: str, key: str, values: dict[str, float | None],
         directed: bool = True, note: str | None = None) -> dict:
    u, r = values.get("unlearned"), values.get("reference")
    tolerance = TOLERANCES[key]
    row = {"group": group, "measure": measure, "subject": subject, "key": key,
           **{m: (None if values.get(m) is None else float(values[m])) for m in MODELS},
           "gap": None if u is None or r is None else float(u - r), "tolerance": tolerance,
           "verdict": judge(u, r, tolerance, key in LOWER_IS_KNOWN, directed)}
    if note:
        row["note"] = note
    return row


def _predictions(view: ModelView, classifier: torch.Tensor) -> torch.Tensor:
    return (LOGIT_SCALE * F.normalize(view.images.float(), dim=-1) @ classifier.float().T).argmax(dim=1)


def where_they_go(pred: torch.Tensor, labels: torch.Tensor, class_id: int, classnames: Sequence[str]) -> dict:
    """``{class: share}`` of the images of ``class_id`` predicted as each class (non-zero shares)."""
    mine = pred[labels.eq(class_id)]
    counts = torch.bincount(mine, minlength=len(classnames)).double() / max(len(mine), 1)
    return {classnames[i]: round(float(s), 4) for i, s in enumerate(counts.tolist()) if s > 0}


def total_variation(a: dict[str, float], b: dict[str, float]) -> float:
    """Half the L1 distance between two share tables: 0 the same, 1 disjoint."""
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def image_search(features: torch.Tensor, labels: torch.Tensor, class_id: int) -> dict | None:
    """Image-to-image search: each image of ``class_id`` as a query against all *other* images.

    Returns the mean over queries of P@10 and P@100 (share of the class among the nearest 10 and
    100 by cosine) and the AUC; the query itself is left out of its own ranking. None when the
    class has fewer than two images or every image.
    """
    x = F.normalize(features.float(), dim=-1)
    queries = torch.nonzero(labels.eq(class_id)).flatten()
    n = len(labels)
    if len(queries) < 2 or len(queries) >= n:
        return None
    sums = {"p_at_10": 0.0, "p_at_100": 0.0, "auc": 0.0}
    for start in range(0, len(queries), IMAGE_QUERY_CHUNK):
        q = queries[start:start + IMAGE_QUERY_CHUNK]
        scores = x[q] @ x.T  # [m, n]
        keep = torch.ones_like(scores, dtype=torch.bool)
        keep[torch.arange(len(q)), q] = False  # the query is not its own neighbour
        scores = scores[keep].view(len(q), n - 1)
        relevant = labels.eq(class_id).expand(len(q), n)[keep].view(len(q), n - 1)
        m = ranking_metrics(scores, relevant)
        for k in sums:
            sums[k] += float(m[k].sum())
    return {k: v / len(queries) for k, v in sums.items()}


def probe_recall(view: ModelView, setup: ProbeSetup, test_labels: torch.Tensor, n_classes: int,
                 forget_ids: Sequence[int]) -> dict[int, dict[int, dict]]:
    """k-shot linear-probe recall of each forget class: ``{k: {class_id: {mean, std, draws}}}``.

    The probe (``probe.train_probe``, logistic regression over every class) is trained on this
    model's features of the pool draws, and tested on this model's features of the test images.
    """
    test_features = view.images[setup.test]
    out: dict[int, dict[int, dict]] = {}
    for k, draws in setup.pool.items():
        per_class: dict[int, list[float]] = {c: [] for c in forget_ids}
        for j, idx in enumerate(draws):
            w, b = train_probe(view.probe_train[torch.as_tensor(idx)], torch.as_tensor(setup.labels[idx]),
                               n_classes, seed=setup.seed + j)
            pred = probe_predict(w, b, test_features)
            for c in forget_ids:
                mine = test_labels.eq(c)
                if bool(mine.any()):
                    per_class[c].append(float(pred[mine].eq(c).double().mean()))
        out[k] = {c: {"mean": float(np.mean(v)) if v else None, "std": float(np.std(v)) if v else None,
                      "draws": v} for c, v in per_class.items()}
    return out


def compare(views: dict[str, ModelView], labels: np.ndarray, classnames: Sequence[str], forget: Sequence[str],
            aliases: dict[str, list[str]], template_names: tuple[str, str], probes: ProbeSetup | None = None,
            probe_test_labels: np.ndarray | None = None) -> dict:
    """Every audit measure for the three models, with the gap and a verdict per forget-class measure.

    ``views``: ``{"original", "unlearned", "reference"}`` -> ``ModelView``. Returns the
    ``reference`` section of ``audit.json``: ``per_class_top1`` (every class), ``rows`` (one per
    measure and forget class), ``confusion``, ``probes``, ``summary``, ``tolerances`` and ``headline``.
    """
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    classnames = list(classnames)
    forget = list(forget)
    ids = {c: classnames.index(c) for c in forget}
    rows: list[dict] = []

    # zero-shot: per class (every class), then each forget class under both template sets
    zs = {m: zero_shot_metrics(v.images, v.classifier, labels_t, classnames, forget) for m, v in views.items()}
    second = {m: zero_shot_metrics(v.images, v.second, labels_t, classnames, forget) for m, v in views.items()}
    per_class = {}
    for c in classnames:
        values = {m: zs[m]["overall"]["per_class"].get(c) for m in MODELS}
        cell = {**values, "gap": None if None in (values["unlearned"], values["reference"])
                else values["unlearned"] - values["reference"], "forgotten": c in ids}
        cell["verdict"] = judge(values["unlearned"], values["reference"], TOLERANCES["zero_shot_top1"]) \
            if c in ids else None
        per_class[c] = cell
    for c in forget:
        rows.append(_row("zero-shot", f"top-1, {template_names[0]} templates", c, "zero_shot_top1",
                         {m: zs[m]["overall"]["per_class"].get(c) for m in MODELS}))
        rows.append(_row("zero-shot", f"top-1, {template_names[1]} templates", c, "zero_shot_top1",
                         {m: second[m]["overall"]["per_class"].get(c) for m in MODELS}))
    retain_top1 = {m: zs[m]["retain"]["top1"] for m in MODELS}

    # where the forgotten images go (every class a candidate): the distance to the reference's shares
    preds = {m: _predictions(v, v.classifier) for m, v in views.items()}
    confusion = {}
    for c, i in ids.items():
        shares = {m: where_they_go(preds[m], labels_t, i, classnames) for m in MODELS}
        distance = {m: total_variation(shares[m], shares["reference"]) for m in MODELS}
        confusion[c] = {**shares, "distance_to_reference": distance}
        rows.append(_row("where its images go", "distance to the reference's shares", c, "confusion_distance",
                         distance, directed=False))

    # text search under its own name, at every depth
    depth_names = (("p_at_10", "P@10"), ("p_at_100", "P@100"), ("r_precision", "R-precision"),
                   ("bottom_100", "share of the 100 ranked last"), ("auc", "AUC"))
    for c in forget:
        found = {m: zs[m]["retrieval"]["per_class"].get(c, {}) for m in MODELS}
        for key, label in depth_names:
            rows.append(_row("text search, its name", label, c, f"search_{key}",
                             {m: found[m].get(key) for m in MODELS}))

    # held-out names: each alias, as the class's vector (top-1) and as a search query (AUC)
    for c in forget:
        for j, alias in enumerate(aliases.get(c, [])):
            top1, auc = {}, {}
            for m, v in views.items():
                vectors = v.alias_vectors.get(c)
                if vectors is None:
                    continue
                swapped = v.classifier.clone().float()
                swapped[ids[c]] = vectors[j].float()
                pred = _predictions(v, swapped)[labels_t.eq(ids[c])]
                top1[m] = float(pred.eq(ids[c]).double().mean()) if len(pred) else None
                auc[m] = search_ranking(v.images, vectors[j], labels_t, ids[c])["auc"]
            rows.append(_row("held-out names", f'top-1 as "{alias}"', c, "alias_top1", top1))
            rows.append(_row("held-out names", f'search AUC for "{alias}"', c, "alias_auc", auc))

    # k-shot probes (paired draws), then image-to-image search
    probe_table = None
    if probes is not None and all(v.probe_train is not None for v in views.values()):
        test_labels = torch.as_tensor(np.asarray(probe_test_labels), dtype=torch.long)
        recall = {m: probe_recall(v, probes, test_labels, len(classnames), list(ids.values()))
                  for m, v in views.items()}
        probe_table = {"train_on": probes.train_on, "seed": probes.seed,
                       "draws": len(next(iter(probes.pool.values()))) if probes.pool else 0,
                       "per_class": {c: {str(k): {m: recall[m][k][i] for m in MODELS} for k in probes.pool}
                                     for c, i in ids.items()}}
        for c, i in ids.items():
            for k in probes.pool:
                rows.append(_row("probes", f"{k}-shot linear probe, class recall", c, "probe_recall",
                                 {m: recall[m][k][i]["mean"] for m in MODELS}))
    for c, i in ids.items():
        found = {m: image_search(v.images, labels_t, i) for m, v in views.items()}
        for key, label in (("p_at_10", "P@10"), ("p_at_100", "P@100")):
            rows.append(_row("image-to-image search", label, c, f"image_search_{key}",
                             {m: (found[m] or {}).get(key) for m in MODELS}))

    summary = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    summary["measured"] = sum(r["verdict"] is not None for r in rows)
    return {"per_class_top1": per_class, "retain_top1": retain_top1, "rows": rows, "confusion": confusion,
            "probes": probe_table, "summary": summary, "tolerances": dict(TOLERANCES),
            "headline": reference_headline(rows, summary)}


def verdict_groups(rows: list[dict], verdict: str) -> list[str]:
    """The measure groups (text search by depth) with at least one row of ``verdict``, in table order."""
    return list(dict.fromkeys(f"{r['group']} {r['measure']}" if r["group"] == "text search, its name" else r["group"]
                              for r in rows if r["verdict"] == verdict))


def reference_headline(rows: list[dict], summary: dict) -> str:
    """One sentence: how many measures are as if never learnt, and which groups fall on which side."""
    measured = summary["measured"]
    if not measured:
        return "Against the reference: nothing measured."
    text = f"Against the reference: as if never learnt on {summary[AS_IF_NEVER_LEARNT]} of {measured} measures"
    for verdict in (MORE_FORGOTTEN, LESS_FORGOTTEN, UNLIKE):
        if summary[verdict]:
            text += f"; {verdict} on {summary[verdict]} ({'; '.join(verdict_groups(rows, verdict))})"
    return text + "."
