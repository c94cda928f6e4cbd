"""The three-way comparison for people: a markdown section of ``audit.md`` and a rich table.

Same rows as ``audit.json``'s ``reference`` section (``audit/reference.py``): original,
unlearned, reference, the gap (unlearned − reference) and the verdict, per measure.
"""

from __future__ import annotations

from .reference import AS_IF_NEVER_LEARNT, LESS_FORGOTTEN, MORE_FORGOTTEN, UNLIKE

PERCENT_KEYS = ("zero_shot_top1", "alias_top1", "search_p_at_10", "search_p_at_100", "search_r_precision",
                "search_bottom_100", "probe_recall", "image_search_p_at_10", "image_search_p_at_100")


def _value(v, key: str) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}" if key in PERCENT_KEYS else f"{v:.2f}"


def _gap(v, key: str) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:+.1f}" if key in PERCENT_KEYS else f"{v:+.2f}"


def _tolerance(row: dict) -> str:
    t = row["tolerance"]
    return f"±{100 * t:.0f}" if row["key"] in PERCENT_KEYS else f"±{t:.2f}"


def _shares(shares: dict) -> str:
    top = sorted(shares.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{c} {100 * s:.0f}" for c, s in top) or "none"


def measure_cells(row: dict) -> list[str]:
    """One table row: subject, measure, the three values, gap, tolerance, verdict."""
    key = row["key"]
    return [row["subject"], f"{row['group']}: {row['measure']}", _value(row["original"], key),
            _value(row["unlearned"], key), _value(row["reference"], key), _gap(row["gap"], key), _tolerance(row),
            row["verdict"] or "not measured"]


HEADER = ["class", "measure", "original", "unlearned", "reference", "gap", "tolerance", "verdict"]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def reference_markdown(report: dict) -> list[str]:
    """The ``audit.md`` section: what the reference is, the verdict legend, then the tables."""
    ref = report.get("reference")
    if not ref:
        return []
    model = ref["model"]
    card = model.get("card") or {}
    left = (f" It was trained without {', '.join(card['without'])} (its training log names "
            f"{len(card.get('left_out_names') or [])} left-out names)." if card.get("without") else "")
    out = ["## Against a model that never learnt it", "",
           f"**{ref['headline']}**", "",
           f"Reference: `{model['given']}` ({model['backend']}, sha256 `{(model['sha256'] or 'none')[:12]}…`), "
           f"measured with its own image and text towers on the same images, templates, names and probe draws.{left}",
           "",
           f"Verdicts: *{AS_IF_NEVER_LEARNT}* is within the tolerance of the reference; *{MORE_FORGOTTEN}* is "
           "further from recognising the class than the reference (a class ranked at the bottom of its own search "
           f"is one: a reversed search finds it); *{LESS_FORGOTTEN}* is nearer recognising it; where the images "
           f"go has no direction, so it is *{UNLIKE}* when the shares differ (total-variation distance). Values in "
           "%, AUC and distances as decimals; gap = unlearned − reference. One retrained seed is one draw of the "
           "yardstick, and the tolerances are not a significance test.", "",
           _table(HEADER, [measure_cells(r) for r in ref["rows"]]), ""]
    per_class = ref["per_class_top1"]
    out += ["Per-class zero-shot top-1 %, every class:", "",
            _table(["class", "original", "unlearned", "reference", "gap"],
                   [[c + (" ✗" if v["forgotten"] else ""), _value(v["original"], "zero_shot_top1"),
                     _value(v["unlearned"], "zero_shot_top1"), _value(v["reference"], "zero_shot_top1"),
                     _gap(v["gap"], "zero_shot_top1")] for c, v in per_class.items()]), ""]
    out += ["Where the forgotten images go (top predictions, %):", "",
            _table(["class", "original", "unlearned", "reference"],
                   [[c, _shares(v["original"]), _shares(v["unlearned"]), _shares(v["reference"])]
                    for c, v in ref["confusion"].items()]), ""]
    return out


def reference_table(report: dict):
    """The three-way comparison as one rich table for the terminal."""
    from rich.table import Table

    ref = report["reference"]
    table = Table(title=f"against the reference {ref['model']['given']}: forget {', '.join(report['forget'])}",
                  title_justify="left")
    for col in ("class", "measure", "original", "unlearned", "reference", "gap", "verdict"):
        table.add_column(col, justify="right" if col in ("original", "unlearned", "reference", "gap") else "left")
    for row in ref["rows"]:
        cells = measure_cells(row)
        table.add_row(*cells[:6], cells[7])  # the tolerances are in audit.md and audit.json
    return table
