"""What ``ccup audit`` measures, from image features already encoded (no model, no files).

Every function takes projected image features ``[n, d]`` (before = original model, after =
patched) and normalised text vectors, so one pass over the images serves every part:
zero-shot under other names and templates, text search by name and by alias, where the
forgotten classes' images went, and the verdict that sums it up.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics.targets import (
    SEARCH_GONE_AUC_GAP,
    SEARCH_GONE_DEPTH,
    SEARCH_GONE_TOP,
    search_avoided,
    search_found,
)
from ..metrics.zero_shot import LOGIT_SCALE, RANKING_KEYS, ranking_metrics, zero_shot_metrics

# The verdict's thresholds (fractions). Zero-shot uses the issues' target; a probe "recovers" a class
# when it gets this share of what the same probe gets on the original model. Search is gone when every
# forget query is at chance at every depth: metrics.targets holds that rule (ccup eval --search-gone
# applies the same one).
ZERO_SHOT_GONE = 0.05
# an alias the original model clearly recognises: its class's top-1 (recall in the contest with the
# other class names) at least this high before; it is "gone after" at ZERO_SHOT_GONE or below
ALIAS_RECOGNISED = 0.5
SEARCH_GONE_P100 = SEARCH_GONE_TOP  # P@10 and P@100
PROBE_RECOVERED_SHARE = 0.8

HONEST_STATEMENT = (
    "A linear map at the end of one tower removes zero-shot recognition of the forgotten classes. Text "
    "search is GONE only where its verdict says so: the default sink avoids the class at the bottom of its "
    "search (a reversed search finds it). It does not remove what a probe trained on labelled images can "
    "decode: the information stays linearly decodable.")


def _logits(features: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
    return LOGIT_SCALE * F.normalize(features.float(), dim=-1) @ class_embeddings.float().T


def split_top1(features: torch.Tensor, class_embeddings: torch.Tensor, labels: np.ndarray,
               classnames: Sequence[str], forget: Sequence[str]) -> dict:
    """Forget and retain top-1 (every class a candidate), text search for every class (``retrieval``)
    and, under ``forget_search``, each forget class's own search at every depth."""
    m = zero_shot_metrics(features, class_embeddings, labels, classnames, forget)
    per_class = m["retrieval"]["per_class"]
    return {"forget_top1": m["forget"]["top1"], "retain_top1": m["retain"]["top1"],
            "per_class": m["overall"]["per_class"], "retrieval": m["retrieval"],
            "forget_search": {c: per_class[c] for c in forget if c in per_class}}


def alias_classifier(class_embeddings: torch.Tensor, classnames: Sequence[str],
                     alias_vectors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The classifier with each aliased class represented by the mean of its alias vectors ``[a, d]``."""
    out = class_embeddings.clone().float()
    for name, vectors in alias_vectors.items():
        out[list(classnames).index(name)] = F.normalize(vectors.float().mean(dim=0), dim=-1)
    return out


def alias_rows(before: torch.Tensor, after: torch.Tensor, class_embeddings: torch.Tensor, labels: np.ndarray,
               classnames: Sequence[str], aliases: dict[str, list[str]],
               alias_vectors: dict[str, torch.Tensor]) -> list[dict]:
    """One row per alias: the class's top-1 when only its vector is replaced by the alias's, and
    text search with the alias as the query (``search_ranking``), before and after."""
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    rows = []
    for name, names in aliases.items():
        c = list(classnames).index(name)
        mine = labels_t.eq(c)
        for alias, vector in zip(names, alias_vectors[name]):
            row = {"class": name, "alias": alias}
            for when, feats in (("before", before), ("after", after)):
                swapped = class_embeddings.clone().float()
                swapped[c] = vector.float()
                pred = _logits(feats, swapped).argmax(dim=1)
                top1 = float(pred[mine].eq(c).double().mean()) if bool(mine.any()) else None
                row[when] = {"top1": top1, **search_ranking(feats, vector, labels_t, c)}
            rows.append(row)
    return rows


def search_ranking(features: torch.Tensor, query: torch.Tensor, labels: torch.Tensor, class_id: int) -> dict:
    """Text-to-image search with one query vector ``[d]``: where the images of ``class_id`` rank, at every
    depth (``evaluate.ranking_metrics``: P@10, P@100, R@100, R-precision, bottom-100, AUC); None each
    when the class has no image or every image."""
    scores = F.normalize(features.float(), dim=-1) @ F.normalize(query.float(), dim=-1)
    mine = labels.eq(class_id)
    if not 0 < int(mine.sum()) < len(labels):
        return {k: None for k in RANKING_KEYS}
    m = ranking_metrics(scores[None], mine[None])
    return {k: float(m[k][0]) for k in RANKING_KEYS}


def confusion_shift(before: torch.Tensor, after: torch.Tensor, class_embeddings: torch.Tensor, labels: np.ndarray,
                    classnames: Sequence[str], forget: Sequence[str]) -> dict:
    """For each forget class, the share of its images predicted as each class, before and after."""
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    out = {}
    preds = {when: _logits(f, class_embeddings).argmax(dim=1) for when, f in (("before", before), ("after", after))}
    for name in forget:
        c = list(classnames).index(name)
        mine = labels_t.eq(c)
        n = int(mine.sum())
        out[name] = {"n": n}
        for when, pred in preds.items():
            counts = torch.bincount(pred[mine], minlength=len(classnames)).double()
            shares = (counts / max(n, 1)).tolist()
            out[name][when] = {classnames[i]: round(s, 4) for i, s in enumerate(shares) if s > 0}
    return out


def verdict(zero_shot: list[dict], aliases: list[dict], probes: dict | None,
            forget: Sequence[str] | None = None) -> dict:
    """The headline: is the class gone for zero-shot, for text search, for a probe?

    Only aliases of the forget classes count, and only those the original model recognised: an alias
    it never classified (top-1 at most ``ZERO_SHOT_GONE`` before) says nothing about forgetting, nor
    does a search it never answered (P@100 at most ``SEARCH_GONE_P100`` before). Those are listed apart.
    """
    mine = [r for r in aliases if forget is None or r["class"] in forget]
    recognised = [r for r in mine if (r["before"]["top1"] or 0) > ZERO_SHOT_GONE]
    found = [r for r in mine if (r["before"]["p_at_100"] or 0) > SEARCH_GONE_P100]
    worst_zs = max((r["after"]["forget_top1"] for r in zero_shot if r["after"]["forget_top1"] is not None),
                   default=None)
    worst_alias = max((r["after"]["top1"] for r in recognised if r["after"]["top1"] is not None), default=None)
    zs = max(v for v in (worst_zs, worst_alias) if v is not None) if (worst_zs, worst_alias) != (None, None) \
        else None
    queries = [m for r in zero_shot for m in r["after"]["forget_search"].values()]
    queries += [r["after"] for r in found if r["after"].get("auc") is not None]
    result = {
        "zero_shot_removed": zs is not None and zs <= ZERO_SHOT_GONE,
        "worst_forget_top1": zs,
        **search_verdict(queries),
        "template_sets": sum(r["names"] == "class names" for r in zero_shot),
        "aliases_counted": len(recognised),
        **alias_tally(mine),
        "aliases_not_recognised_before": [{"class": r["class"], "alias": r["alias"], "top1_before": r["before"]["top1"],
                                           "p_at_100_before": r["before"]["p_at_100"]}
                                          for r in mine if r not in recognised],
        "probe_recovers": None, "probe_k": None, "probe_forget_patched": None, "probe_forget_original": None,
        "thresholds": {"zero_shot_top1": ZERO_SHOT_GONE, "search_p_at_10_and_100": SEARCH_GONE_P100,
                       "search_r_precision_and_bottom_100": SEARCH_GONE_DEPTH,
                       "search_auc_gap": SEARCH_GONE_AUC_GAP, "probe_recovered_share": PROBE_RECOVERED_SHARE,
                       "alias_recognised_top1": ALIAS_RECOGNISED},
    }
    if probes and probes.get("patched"):
        last_p, last_o = probes["patched"][-1], probes["original"][-1]
        fp, fo = last_p["forget"]["mean"], last_o["forget"]["mean"]
        result.update(probe_k=last_p["k"], probe_forget_patched=fp, probe_forget_original=fo,
                      probe_recovers=None if fp is None or not fo else fp >= PROBE_RECOVERED_SHARE * fo)
    result["headline"] = headline(result)
    return result


def alias_tally(rows: list[dict]) -> dict:
    """Of the forget classes' aliases: how many the original recognised (top-1 at least ALIAS_RECOGNISED),
    how many of those are gone after (top-1 at most ZERO_SHOT_GONE), and which are not."""
    strong = [r for r in rows if (r["before"]["top1"] or 0) >= ALIAS_RECOGNISED]
    kept = [r for r in strong if (r["after"]["top1"] or 0) > ZERO_SHOT_GONE]
    return {"aliases_recognised_before": len(strong), "aliases_gone_after": len(strong) - len(kept),
            "aliases_still_recognised": [{"class": r["class"], "alias": r["alias"], "top1_before": r["before"]["top1"],
                                          "top1_after": r["after"]["top1"]} for r in kept]}


def search_verdict(queries: list[dict]) -> dict:
    """Is each forget query (a class name or an alias, after unlearning) at chance at every depth?

    ``queries``: ``ranking_metrics`` dicts. ``search_found``: some query still ranks its images at the
    top (P@10 or P@100 above SEARCH_GONE_P100, R-precision above SEARCH_GONE_DEPTH, or AUC above
    0.5 + SEARCH_GONE_AUC_GAP); ``search_avoided``: some query ranks them at the bottom (bottom-100
    above SEARCH_GONE_DEPTH or AUC below 0.5 - SEARCH_GONE_AUC_GAP), which a reversed search reads
    back. ``search_removed``: neither, for every query.
    """
    def worst(key):
        return max((q[key] for q in queries if q.get(key) is not None), default=None)

    aucs = [q["auc"] for q in queries if q.get("auc") is not None]
    found = any(search_found(q) for q in queries)
    avoided = any(search_avoided(q) for q in queries)
    return {"search_removed": bool(queries) and not found and not avoided, "search_found": found,
            "search_avoided": avoided, "worst_forget_p_at_100": worst("p_at_100"),
            "worst_forget_r_precision": worst("r_precision"), "worst_forget_bottom_100": worst("bottom_100"),
            "forget_auc_range": [min(aucs), max(aucs)] if aucs else None}


def check_failures(v: dict) -> list[str]:
    """What ``ccup audit --check`` fails on: every verdict that is not GONE, one line each.

    Zero-shot and text search must be GONE; a probe that was run must not recover the class. Probes
    that were not run are not checked (the verdict says "not measured").
    """
    failures = []
    if not v["zero_shot_removed"]:
        failures.append(f"zero-shot recognition NOT GONE (worst forget top-1 {_pct(v['worst_forget_top1'])}, above "
                        f"{_pct(ZERO_SHOT_GONE)})")
    if not v["search_removed"]:
        failures.append(search_headline(v))
    if v.get("probe_recovers"):
        failures.append(f"RECOVERABLE by a {v['probe_k']}-shot linear probe (forget {_pct(v['probe_forget_patched'])}"
                        f" vs {_pct(v['probe_forget_original'])} on the original)")
    return failures


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def search_headline(v: dict) -> str:
    """The search part of the headline: gone means at chance at every depth, both ends of the ranking."""
    auc = v.get("forget_auc_range")
    depths = (f"worst forget P@100 {_pct(v['worst_forget_p_at_100'])}, R-precision "
              f"{_pct(v.get('worst_forget_r_precision'))}, share of the 100 ranked last "
              f"{_pct(v.get('worst_forget_bottom_100'))}"
              + (f", AUC {auc[0]:.2f}–{auc[1]:.2f} (0.50 = chance)" if auc else ""))
    if v["search_removed"]:
        return f"GONE for text search (at chance at every depth: {depths})"
    how = [w for w, hit in (("still found at the top", v.get("search_found")),
                            ("avoided at the bottom, so a reversed search finds it", v.get("search_avoided"))) if hit]
    return f"NOT GONE for text search ({' and '.join(how) or 'not measured'}: {depths})"


def headline(v: dict) -> str:
    """One sentence a person reads first; it names what was tried, nothing more."""
    under = f"the class names in {_count(v.get('template_sets', 1), 'template set')}"
    if v.get("aliases_counted"):
        under += f" and {_count(v['aliases_counted'], 'alias')} the original model recognised"
    parts = [("GONE" if v["zero_shot_removed"] else "NOT GONE") + " for zero-shot recognition "
             f"(worst forget top-1 {_pct(v['worst_forget_top1'])} under {under})",
             search_headline(v)]
    if v["probe_recovers"] is not None:
        parts.append(("RECOVERABLE" if v["probe_recovers"] else "not recovered") + f" by a {v['probe_k']}-shot "
                     f"linear probe (forget {_pct(v['probe_forget_patched'])} vs {_pct(v['probe_forget_original'])} "
                     "on the original)")
    else:
        parts.append("recoverability not measured (no probe)")
    text = "; ".join(parts) + "."
    if v.get("aliases_recognised_before"):
        text += (f" Aliases recognised before (top-1 ≥ {_pct(ALIAS_RECOGNISED)}): {v['aliases_recognised_before']}; "
                 f"gone after (≤ {_pct(ZERO_SHOT_GONE)}): {v['aliases_gone_after']}.")
    skipped = v.get("aliases_not_recognised_before") or []
    if skipped:
        text += (f" Not counted: {_count(len(skipped), 'alias')} the original model did not recognise either ("
                 + ", ".join(f'"{a["alias"]}" {_pct(a["top1_before"])} top-1 before' for a in skipped) + ").")
    return text
