"""The job behind ``ccup unlearn`` for closed-form methods: solve, fold, evaluate, write.

``--alpha auto`` sweeps the strength from the same image features and keeps the smallest α
that meets ``max_forget_acc``. ``method: finetune`` is handed to ``finetune_job``.
Heavy modules are imported after the door, so bad input fails before torch loads.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ThresholdNotReachable
from ..methods.table import get_method, method_params
from ..output import report as rep
from ..run.door import Plan, admit
from ..run.options import RunOptions, resolve_device
from ..run.provenance import PhaseTimer, dataset_record, finish_report, resolved_fields, start_report
from ..spec.schema import UnlearnSpec

AUTO_ALPHAS = [round(0.05 * k, 2) for k in range(21)]


def run_unlearn(spec: UnlearnSpec, options: RunOptions) -> dict:
    """Unlearn, evaluate (when the spec names a dataset) and write ``options.out``. Returns the report."""
    options = options.check()
    timer = PhaseTimer()
    method = get_method(spec.method)
    plan = admit(spec, options, timer, need_eval=spec.alpha == "auto" or method.needs_images)
    device = resolve_device(options.device)  # after the door: asking torch about CUDA costs seconds
    if method.needs_images:
        # lazy: torch loads after the door (start-up time)
        from .finetune import run_finetune

        return run_finetune(plan, options, timer, device)
    return _run_closed_form(plan, options, timer, device)


def choose_alpha(inputs, spec: UnlearnSpec, params: dict, context=None) -> tuple[float, dict]:
    """The smallest α on ``AUTO_ALPHAS`` whose forget top-1 meets ``spec.max_forget_acc``, and the curve."""
    # lazy: torch (start-up time)
    from ..run.sweep import run_sweep, smallest_alpha_meeting

    forget_names = inputs.forget_names if inputs.forget_names is not None else spec.forget
    rows = run_sweep(inputs, [spec.method], AUTO_ALPHAS, forget_names, {spec.method: params}, context)
    chosen = smallest_alpha_meeting(rows, spec.method, spec.max_forget_acc)
    curve = [{"alpha": r["alpha"], "forget_top1": r["metrics"]["forget"]["top1"],
              "retain_top1": r["metrics"]["retain"]["top1"],
              "retain_only_top1": r["metrics"]["retain_only"]["top1"]} for r in rows]
    if chosen is None:
        best = min(curve, key=lambda c: c["forget_top1"])
        raise ThresholdNotReachable(
            f"no alpha in [0, 1] brings forget top-1 to {spec.max_forget_acc} with method {spec.method} "
            f"(best: {best['forget_top1']:.4f} at alpha {best['alpha']})",
            "raise --max-forget-acc, or change lambda_retain / the retain set")
    alpha = chosen["alpha"]
    return alpha, {"target_max_forget_acc": spec.max_forget_acc, "chosen_alpha": alpha, "grid": AUTO_ALPHAS,
                   "curve": curve}


def _run_closed_form(plan: Plan, options: RunOptions, timer: PhaseTimer, device: str) -> dict:
    """The steps, top to bottom: session, features, (strength), solve and fold, report, metrics, write."""
    # lazy: torch and the model stack load after the door has admitted the plan (start-up time)
    from ..methods.apply import apply_unlearning
    from ..metrics.compare import delta, metrics_for
    from ..run.session import open_session
    from ..run.writer import write_checkpoint_folder

    spec, dataset = plan.spec, plan.dataset
    session = open_session(spec.model, spec.pretrained, options, device, timer, spec.fold)
    device = session.device  # this rank's device under torchrun
    loaded, site = session.loaded, session.site
    features = session.features(plan)
    forget_emb, retain_emb, inputs = features.forget, features.retain, features.inputs
    params = method_params(get_method(spec.method), spec)
    context = session.method_context(plan.references)

    auto = None
    alpha = spec.alpha
    if alpha == "auto":
        with timer("auto_alpha"):
            alpha, auto = choose_alpha(inputs, spec, params, context)
    with timer("solve_and_fold"):
        result = apply_unlearning(loaded.model, site, session.original, forget_emb, retain_emb, spec.method, alpha,
                                  params, inplace=True, retain_warn_cosine=spec.retain_warn_cosine, context=context)

    retain = features.retain_names
    resolved = spec.model_copy(update={"retain": retain, **resolved_fields(spec, loaded)})
    report = start_report("unlearn", options.argv, loaded, resolved)
    proj = result.projector
    report["projector"] = {
        "method": proj.method, "alpha": proj.alpha, "rank": proj.rank, "params": proj.params,
        "singular_values_of_I_minus_W": proj.singular_values, "fold_site": site.path,
        "fold_side": site.side, "fold_keys": list(site.keys), "dim": int(proj.W.shape[0]),
    }
    if auto is not None:
        report["auto_alpha"] = auto
    if context.reference is not None:  # what the method read, and what it made of it
        references = context.reference()
        report["domain_images"] = {"domains": references.record, "edit": references.notes}
    report["text"] = {
        "forget_classes": len(spec.forget), "retain_classes": len(retain),
        "forget_templates": len(plan.templates), "retain_templates": len(plan.retain_templates),
        "embeddings": result.embedding_mode,
        **({"forget_prompts": len(plan.sides[0].prompts), "retain_prompts": len(plan.sides[1].prompts),
            "forget_groups": plan.sides[0].labels} if plan.sides is not None else {}),
        "cache_hit": {"forget": forget_emb.cache_hit, "retain": retain_emb.cache_hit},
        "fast_path": loaded.supports_fast_text(),
    }
    report["text_side"] = result.text_side()
    report["warnings"] = [
        f'retain class "{c["retain"]}" is close to forget class "{c["forget"]}" (cosine {c["cosine"]:.3f}); '
        "keeping it works against forgetting" for c in result.close_retain]

    if inputs is not None:
        with timer("metrics"):
            before = metrics_for(site, session.original, inputs.pre_projection_features, inputs.classifier, dataset,
                                 features.forget_names, spec.forget_domains, inputs.prompts_before_fold)
            after = metrics_for(site, result.folded_tensors, inputs.pre_projection_features, inputs.classifier,
                                dataset, features.forget_names, spec.forget_domains, inputs.prompts_before_fold)
        report["dataset"] = dataset_record(dataset, inputs.feature_cache_hit)
        report["metrics"] = {"before": before, "after": after, "delta": delta(after, before)}

    writes = options.out is not None and session.world.is_main  # under torchrun, rank 0 alone writes
    if writes:
        with timer("write"):
            write_checkpoint_folder(options.out, options.overwrite, loaded, result.folded_tensors,
                                    {"alpha": repr(float(proj.alpha)), "fold_site": site.path,
                                                                          "fold_side": site.side}, resolved, report)
    finish_report(report, timer, device, session.loaded, options)
    if writes:  # the report inside the folder carries the final timings too
        rep.write_report(Path(options.out) / "report.json", report)
    return report
