"""What people read says exactly what was done: the audit verdict names only what it tried, the tables
carry their units, and a domain forget's README shows its scope and the class x domain grid."""

from __future__ import annotations

from rich.console import Console

from ccup_cli.audit.figures import verdict


def _zero_shot(after_top1: float) -> list[dict]:
    at_chance = {"p_at_10": 0.1, "p_at_100": 0.1, "r_precision": 0.1, "bottom_100": 0.1, "auc": 0.5}
    row = {"forget_top1": after_top1, "retrieval": {"forget": {"p_at_100": 0.1}},
           "forget_search": {"sandal": at_chance}}
    return [{"names": "class names", "templates": "openai (used by the unlearning)",
             "before": {"forget_top1": 0.9}, "after": row},
            {"names": "class names", "templates": "unseen (built in)", "before": {"forget_top1": 0.9}, "after": row}]


def _alias(cls: str, alias: str, before: float, after: float) -> dict:
    return {"class": cls, "alias": alias, "before": {"top1": before, "p_at_10": before, "p_at_100": before},
            "after": {"top1": after, "p_at_10": after, "p_at_100": after}}


def test_a_verdict_without_aliases_does_not_claim_them():
    v = verdict(_zero_shot(0.0), [], None, ["sandal"])
    assert v["zero_shot_removed"] and "alias" not in v["headline"]
    assert "under the class names in 2 template sets)" in v["headline"]


def test_an_alias_never_recognised_is_listed_apart_not_counted():
    nonsense = _alias("sandal", "zzkq", 0.005, 0.005)
    v = verdict(_zero_shot(0.0), [nonsense, _alias("sandal", "flip flop", 0.9, 0.0)], None, ["sandal"])
    assert v["aliases_counted"] == 1 and [a["alias"] for a in v["aliases_not_recognised_before"]] == ["zzkq"]
    assert "and 1 alias the original model recognised" in v["headline"]
    assert 'Not counted: 1 alias the original model did not recognise either ("zzkq" 0.5 % top-1 before)' \
        in v["headline"]
    # an alias that was recognised and still is: NOT GONE
    assert not verdict(_zero_shot(0.0), [_alias("sandal", "flip flop", 0.9, 0.6)], None, ["sandal"])[
        "zero_shot_removed"]


def test_aliases_recognised_before_and_gone_after_are_counted_apart():
    rows = [_alias("sandal", "mules", 0.9, 0.0), _alias("sandal", "slides", 0.5, 0.2),
            _alias("sandal", "huaraches", 0.3, 0.0), _alias("shirt", "flannel", 0.9, 0.9)]
    v = verdict(_zero_shot(0.0), rows, None, ["sandal"])
    # 0.3 is above the 5 % floor (counted in the verdict) but below 50 %: not "recognised before"
    assert (v["aliases_counted"], v["aliases_recognised_before"], v["aliases_gone_after"]) == (3, 2, 1)
    assert [a["alias"] for a in v["aliases_still_recognised"]] == ["slides"]
    assert "Aliases recognised before (top-1 ≥ 50.0 %): 2; gone after (≤ 5.0 %): 1." in v["headline"]


def test_aliases_of_kept_classes_do_not_decide_the_verdict():
    v = verdict(_zero_shot(0.0), [_alias("shirt", "blouse", 0.7, 0.7)], None, ["sandal"])
    assert v["zero_shot_removed"] and v["search_removed"] and v["aliases_counted"] == 0


def _render(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_tables_carry_units_and_one_model_is_not_called_before():
    from ccup_cli.output.report import RANK_LABEL, metrics_table

    split = {"top1": 0.5, "mean_per_class_recall": 0.5, "mean_true_class_rank": 1.5}
    metrics = {"forget": split, "retain": split, "retain_only": split, "overall": split}
    one = _render(metrics_table({"before": metrics}, "t", measured="this model"))
    assert "this model" in one and "before" not in one and "50.0" in one and "1.50" in one
    both = _render(metrics_table({"before": metrics, "after": metrics,
                                  "delta": {k: {"top1": 0.0, "mean_per_class_recall": 0.0} for k in metrics}}, "t"))
    assert "+0.0 pt" in both and RANK_LABEL in both and "+0.00" in both
    assert "forget top-1 % (lower is better)" in both


def _split(per_class: dict) -> dict:
    top1 = sum(per_class.values()) / len(per_class)
    return {"top1": top1, "mean_per_class_recall": top1, "per_class": per_class}


def _domain_report() -> dict:
    cells_before = {"photo": {"sandal": 0.975, "bag": 0.9}, "sketch": {"sandal": 0.95, "bag": 0.9},
                    "silhouette": {"sandal": 0.93, "bag": 0.8}}
    cells_after = {"photo": {"sandal": 0.89, "bag": 0.9}, "sketch": {"sandal": 0.0, "bag": 0.9},
                   "silhouette": {"sandal": 0.755, "bag": 0.82}}

    def tree(cells):
        overall = {c: sum(cells[d][c] for d in cells) / 3 for c in ("sandal", "bag")}
        return {"forget": _split({"sandal": cells["sketch"]["sandal"]}), "retain": _split(overall),
                "overall": _split(overall), "domains": {d: {"overall": _split(cells[d])} for d in cells}}

    before, after = tree(cells_before), tree(cells_after)
    return {"spec": {"forget": ["sandal"], "forget_domains": ["sketch"], "method": "ccup", "model": "m",
                     "pretrained": "embedded"},
            "projector": {"method": "ccup", "alpha": 1.0, "fold_site": "visual.proj"},
            "inputs": {"checkpoint": {"sha256": "0" * 64}}, "model": {"name": "m"}, "ccup_version": "0",
            "created_at": "now", "dataset": {"name": "d", "split": "test", "n_images": 60},
            "metrics": {"before": before, "after": after, "delta": {}}}


def test_a_domain_forget_readme_shows_scope_grid_and_collateral(tmp_path):
    from ccup_cli.audit.page import write_unlearn_summary

    report = _domain_report()
    written = write_unlearn_summary(tmp_path, report)
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("# m, with sandal forgotten in sketch\n")
    assert "**Scope:** sandal was targeted **only in sketch**; in photo, silhouette it was meant to stay." in readme
    assert "| class | photo | sketch (forgotten) | silhouette |" in readme
    assert "| sandal | 97.5 → 89.0 | 95.0 → 0.0 | 93.0 → 75.5 |" in readme
    assert "**Collateral loss** in cells that were not forgotten: sandal in silhouette -17.5 pt, " \
           "sandal in photo -8.5 pt." in readme
    assert (tmp_path / "per_class_top1.png").read_bytes()[:4] == b"\x89PNG" and "per_class_top1.png" in written


def test_a_whole_domain_forget_is_scoped_to_the_domain(tmp_path):
    from ccup_cli.audit.page import unlearn_markdown

    report = _domain_report()
    report["spec"]["forget"] = []
    text = unlearn_markdown(report, {})
    assert text.startswith("# m, with every class forgotten in sketch\n")
    assert "**Scope:** every class was targeted **only in sketch**." in text
    assert "| bag | 90.0 → 90.0 | 90.0 → 90.0 | 80.0 → 82.0 |" in text


def test_the_shipped_aliases_file_reads_for_fashion_mnist():
    from pathlib import Path

    from ccup_cli.audit.aliases import read_aliases
    from ccup_cli.data.catalog import preset_classnames

    configs = next(p / "configs" for p in Path(__file__).resolve().parents if (p / "configs").is_dir())
    aliases = read_aliases(configs / "aliases" / "fashion-mnist.yaml", preset_classnames("fashion-mnist"),
                           "fashion-mnist")
    assert {"sandal", "sneaker"} <= set(aliases) and all(aliases.values())
