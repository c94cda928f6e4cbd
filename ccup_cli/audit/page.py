"""Pages people paste: ``audit.md`` (verdict first, then tables, then where the details are) and the
``README.md`` summary of an unlearn output folder (model-card tone: what was done, with what,
what it measured). Each page's figures are written beside it; without matplotlib a page says so.
"""

from __future__ import annotations

from pathlib import Path

from ..output import report as rep
from ..output.atomic import CommitReceipt, atomic_dir, replaced_warning
from ..output.portable import portable_path
from .figures import ALIAS_RECOGNISED, HONEST_STATEMENT, ZERO_SHOT_GONE
from .reference_page import reference_markdown

AUDIT_FIGURES = {"per_class": "per_class_top1.png", "confusion": "confusion_shift.png",
                 "retrieval": "retrieval.png", "probes": "probe_accuracy.png"}
UNLEARN_FIGURES = {"per_class": "per_class_top1.png"}


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _dec(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def _pm(cell: dict) -> str:
    return "n/a" if cell["mean"] is None else f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def leace_sentence(status: str | None) -> str:
    """One sentence on what LEACE is, why its row is there, and whether it was measured."""
    what = ("LEACE (least-squares concept erasure, Belrose et al. 2023) is provable linear erasure: fitted on "
            "labelled images of the forgotten classes, it makes their indicator linearly unpredictable on those "
            "images, so its row shows what the same probes find after an eraser that uses such images; ccup uses "
            "none")
    if status == "measured":
        return what + "; a comparison, not what ccup does."
    if status == "not installed":
        return what + "; not measured here: pip install 'ccup[audit]' adds it."
    return what + "; not measured here (--no-leace)."


def audit_markdown(report: dict, figures: dict[str, str]) -> str:
    """The audit page: the verdict, then the tables, then where the details are."""
    v = report["verdict"]
    ds = report["dataset"]
    out = [f"# ccup audit: forget {', '.join(report['forget'])}", "",
           f"**Verdict:** {v['headline']}", "", f"> {HONEST_STATEMENT}", "",
           f"Model `{report['model']['name']}` against `{Path(report['patched']['path']).parent.name}/"
           f"{Path(report['patched']['path']).name}` (sha256 `{report['patched']['sha256'][:12]}…`), "
           f"on {ds['name']} {ds['split']} ({ds['n_images']} images).", ""]
    out += ["## Zero-shot under other names and templates", "",
            _table(["class names", "templates", "forget top-1 before %", "forget top-1 after %",
                    "retain top-1 before %", "retain top-1 after %"],
                   [[r["names"], r["templates"], _pct(r["before"]["forget_top1"]), _pct(r["after"]["forget_top1"]),
                     _pct(r["before"]["retain_top1"]), _pct(r["after"]["retain_top1"])] for r in report["zero_shot"]]),
            ""]
    grid = report.get("domain_grid")
    if grid:
        b, a = grid["before"], grid["after"]
        domains = list(b["domain_top1"])
        rows = [[c] + [f"{_pct(b['grid'][c][d])} → {_pct(a['grid'][c][d])}" for d in domains] for c in b["grid"]]
        rows.append(["**all classes**"] + [f"{_pct(b['domain_top1'][d])} → {_pct(a['domain_top1'][d])}"
                                           for d in domains])
        out += [f"## Class × domain top-1 %, before → after (forgotten in {', '.join(grid['forget_domains'])})",
                "", f"Forgotten cells: {_pct(b['forgotten_cells_top1'])} → {_pct(a['forgotten_cells_top1'])} %.", "",
                _table(["class"] + [d + (" ✗" if d in grid["forget_domains"] else "") for d in domains], rows), ""]
    zs = report["zero_shot"][0]
    skipped = {(a["class"], a["alias"]) for a in v.get("aliases_not_recognised_before") or []}
    forget = set(report["forget"])
    named = [(f"{c} (name)", zs["before"]["retrieval"]["per_class"][c], zs["after"]["retrieval"]["per_class"][c],
              None) for c in report["forget"] if c in zs["before"]["retrieval"]["per_class"]]
    named += [(f"{r['class']} as \"{r['alias']}\"", r["before"], r["after"], r) for r in report["alias_rows"]]

    def counted(r) -> str:
        if r is None:
            return "yes"
        if r["class"] not in forget:
            return "no: a kept class"
        return "no: not recognised before" if (r["class"], r["alias"]) in skipped else "yes"

    search_rows = [[query, _pct(b["p_at_10"]), _pct(a["p_at_10"]), _pct(b["p_at_100"]), _pct(a["p_at_100"]),
                    _pct(b.get("r_precision")), _pct(a.get("r_precision")), _pct(b.get("bottom_100")),
                    _pct(a.get("bottom_100")), _dec(b.get("auc")), _dec(a.get("auc")),
                    "in the table above" if r is None else _pct(r["before"]["top1"]),
                    "in the table above" if r is None else _pct(r["after"]["top1"]), counted(r)]
                   for query, b, a, r in named]
    out += ["## Text search and aliases", "",
            "Where each query ranks its own class's images, at every depth: the first 10 and 100, the first "
            "*n* (R-precision, *n* the class's image count), the 100 ranked *last*, and the AUC (the chance "
            "that one of its images outranks another image: 0.50 is chance, 0 means the search avoids the "
            "class, so reading it backwards finds it). Chance precision is the class's share of the images.", "",
            _table(["query", "P@10 before %", "after %", "P@100 before %", "after %", "R-precision before %",
                    "after %", "bottom-100 before %", "after %", "AUC before", "after",
                    "class top-1 before %", "after %", "counted in the verdict"], search_rows), "",
            "Class top-1 of an alias: the class's zero-shot top-1 when only its class vector is replaced by the "
            "alias's. An alias counts towards the verdict only for a forgotten class, and only when the original "
            f"model recognised it (top-1 above {100 * ZERO_SHOT_GONE:.0f} % before): a name it never knew cannot "
            "show forgetting.", ""]
    if v.get("aliases_recognised_before"):
        still = v.get("aliases_still_recognised") or []
        out += [f"Aliases of the forget classes that the original recognised (class top-1 ≥ "
                f"{100 * ALIAS_RECOGNISED:.0f} %): **{v['aliases_recognised_before']}**; gone after (≤ "
                f"{100 * ZERO_SHOT_GONE:.0f} %): **{v['aliases_gone_after']}**"
                + ("." if not still else "; still recognised: " + ", ".join(
                    f"{a['class']} as \"{a['alias']}\" {_pct(a['top1_after'])} %" for a in still) + "."), ""]
    conf_rows = []
    for name, shares in report["confusion"].items():
        top_after = sorted(shares["after"].items(), key=lambda kv: -kv[1])[:3]
        top_before = sorted(shares["before"].items(), key=lambda kv: -kv[1])[:3]
        conf_rows.append([name, ", ".join(f"{t} {100 * s:.0f}" for t, s in top_before),
                          ", ".join(f"{t} {100 * s:.0f}" for t, s in top_after)])
    out += ["## Where the forgotten images went (top predictions, %)", "",
            _table(["class", "before", "after"], conf_rows), ""]
    probes = report.get("probes")
    if probes:
        prow = []
        for label, rows in (("patched", probes["patched"]), ("original", probes["original"]),
                            ("LEACE on patched (needs labelled images)", (probes.get("leace") or {}).get("rows"))):
            for r in rows or []:
                prow.append([label, r["k"], _pm(r["forget"]), _pm(r["retain"])])
        n_classes = len(ds.get("images_per_class") or {}) or None
        chance = f" Chance: {100 / n_classes:.1f} % (one of {n_classes} classes)." if n_classes else ""
        out += [f"## Recoverability: k-shot linear probes ({probes['draws']} draws, seed {probes['seed']})", "",
                f"A logistic-regression probe over all classes, trained on k labelled images per class from "
                f"{probes['train_on']}, tested on the {probes['test_on']}. Mean ± std over draws, in %.{chance}", "",
                _table(["features", "k", "forget top-1", "retain top-1"], prow), "",
                leace_sentence((probes.get("leace") or {}).get("status")), ""]
    out += references_section(report)
    out += reference_markdown(report)
    lineage = report.get("lineage")
    if lineage and len(lineage["steps"]) > 1:
        out += ["## Sequential unlearning: the chain", "",
                _table(["step", "forget", "method / α", "source sha256", "output sha256"],
                       [[i + 1, ", ".join(s["forget"] or []), f"{s['method']} / {s['alpha']}",
                         (s["source"]["sha256"] or "not recorded")[:12], (s["output_sha256"] or "not recorded")[:12]]
                        for i, s in enumerate(lineage["steps"])]),
                "", f"Chain intact (each source is the previous output): {'yes' if lineage['intact'] else 'NO'}.", ""]
    if not report["patched"]["single_pass"]:
        out += [f"Note: {report['patched']['note']}.", ""]
    cost = report["cost"]
    out += ["## Details", "", "- every figure above, with its provenance: `audit.json`"]
    out += [f"- ![{key}]({name})" for key, name in figures.items()]
    out += [f"- cost: {cost['audit_seconds_without_probes']:.1f} s without probes, "
            f"{cost['probe_seconds']:.1f} s for probes"
            + (f", {cost['reference_seconds']:.1f} s for the reference" if cost.get("reference_seconds") else ""), ""]
    return "\n".join(out)


def references_section(report: dict) -> list[str]:
    """What the unlearning read from unlabelled reference images (``--reference-images``), if anything.

    With ``ccup audit --reference``, the retrained model's search AUC under each class's own name (its
    ``search_auc`` rows) stands in a column beside the calibration's."""
    refs = report.get("reference_images")
    if not refs:
        return []
    out = [f"## Reference images used by the unlearning: {refs['count']}", "",
           "Unlabelled images from the deployment distribution, pseudo-labelled by the original model's "
           "zero-shot (folder names are not read). They set each class's sink strength (sink reference-chance)"
           + (" and the linear erasure after the map (erase: probe)" if refs.get("erase") else "") + ".", ""]
    per_class = ((refs.get("sink") or {}).get("per_class")) or {}
    retrained = {r["subject"]: r["reference"] for r in (report.get("reference") or {}).get("rows", [])
                 if r["key"] == "search_auc"}
    if per_class:
        header = ["class", "sink γ (length)", "pseudo-labelled references", "calibrated on",
                  "AUC on the references", "bottom share (base rate)"]
        header += ["retrained reference AUC"] if retrained else []
        rows = [[c, f"{f['gamma']:.3f} ({f.get('scale') or 1.0:.1f})", f["pseudo_labelled"],
                 f"{f.get('calibrated_on')} stand-ins (estimated)" if f.get("estimated") else "its references",
                 _dec(f["auc"]), f"{_dec(f['bottom_share'])} ({_dec(f['base_rate'])})"]
                + ([_dec(retrained.get(c))] if retrained else []) for c, f in per_class.items()]
        out += [_table(header, rows), ""]
        if any(f.get("estimated") for f in per_class.values()):
            out += ["A class marked *estimated* is too rare among the references to calibrate on its own images: "
                    "it was calibrated on stand-ins (references of its nearest class moved to where the text "
                    "places it), which is an estimate; measured, such classes land anywhere between the bottom "
                    "and chance (docs/reference-images.md).", ""]
    erase = refs.get("erase")
    if erase:
        out += [f"Erasure: {erase['method']}, rank {erase['rank']}, fitted on {erase['fitted_on']} references; it "
                "is in the final map, so the probes above measure it.", ""]
    return out


def draw_audit_figures(report: dict, folder: Path) -> tuple[dict[str, str], list[str]]:
    """The audit's PNGs in ``folder``; returns ``({figure: filename}, warnings)``."""
    try:
        from . import plots as ap  # lazy: matplotlib is an optional extra

        zs = report["zero_shot"][0]
        ap.plot_per_class(zs["before"]["per_class"], zs["after"]["per_class"], report["forget"],
                          folder / AUDIT_FIGURES["per_class"], "per-class zero-shot top-1")
        ap.plot_confusion_shift(report["confusion"], folder / AUDIT_FIGURES["confusion"])
        rows = [(f"{c}", zs["before"]["retrieval"]["per_class"].get(c, {}).get("p_at_100"),
                 zs["after"]["retrieval"]["per_class"].get(c, {}).get("p_at_100")) for c in report["forget"]]
        rows += [(f"\"{r['alias']}\"", r["before"]["p_at_100"], r["after"]["p_at_100"]) for r in report["alias_rows"]]
        ap.plot_retrieval(rows, folder / AUDIT_FIGURES["retrieval"])
        figures = dict(AUDIT_FIGURES)
        if report.get("probes"):
            ap.plot_probe_curve(report["probes"], folder / AUDIT_FIGURES["probes"])
        else:
            figures.pop("probes")
        return figures, []
    except ImportError:
        return {}, ["figures not written: matplotlib is missing; pip install 'ccup[plot]'"]


def write_audit_folder(out: Path, overwrite: bool, report: dict) -> None:
    """audit.json, audit.md and the PNGs, written atomically into ``out``."""
    out = Path(out).absolute()
    receipt = CommitReceipt()
    with atomic_dir(out, overwrite, receipt) as tmp:
        figures, warnings = draw_audit_figures(report, tmp)
        report.setdefault("warnings", []).extend(warnings)
        report["outputs"] = {"folder": portable_path(out), "audit_md": portable_path(out / "audit.md"),
                             "figures": {k: portable_path(out / v) for k, v in figures.items()}}
        (tmp / "audit.md").write_text(audit_markdown(report, figures), encoding="utf-8")
        rep.write_report(tmp / "audit.json", report)
    if receipt.replaced:  # what --overwrite replaced, in the folder's audit.json too
        report["outputs"]["replaced"] = receipt.replaced
        report["warnings"].extend(replaced_warning(r) for r in receipt.replaced)
        receipt.write_text("audit.json", rep.dumps(report))


# --- the unlearn folder's README.md ----------------------------------------------------------


def unlearn_markdown(report: dict, figures: dict[str, str]) -> str:
    """A model-card-style summary of one unlearn run."""
    spec, proj = report["spec"], report.get("projector", {})
    source = report.get("inputs", {}).get("checkpoint", {}).get("sha256")
    method = proj.get("method", spec.get("method"))
    if method == "finetune":
        how = (f"method `finetune` (gradient unlearning on labelled images, {report.get('finetune', {}).get('steps')} "
               "steps; the image tower's last block, final norm and projection changed)")
    else:
        tower = "text" if proj.get("fold_side") == "text" else "image"
        how = (f"method `{method}`, α = {proj.get('alpha', spec.get('alpha'))}, folded into "
               f"`{proj.get('fold_site', '?')}` (the {tower} tower's final linear map; no other tensor changed; "
               "no image of the forgotten classes was used)")
        if tower == "text":
            how += (". The image tower is untouched: image features, image-to-image search and probes see no "
                    "change, and a text index built with the original text tower still finds the class")
    forget_domains = spec.get("forget_domains") or []
    what = ", ".join(spec["forget"]) or "every class"
    where = f" in {', '.join(forget_domains)}" if forget_domains else ""
    out = [f"# {report['model']['name']}, with {what} forgotten{where}", "",
           f"Made by `ccup unlearn` {report['ccup_version']} on {report['created_at']}: {how}. "
           f"Source: `{spec.get('model') or 'ccup-tiny-fashion'}` / `{spec.get('pretrained') or 'default'}` "
           f"(sha256 `{(source or 'random-init')[:12]}…`).", ""]
    if forget_domains:
        kept = [d for d in (report.get("metrics", {}).get("before", {}).get("domains") or {}) if d not in forget_domains]
        out += [f"**Scope:** {what} was targeted **only in {', '.join(forget_domains)}**"
                + (f"; in {', '.join(kept)} it was meant to stay." if kept and spec["forget"] else ".")
                + " The figures below are over every domain; the grid shows each class in each domain.", ""]
    metrics = report.get("metrics")
    if metrics:
        ds = report["dataset"]
        rows = []
        for path, label in rep.ROWS:
            b, a = rep._at(metrics["before"], path), rep._at(metrics["after"], path)
            if b is None and a is None:
                continue
            rows.append([label, _pct(b), _pct(a), "n/a" if a is None or b is None else f"{100 * (a - b):+.1f}"])
        out += [f"## Measured on {ds['name']} {ds['split']} ({ds['n_images']} images)", "",
                _table(["metric", "before", "after", "change (points)"], rows), ""]
        if "domains" in metrics["before"] and forget_domains:
            out += domain_section(metrics, spec)
    else:
        out += ["Not evaluated: no dataset was given.", ""]
    out += ["## What this does and does not remove", "", HONEST_STATEMENT, "",
            "Run `ccup audit` on this folder to measure other names, text search and linear probes.", ""]
    out += [f"![{key}]({name})" for key, name in figures.items()]
    out += ["", "Details: `report.json` (provenance, every metric), `spec.yaml` (the resolved spec).", ""]
    return "\n".join(out)


def domain_section(metrics: dict, spec: dict) -> list[str]:
    """The class × domain grid (before → after top-1, forgotten domains marked) and the collateral loss."""
    domains, forgotten, classes, cells = rep.domain_grid(metrics, spec)
    header = ["class"] + [f"{d} (forgotten)" if d in forgotten else d for d in domains]
    rows = [[c] + [f"{_pct(b)} → {_pct(a)}" for b, a in cells[c].values()] for c in classes]
    lines = ["## By class and domain (top-1 %, before → after)", "", _table(header, rows), ""]
    losses = [(c, d, change) for c, d, change in rep.collateral(metrics, spec) if change < 0]
    if losses:
        lines += ["**Collateral loss** in cells that were not forgotten: "
                  + ", ".join(f"{c} in {d} {100 * change:+.1f} pt" for c, d, change in losses) + ".", ""]
    else:
        lines += ["No cell that was not forgotten lost top-1.", ""]
    return lines


def _per_class_figure(report: dict, path: Path) -> None:
    """Per-class top-1 before and after; on a domain forget, one pair of bars per class and domain."""
    from .plots import plot_per_class  # lazy: matplotlib is an optional extra

    metrics, spec = report["metrics"], report["spec"]
    if "domains" in metrics["before"] and spec.get("forget_domains"):
        domains, forgotten, classes, cells = rep.domain_grid(metrics, spec)
        label = {(c, d): f"{c} / {d}" for c in classes for d in domains}
        before = {label[c, d]: cells[c][d][0] or 0.0 for c in classes for d in domains}
        after = {label[c, d]: cells[c][d][1] or 0.0 for c in classes for d in domains}
        marked = [label[c, d] for c in classes for d in domains if d in forgotten]
        plot_per_class(before, after, marked, path, "zero-shot top-1 by class and domain")
        return
    plot_per_class(metrics["before"]["overall"]["per_class"], metrics["after"]["overall"]["per_class"],
                   spec["forget"], path, "per-class zero-shot top-1")


def write_unlearn_summary(folder: Path, report: dict) -> dict[str, Path]:
    """README.md and small figures for an unlearn output folder; returns ``{name: path}`` written."""
    figures: dict[str, str] = {}
    metrics = report.get("metrics")
    if metrics:
        try:
            _per_class_figure(report, folder / UNLEARN_FIGURES["per_class"])
            figures["per_class"] = UNLEARN_FIGURES["per_class"]
        except ImportError:
            report.setdefault("warnings", []).append(
                "README.md figures not written: matplotlib is missing; pip install 'ccup[plot]'")
    (folder / "README.md").write_text(unlearn_markdown(report, figures), encoding="utf-8")
    return {"README.md": folder / "README.md", **{name: folder / name for name in figures.values()}}


# --- the terminal table ----------------------------------------------------------------------


def domain_grid_table(report: dict):
    """The class × domain grid of a domain forget, before → after, as a rich table (None otherwise)."""
    from rich.table import Table

    grid = report.get("domain_grid")
    if not grid:
        return None
    b, a = grid["before"], grid["after"]
    domains = list(b["domain_top1"])
    table = Table(title=f"top-1 % by class and domain, before → after (forgotten cells: "
                        f"{_pct(b['forgotten_cells_top1'])} → {_pct(a['forgotten_cells_top1'])})", title_justify="left")
    table.add_column("class")
    for d in domains:
        table.add_column(d + (" ✗" if d in grid["forget_domains"] else ""), justify="right")
    for c in b["grid"]:
        table.add_row(c, *[f"{_pct(b['grid'][c][d])} → {_pct(a['grid'][c][d])}" for d in domains])
    table.add_row("all classes", *[f"{_pct(b['domain_top1'][d])} → {_pct(a['domain_top1'][d])}" for d in domains])
    return table


def alias_mark(row: dict, report: dict) -> str:
    """`` (recognised before, gone after)`` and the like, for an alias of a forget class; ``""`` otherwise."""
    if row["class"] not in report["forget"]:
        return ""
    before, after = row["before"]["top1"] or 0, row["after"]["top1"] or 0
    if before < ALIAS_RECOGNISED:
        return " (not recognised before)"
    return " (recognised before, gone after)" if after <= ZERO_SHOT_GONE else " (recognised before, NOT gone after)"


def audit_table(report: dict):
    """The audit's headline numbers as one rich table: before, after, per row."""
    from rich.table import Table

    table = Table(title=f"ccup audit: forget {', '.join(report['forget'])}", title_justify="left")
    for col in ("what", "before %", "after %"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for r in report["zero_shot"]:
        table.add_row(f"forget top-1, {r['names']}, {r['templates']}", _pct(r["before"]["forget_top1"]),
                      _pct(r["after"]["forget_top1"]))
    zs = report["zero_shot"][0]
    table.add_row("retain top-1, class names", _pct(zs["before"]["retain_top1"]), _pct(zs["after"]["retain_top1"]))
    table.add_row("forget text search P@100, class names", _pct(zs["before"]["retrieval"]["forget"]["p_at_100"]),
                  _pct(zs["after"]["retrieval"]["forget"]["p_at_100"]))
    for r in report["alias_rows"]:
        table.add_row(f"{r['class']} as \"{r['alias']}\": top-1 / search P@100{alias_mark(r, report)}",
                      f"{_pct(r['before']['top1'])} / {_pct(r['before']['p_at_100'])}",
                      f"{_pct(r['after']['top1'])} / {_pct(r['after']['p_at_100'])}")
    v = report["verdict"]
    if v.get("aliases_recognised_before"):
        table.add_row(f"forget aliases recognised before (top-1 ≥ {100 * ALIAS_RECOGNISED:.0f} %) / gone after "
                      f"(≤ {100 * ZERO_SHOT_GONE:.0f} %)", str(v["aliases_recognised_before"]),
                      str(v["aliases_gone_after"]))
    refs = report.get("reference_images")
    if refs:
        table.add_row("reference images used by the unlearning", "", str(refs["count"]) +
                      (" (sink + erase: probe)" if refs.get("erase") else " (sink)"))
    probes = report.get("probes")
    if probes:
        leace = {r["k"]: r for r in (probes.get("leace") or {}).get("rows") or []}
        for p, o in zip(probes["patched"], probes["original"]):
            table.add_row(f"{p['k']}-shot probe, forget top-1 (original → patched)", _pm(o["forget"]),
                          _pm(p["forget"]))
            table.add_row(f"{p['k']}-shot probe, retain top-1 (original → patched)", _pm(o["retain"]),
                          _pm(p["retain"]))
            if p["k"] in leace:
                table.add_row(f"{p['k']}-shot probe after LEACE (needs labelled images), forget / retain", "n/a",
                              f"{_pm(leace[p['k']]['forget'])} / {_pm(leace[p['k']]['retain'])}")
    return table
