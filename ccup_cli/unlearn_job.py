"""The job behind ``ccup unlearn`` for closed-form methods: solve, fold, evaluate, write.

``--alpha auto`` sweeps the strength from the same image features and keeps the smallest α
that meets ``max_forget_acc``. ``method: finetune`` is handed to ``finetune_job``.
Heavy modules are imported after the door, so bad input fails before torch loads.
"""

from __future__ import annotations

from pathlib import Path

from . import report as rep
from .door import Admitted, admit
from .errors import ThresholdNotReachable
from .methods import get_method, method_params
from .options import RunOptions, resolve_device
from .provenance import PhaseTimer, dataset_record, finish_report, start_report
from .spec import UnlearnSpec

AUTO_ALPHAS = [round(0.05 * k, 2) for k in range(21)]


def run_unlearn(spec: UnlearnSpec, options: RunOptions) -> dict:
    """Unlearn, evaluate (when the spec names a dataset) and write ``options.out``. Returns the report."""
    options = options.check()
    timer = PhaseTimer()
    method = get_method(spec.method)
    admitted = admit(spec, options, timer, need_eval=spec.alpha == "auto" or method.needs_images)
    device = resolve_device(options.device)  # after the door: asking torch about CUDA costs seconds
    if method.needs_images:
        from .finetune_job import run_finetune

        return run_finetune(admitted, options, timer, device)
    return _run_closed_form(admitted, options, timer, device)


def choose_alpha(inputs, spec: UnlearnSpec, params: dict, encode=None, synthesize=None) -> tuple[float, dict]:
    """The smallest α on ``AUTO_ALPHAS`` whose forget top-1 meets ``spec.max_forget_acc``, and the curve."""
    from .sweep import run_sweep, smallest_alpha_meeting

    forget_names = inputs.forget_names if inputs.forget_names is not None else spec.forget
    rows = run_sweep(inputs, [spec.method], AUTO_ALPHAS, forget_names, {spec.method: params}, encode, synthesize)
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


def _run_closed_form(admitted: Admitted, options: RunOptions, timer: PhaseTimer, device: str) -> dict:
    from .api import apply_unlearning
    from .embeddings import default_retain
    from .evaluate import delta, metrics_for
    from .session import evaluation_inputs, open_session
    from .writer import write_checkpoint_folder

    spec, dataset = admitted.spec, admitted.dataset
    session = open_session(spec.model, spec.pretrained, options, device, timer)
    device = session.device  # this rank's device under torchrun
    loaded, site = session.loaded, session.site
    retain = spec.retain if spec.retain is not None else default_retain(
        spec.forget, dataset.classnames if dataset else None)
    if admitted.sides is not None:  # domains or free prompts (prompt_sides.py)
        from .prompt_sides import forgotten_classes

        forget_emb, retain_emb = session.embed_prompt_sides(*admitted.sides)
        metric_forget = forgotten_classes(spec.forget, spec.forget_domains, dataset.classnames if dataset else [])
    else:
        forget_emb, retain_emb = session.embed_sides(spec.forget, retain, admitted.templates,
                                                     admitted.retain_templates)
        metric_forget = spec.forget
    inputs = evaluation_inputs(session, dataset, admitted.templates, forget_emb, retain_emb) if dataset else None
    if inputs is not None:
        inputs.forget_names, inputs.forget_domains = metric_forget, tuple(spec.forget_domains)
    params = method_params(get_method(spec.method), spec)

    auto = None
    alpha = spec.alpha
    if alpha == "auto":
        with timer("auto_alpha"):
            alpha, auto = choose_alpha(inputs, spec, params, session.encode_text, session.synthesize_prototypes)
    with timer("solve_and_fold"):
        result = apply_unlearning(loaded.model, site, session.original, forget_emb, retain_emb, spec.method, alpha,
                                  params, inplace=True, retain_warn_cosine=spec.retain_warn_cosine, device=device,
                                  encode=session.encode_text, synthesize=session.synthesize_prototypes)

    resolved = spec.model_copy(update={"retain": retain})
    report = start_report("unlearn", options.argv, loaded, resolved)
    proj = result.projector
    report["projector"] = {
        "method": proj.method, "alpha": proj.alpha, "rank": proj.rank, "params": proj.params,
        "singular_values_of_I_minus_W": proj.singular_values, "fold_site": site.path,
        "fold_keys": list(site.keys), "dim": int(proj.W.shape[0]),
    }
    if auto is not None:
        report["auto_alpha"] = auto
    report["text"] = {
        "forget_classes": len(spec.forget), "retain_classes": len(retain),
        "forget_templates": len(admitted.templates), "retain_templates": len(admitted.retain_templates),
        "embeddings": result.embedding_mode,
        **({"forget_prompts": len(admitted.sides[0].prompts), "retain_prompts": len(admitted.sides[1].prompts),
            "forget_groups": admitted.sides[0].labels} if admitted.sides is not None else {}),
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
                                 metric_forget, spec.forget_domains)
            after = metrics_for(site, result.folded_tensors, inputs.pre_projection_features, inputs.classifier,
                                dataset, metric_forget, spec.forget_domains)
        report["dataset"] = dataset_record(dataset, inputs.feature_cache_hit)
        report["metrics"] = {"before": before, "after": after, "delta": delta(after, before)}

    writes = options.out is not None and session.world.is_main  # under torchrun, rank 0 alone writes
    if writes:
        with timer("write"):
            write_checkpoint_folder(options.out, options.overwrite, loaded, result.folded_tensors,
                                    {"alpha": repr(float(proj.alpha)), "fold_site": site.path}, resolved, report)
    finish_report(report, timer, device, session.loaded, options)
    if writes:  # the report inside the folder carries the final timings too
        rep.write_report(Path(options.out) / "report.json", report)
    return report
