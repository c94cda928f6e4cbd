"""Targets on a metrics tree: what ``ccup eval`` thresholds and ``--alpha auto`` check.

Forgetting is measured two ways, and a target can be set on each:

- classification: ``max_forget_acc`` on the forget split's top-1;
- text search, per forget class, with its own query: ``max_forget_retrieval`` on the precision at
  every depth of the top of the ranking (P@10, P@100 and R-precision, i.e. precision at the
  class's own image count), and ``max_forget_auc_gap`` on ``|AUC - 0.5|``, which also catches a
  class pushed to the *bottom* of its ranking (AUC near 0: a reversed search finds it).

Messages name the threshold and the margin, one per failed target: precisions in %, AUC as a
probability (0.50 is chance).

One vocabulary for text search, here and in ``ccup audit``: a forget class's search is **GONE** when
it is at chance at every depth (``search_reading``), **found** when its images still rank at the top,
and **avoided** when they rank at the bottom (a reversed search finds them). ``ccup eval
--search-gone`` and the audit's search verdict apply the same thresholds (``SEARCH_GONE_*``); the
per-depth targets above are looser knobs for ``--alpha auto``, and their messages use the same words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# the top-of-ranking depths --max-forget-retrieval bounds: (metrics key, readable name)
RETRIEVAL_DEPTHS = (("p_at_10", "precision@10"), ("p_at_100", "precision@100"), ("r_precision", "R-precision"))
# --alpha auto without --max-forget-retrieval: search must no longer find the class (at most 2 of its
# top 10, and at most a fifth at 100 and at its own count); 1.0 switches the search target off
AUTO_MAX_FORGET_RETRIEVAL = 0.2
# Text search is GONE for a query when it is at chance at every depth: not found at the top (P@10,
# P@100), nor within its own class size (R-precision), nor avoided at the bottom (the 100 images
# ranked last), and |AUC - 0.5| small (an avoided class is found by reading the ranking backwards).
SEARCH_GONE_TOP = 0.10  # P@10 and P@100
SEARCH_GONE_DEPTH = 0.20  # R-precision and the share of the 100 ranked last
SEARCH_GONE_AUC_GAP = 0.15  # |AUC - 0.5|
INTACT_P_AT_10 = 0.5  # a chosen strength whose forget search still has this P@10 leaves search intact
AVOIDED_AUC = 0.35  # ... and one whose AUC is below this pushes the class to the bottom of its ranking


@dataclass(frozen=True)
class Targets:
    """Upper bounds, each a fraction or None (not checked)."""

    max_forget_acc: float | None = None
    max_forget_retrieval: float | None = None
    max_forget_auc_gap: float | None = None

    def describe(self) -> str:
        parts = []
        if self.max_forget_acc is not None:
            parts.append(f"forget top-1 <= {100 * self.max_forget_acc:.1f} %")
        if self.max_forget_retrieval is not None:
            parts.append(f"forget search precision@10, @100 and R-precision <= {100 * self.max_forget_retrieval:.1f} %")
        if self.max_forget_auc_gap is not None:
            parts.append(f"|forget search AUC - 0.5| <= {self.max_forget_auc_gap:g}")
        return ", ".join(parts) or "no target"


def _above(m: dict, key: str, limit: float) -> bool:
    return m.get(key) is not None and m[key] > limit


def search_found(m: dict) -> bool:
    """A query's ``ranking_metrics`` still rank its class's images at the top (beyond chance)."""
    return (_above(m, "p_at_10", SEARCH_GONE_TOP) or _above(m, "p_at_100", SEARCH_GONE_TOP)
            or _above(m, "r_precision", SEARCH_GONE_DEPTH) or _above(m, "auc", 0.5 + SEARCH_GONE_AUC_GAP))


def search_avoided(m: dict) -> bool:
    """A query ranks its class's images at the bottom, which a reversed search reads back."""
    return _above(m, "bottom_100", SEARCH_GONE_DEPTH) or (m.get("auc") is not None
                                                          and m["auc"] < 0.5 - SEARCH_GONE_AUC_GAP)


def search_reading(m: dict) -> str:
    """``"GONE"`` (at chance at every depth), ``"found at the top"`` or ``"avoided at the bottom"``
    (both, joined with "and", when a query does both)."""
    how = [w for w, hit in (("found at the top", search_found(m)), ("avoided at the bottom", search_avoided(m)))
           if hit]
    return " and ".join(how) or "GONE"


def search_gone_checks(metrics: dict, forget: Sequence[str]) -> list[tuple[bool, str]]:
    """``(held, message)`` per forget class: is its own text search GONE, as ``ccup audit`` reads it?"""
    checks = []
    for name in forget:
        m = metrics["retrieval"]["per_class"].get(name)
        if m is None:
            continue  # no image of the class: nothing to find
        reading = search_reading(m)
        figures = (f"P@10 {100 * m['p_at_10']:.1f} %, P@100 {100 * m['p_at_100']:.1f} %, "
                   f"bottom-100 {100 * (m.get('bottom_100') or 0):.1f} %, AUC {m['auc']:.2f}")
        if reading == "GONE":
            checks.append((True, f'text search for "{name}" GONE ({figures})'))
        else:
            checks.append((False, f'text search for "{name}" NOT GONE: {reading} ({figures}); --search-gone asks '
                                  f"for chance at every depth"))
    return checks


def search_misses(metrics: dict, forget: Sequence[str], max_forget_retrieval: float | None,
                  max_forget_auc_gap: float | None, flag_prefix: str = "--") -> list[tuple[str, float]]:
    """(message, margin) per forget class and search target that does not hold (see the module docstring)."""
    per_class = metrics["retrieval"]["per_class"]
    misses = []
    for name in forget:
        m = per_class.get(name)
        if m is None:
            continue  # no image of the class: nothing to find
        if max_forget_retrieval is not None:
            for key, label in RETRIEVAL_DEPTHS:
                value = m.get(key)
                if value is not None and value > max_forget_retrieval:
                    margin = value - max_forget_retrieval
                    misses.append((f'text search for "{name}" found at the top: {label} {100 * value:.1f} % is above '
                                   f"{flag_prefix}max-forget-retrieval {100 * max_forget_retrieval:.1f} % by "
                                   f"{100 * margin:.1f} points", margin))
        auc = m.get("auc")
        if max_forget_auc_gap is not None and auc is not None and abs(auc - 0.5) > max_forget_auc_gap:
            side = "found at the top" if auc > 0.5 else "avoided at the bottom"
            margin = abs(auc - 0.5) - max_forget_auc_gap
            misses.append((f'text search for "{name}" {side}: AUC {auc:.2f} (0.50 is chance) is '
                           f"{abs(auc - 0.5):.2f} from chance, beyond {flag_prefix}max-forget-auc-gap "
                           f"{max_forget_auc_gap:.2f} by {margin:.2f}", margin))
    return misses


def search_failures(metrics: dict, forget: Sequence[str], max_forget_retrieval: float | None,
                    max_forget_auc_gap: float | None) -> list[str]:
    """One message per forget class and search target that does not hold, naming threshold and margin."""
    return [msg for msg, _ in search_misses(metrics, forget, max_forget_retrieval, max_forget_auc_gap)]


def target_misses(metrics: dict, forget: Sequence[str], targets: Targets) -> list[tuple[str, float]]:
    """(message, margin) for every target of ``targets`` that ``metrics`` misses."""
    misses = []
    top1 = metrics["forget"]["top1"]
    if targets.max_forget_acc is not None and top1 is not None and top1 > targets.max_forget_acc:
        margin = top1 - targets.max_forget_acc
        misses.append((f"forget top-1 {100 * top1:.1f} % is above --max-forget-acc "
                       f"{100 * targets.max_forget_acc:.1f} % by {100 * margin:.1f} points", margin))
    return misses + search_misses(metrics, forget, targets.max_forget_retrieval, targets.max_forget_auc_gap)


def target_failures(metrics: dict, forget: Sequence[str], targets: Targets) -> list[str]:
    """Every target of ``targets`` that ``metrics`` misses, one message each."""
    return [msg for msg, _ in target_misses(metrics, forget, targets)]


def search_warnings(metrics: dict, forget: Sequence[str], alpha: float) -> list[str]:
    """What a chosen strength leaves of search: a class still found at the top, or pushed to the bottom."""
    warnings = []
    for name in forget:
        m = metrics["retrieval"]["per_class"].get(name)
        if m is None:
            continue
        if m["p_at_10"] >= INTACT_P_AT_10:
            warnings.append(f'text search for "{name}" is left intact at alpha {alpha:g}: precision@10 '
                            f"{m['p_at_10']:.2f}; lower --max-forget-retrieval (e.g. 0.2)")
        elif m["auc"] < AVOIDED_AUC:
            warnings.append(f'text search for "{name}" ranks its images below chance at alpha {alpha:g} (AUC '
                            f"{m['auc']:.2f}; 0.50 is chance): reading the ranking backwards finds them; "
                            "--max-forget-auc-gap 0.15 asks for chance")
    return warnings
