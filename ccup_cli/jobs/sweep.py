"""The job behind ``ccup sweep``: every method at every strength from one pass over the images.

Writes ``sweep.jsonl`` (one line per method and α, with the report's metric fields),
``tradeoff.png`` (when matplotlib is installed), ``spec.yaml`` and ``report.json``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecError
from ..methods.table import get_method, method_params, split_variant
from ..output import report as rep
from ..output.portable import portable_path
from ..run.door import admit
from ..run.options import RunOptions, resolve_device
from ..run.provenance import PhaseTimer, finish_report, resolved_fields, start_report
from ..spec.schema import UnlearnSpec, check_sweep


def run_sweep_job(spec: UnlearnSpec, alphas: list[float], methods: list[str], options: RunOptions) -> dict:
    """Returns the report, with the rows under ``"rows"`` (not written to report.json)."""
    options = options.check()
    check_sweep(alphas, methods)
    if options.out is None:
        raise SpecError("out: the sweep needs an output folder", "pass --out DIR")
    timer = PhaseTimer()
    plan = admit(spec.model_copy(update={"alpha": 1.0, "method": split_variant(methods[0])[0]}), options, timer,
                need_eval=True)
    device = resolve_device(options.device, options.decode)  # after the door: asking torch about CUDA costs seconds

    # lazy: start-up time (torch loads after the door)
    from ..output.atomic import CommitReceipt, atomic_dir, sha256_file
    from ..output.plots import plot_tradeoff
    from ..run.session import open_session
    from ..run.sweep import run_sweep
    from ..run.writer import note_replaced

    spec, dataset = plan.spec, plan.dataset
    session = open_session(spec.model, spec.pretrained, options, device, timer, spec.fold)
    device = session.device  # this rank's device under torchrun
    features = session.features(plan)
    inputs, retain = features.inputs, features.retain_names
    with timer("sweep"):
        params = {}
        for entry in methods:
            name, override = split_variant(entry)
            params[entry] = {**method_params(get_method(name), spec), **override}
        rows = run_sweep(inputs, methods, alphas, features.forget_names, params, session.method_context())
    resolved = spec.model_copy(update={"retain": retain, **resolved_fields(spec, session.loaded)})
    report = start_report("sweep", options.argv, session.loaded, resolved, dataset, inputs.feature_cache_hit,
                          sweep={"methods": methods, "alphas": alphas, "rows": len(rows),
                                 "fold_site": session.site.path, "fold_side": session.site.side})
    out = Path(options.out).absolute()
    report["rows"] = rows
    if not session.world.is_main:  # under torchrun, rank 0 alone writes
        return report
    receipt = CommitReceipt()
    with timer("write"), atomic_dir(out, options.overwrite, receipt) as tmp:
        (tmp / "sweep.jsonl").write_text("".join(rep.dumps_line(
            {"method": r["method"], "alpha": r["alpha"], "params": r["params"], "metrics": r["metrics"]})
            for r in rows), encoding="utf-8")
        (tmp / "spec.yaml").write_text(resolved.to_yaml(), encoding="utf-8")
        try:
            plot_tradeoff(rows, tmp / "tradeoff.png", f"{report['model']['name']} on {dataset.name}: "
                                                       f"forget {', '.join(spec.forget)}")
            report["plot"] = portable_path(out / "tradeoff.png")
        except ImportError:
            report["plot"] = None
            report.setdefault("warnings", []).append(
                "tradeoff.png not written: matplotlib is missing; pip install 'ccup[plot]'")
        report["outputs"] = {"folder": portable_path(out), "sweep_jsonl": {"path": portable_path(out / "sweep.jsonl"),
                                                                 "sha256": sha256_file(tmp / "sweep.jsonl")}}
        finish_report(report, timer, device, session.loaded, options)
        rep.write_report(tmp / "report.json", {k: v for k, v in report.items() if k != "rows"})
    if receipt.replaced:  # what --overwrite replaced, in the folder's report too
        note_replaced(report, receipt)
        receipt.write_text("report.json", rep.dumps({k: v for k, v in report.items() if k != "rows"}))
    return report
