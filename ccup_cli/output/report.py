"""Reports as strict JSON (what goes in them: ``provenance.py``) and the rich tables people read."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic


def _finite(value: Any) -> Any:
    """NaN and inf become null: the report stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(report: dict) -> str:
    return json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"


def dumps_line(record: dict) -> str:
    """One compact strict-JSON line (for JSONL files)."""
    return json.dumps(_finite(record), allow_nan=False, separators=(",", ":")) + "\n"


def write_report(path: str | Path, report: dict, overwrite: bool = True) -> None:
    """Write ``report`` atomically; ``overwrite`` False never replaces a file that appeared meanwhile."""
    write_text_atomic(path, dumps(report), overwrite, what="report")


# --- rendering -------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _decimal(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.1f}"


ROWS = (  # (path in a metrics tree, label); a row shows where its value exists; every value is a share, shown in %
    ("forget.top1", "forget top-1 % (lower is better)"),
    ("retain.top1", "retain top-1 %, all classes"),
    ("retain_only.top1", "retain top-1 %, retain classes only"),
    ("overall.top1", "overall top-1 %"),
    ("retain.mean_per_class_recall", "retain mean per-class recall %"),
    ("retrieval.forget.p_at_10", "forget text search P@10 % (lower is better)"),
    ("retrieval.forget.p_at_100", "forget text search P@100 % (lower is better)"),
    ("retrieval.forget.r_precision", "forget search R-precision % (lower is better)"),
    ("retrieval.forget.bottom_100", "forget search bottom-100 % (lower is better)"),
    ("retrieval.retain.p_at_100", "retain text search P@100 %"),
)
RANK_LABEL = "forget true-class mean rank (1 = first; not a %)"


def _at(tree: dict | None, path: str):
    for part in path.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


def metrics_table(metrics: dict, title: str, measured: str = "measured"):
    """Before / after / change for forget, retain and overall accuracy and text search, each labelled with its
    unit (% rows change in points, the rank row in ranks). With one model (no ``after``) the single
    column is labelled ``measured``."""
    from rich.table import Table

    before, after, change = metrics.get("before", {}), metrics.get("after"), metrics.get("delta")
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("before" if after is not None else measured, justify="right")
    if after is not None:
        table.add_column("after", justify="right")
        table.add_column("change", justify="right")
    for path, label in ROWS:
        if _at(before, path) is None:
            continue
        row = [label, _pct(_at(before, path))]
        if after is not None:
            delta = _signed(_at(change, path))
            row += [_pct(_at(after, path)), delta if delta == "—" else f"{delta} pt"]
        table.add_row(*row)
    if before.get("forget", {}).get("mean_true_class_rank") is not None:
        row = [RANK_LABEL, f"{before['forget']['mean_true_class_rank']:.2f}"]
        if after is not None:
            r = after["forget"]["mean_true_class_rank"]
            row += [f"{r:.2f}", f"{r - before['forget']['mean_true_class_rank']:+.2f}"]
        table.add_row(*row)
    auc = _at(before, "retrieval.forget.auc")
    if auc is not None:  # a probability, not a percentage: 0.50 is chance, 0 avoided, 1 found
        row = ["forget search AUC (0.50 = chance; not a %)", f"{auc:.2f}"]
        if after is not None:
            row += [f"{_at(after, 'retrieval.forget.auc'):.2f}", f"{_at(change, 'retrieval.forget.auc'):+.2f}"]
        table.add_row(*row)
    return table


def domain_grid(metrics: dict, spec: dict) -> tuple[list[str], set[str], list[str], dict]:
    """The class × domain grid of top-1: ``(domains, forgotten domains, classes, {class: {domain: (before,
    after)}})``, for the forget classes (every class when a whole domain is forgotten)."""
    before, after = metrics["before"], metrics.get("after") or {}
    domains = list(before.get("domains", {}))
    classes = spec.get("forget") or list(before["overall"]["per_class"])
    cells = {}
    for c in classes:
        cells[c] = {}
        for d in domains:
            a = _at(after, f"domains.{d}.overall.per_class")
            cells[c][d] = (before["domains"][d]["overall"]["per_class"].get(c), a.get(c) if isinstance(a, dict) else None)
    return domains, set(spec.get("forget_domains") or []), classes, cells


def collateral(metrics: dict, spec: dict) -> list[tuple[str, str, float]]:
    """``(class, domain, change)`` of top-1 in every cell of the grid that was *not* forgotten, largest
    loss first: what a domain forget cost the cells meant to stay."""
    domains, forgotten, classes, cells = domain_grid(metrics, spec)
    out = [(c, d, a - b) for c in classes for d in domains if d not in forgotten
           for b, a in [cells[c][d]] if a is not None and b is not None]
    return sorted(out, key=lambda row: row[2])


def domain_grid_table(metrics: dict, spec: dict):
    """Class × domain grid of before → after top-1 for the forget classes (all classes when a
    whole domain is forgotten); forgotten cells are marked ✗."""
    from rich.table import Table

    domains, forget_domains, classes, cells = domain_grid(metrics, spec)
    after = metrics.get("after")
    title = "top-1 % by class and domain" + (", before → after" if after else "")
    table = Table(title=title, title_justify="left")
    table.add_column("class")
    for d in domains:
        table.add_column(d + (" ✗" if d in forget_domains else ""), justify="right")
    for c in classes:
        table.add_row(c, *[f"{_pct(b)} → {_pct(a)}" if after else _pct(b) for b, a in cells[c].values()])
    return table


def concept_line(concept: dict) -> str:
    """``covers sandal (z 5.1), sneaker (z 4.8); not bag (z 1.2)``: what a concept covered, and why."""
    how = concept["decided_by"]
    if how == "no eval dataset":
        return "forgotten as a name (no eval dataset to cover)"
    sims = {s["class"]: s for s in concept.get("similarity", [])}

    def named(c: str) -> str:
        return f'{c} (z {sims[c]["z"]:.1f})' if c in sims else c

    covers = ", ".join(named(c) for c in concept["covers"]) or "no class"
    outside = [s for s in concept.get("similarity", []) if s["class"] not in concept["covers"]][:1]
    nearest_out = f'; next: {named(outside[0]["class"])}' if outside else ""
    by = {"user": " (named by you)", "class name": " (a class name)"}.get(how, "")
    return f"covers {covers}{by}{nearest_out}"


def near_line(near: dict, shown: int = 6) -> str:
    """The default-vocabulary names near a forget name: ``12: sandal (z 6.1), clogs (z 5.8), ...``."""
    names = ", ".join(f'{r["name"]} (z {r["z"]:.1f})' for r in near["near"][:shown])
    more = ", ..." if len(near["near"]) > shown else ""
    return f"{len(near['near'])} of {near['size']} default names: {names}{more} (report.json lists all)"


def summary_table(report: dict):
    """The projector and outputs of an unlearn run, without images."""
    from rich.table import Table

    proj = report["projector"]
    table = Table(title="ccup unlearn", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    spec = report["spec"]
    source = report["model"]["pretrained"] or "random init"
    table.add_row("model", report["model"]["name"] if source in ("embedded", report["model"]["name"])
                  else f"{report['model']['name']} ({source})")
    table.add_row("forget", ", ".join(spec["forget"]) or ("—" if spec.get("forget_concepts") else "every class"))
    if spec.get("forget_domains"):
        table.add_row("in domains", ", ".join(spec["forget_domains"]))
    if spec.get("forget_prompts"):
        table.add_row("forget prompts", str(len(spec["forget_prompts"])))
    for concept in (report.get("concepts") or {}).get("per_concept", []):
        table.add_row(f'concept "{concept["concept"]}"', concept_line(concept))
    table.add_row("retain", f"{report['text']['retain_classes']} classes")
    near = report.get("retain_vocabulary")
    if near and near["near"]:
        table.add_row("kept though near" if near["kept_by_user"] else "left out (near)", near_line(near))
    if proj["method"] == "finetune":
        ft = report["finetune"]
        table.add_row("method", f"finetune: {ft['steps']} of {ft['step_budget']} steps, {ft['images_seen']} images")
    else:
        auto = " (auto)" if report.get("auto_alpha") else ""
        table.add_row("method / alpha", f"{proj['method']} / {proj['alpha']}{auto}")
        if proj.get("params", {}).get("sink"):
            table.add_row("sink", proj["params"]["sink"])
        table.add_row("rank of I − W", str(proj["rank"]))
        refs = report.get("reference_images")
        if refs:
            table.add_row("reference images", f"{refs['count']} (pseudo-labelled by the original model)")
            for name, fact in refs.get("sink", {}).get("per_class", {}).items():
                scale = fact.get("scale")
                length = "" if scale in (None, 1.0) else f", length {scale:.1f}"
                estimated = (f"; too few are {name}: estimated on {fact.get('calibrated_on')} stand-ins"
                             if fact.get("estimated") else "")
                if fact.get("guard_met") is False:
                    estimated += "; still wins zero-shot on the references (the guard ran out of steps)"
                table.add_row(f"  {name}", f"γ {fact['gamma']:.3f}{length}: reference AUC {fact['auc']:.2f}, bottom "
                              f"share {fact['bottom_share']:.2f} (base rate {fact['base_rate']:.2f}){estimated}")
            if refs.get("erase"):
                table.add_row("erase", f"probe: LEACE, rank {refs['erase']['rank']}, fitted on "
                              f"{refs['erase']['fitted_on']} references")
    side = proj.get("fold_side", "image")
    table.add_row("fold site", proj["fold_site"] if side == "image" else f"{proj['fold_site']} (text side)")
    if report.get("outputs"):
        table.add_row("written", str(report["outputs"]["folder"]))
    return table


def sweep_table(rows: list[dict], title: str):
    """One row per (method, α): forget, retain and retain-only top-1."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("method", "α", "forget top-1 %", "retain top-1 %", "retain-only top-1 %", "forget mean rank",
                "forget search P@10 %", "forget search AUC"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        m = r["metrics"]
        rank = m["forget"].get("mean_true_class_rank")
        table.add_row(r["method"], f"{r['alpha']:g}", _pct(m["forget"]["top1"]), _pct(m["retain"]["top1"]),
                      _pct(m["retain_only"]["top1"]), "—" if rank is None else f"{rank:.2f}",
                      _pct(_at(m, "retrieval.forget.p_at_10")), _decimal(_at(m, "retrieval.forget.auc")))
    return table
