"""The job behind ``ccup unlearn`` for closed-form methods: solve, fold, evaluate, write.

``--alpha auto`` sweeps the strength from the same image features and keeps the smallest α
that meets every target: ``max_forget_acc`` and the search targets (``metrics/targets.py``).
``method: finetune`` is handed to ``jobs/finetune.py``.
Heavy modules are imported after the door, so bad input fails before torch loads.
"""

from __future__ import annotations

from ..errors import ThresholdNotReachable
from ..methods.table import get_method, method_params
from ..metrics.targets import AUTO_MAX_FORGET_RETRIEVAL, Targets, search_warnings, target_misses
from ..output import report as rep
from ..run.door import Plan, admit
from ..run.options import RunOptions, resolve_device
from ..run.provenance import PhaseTimer, dataset_record, finish_report, resolved_fields, start_report
from ..spec.schema import UnlearnSpec

AUTO_ALPHAS = [round(0.05 * k, 2) for k in range(21)]
AUTO_REFINE = 0.01  # the finer step around the coarse grid's answer


def run_unlearn(spec: UnlearnSpec, options: RunOptions) -> dict:
    """Unlearn, evaluate (when the spec names a dataset) and write ``options.out``. Returns the report."""
    options = options.check()
    timer = PhaseTimer()
    method = get_method(spec.method)
    plan = admit(spec, options, timer, need_eval=spec.alpha == "auto" or method.needs_images)
    device = resolve_device(options.device, options.decode)  # after the door: asking torch about CUDA costs seconds
    if method.needs_images:
        # lazy: torch loads after the door (start-up time)
        from .finetune import run_finetune

        return run_finetune(plan, options, timer, device)
    return _run_closed_form(plan, options, timer, device)


def auto_targets(spec: UnlearnSpec) -> Targets:
    """The targets ``--alpha auto`` meets: the spec's, with the default search target when none is given.

    A domain forget gets no default search target: a class's search ranks every domain's images, so
    meeting it would mean forgetting the class in the domains the spec keeps.
    """
    default = None if spec.forget_domains else AUTO_MAX_FORGET_RETRIEVAL
    retrieval = spec.max_forget_retrieval if spec.max_forget_retrieval is not None else default
    return Targets(spec.max_forget_acc, None if retrieval is None or retrieval >= 1 else retrieval,
                   spec.max_forget_auc_gap)


def choose_alpha(inputs, spec: UnlearnSpec, params: dict, context=None) -> tuple[float, dict]:
    """The smallest α that meets every target of ``auto_targets``, and the curve it was chosen from.

    The grid is ``AUTO_ALPHAS`` (steps of 0.05), refined in steps of ``AUTO_REFINE`` just below the
    first coarse α that meets the targets (the smallest may lie between), or around the closest
    coarse α when none does: a class passes through chance over a narrow range of strength.
    """
    # lazy: torch (start-up time)
    from ..run.sweep import run_sweep

    forget_names = inputs.forget_names if inputs.forget_names is not None else spec.forget
    targets = auto_targets(spec)

    def evaluate(alphas):
        rows = run_sweep(inputs, [spec.method], alphas, forget_names, {spec.method: params}, context)
        return {r["alpha"]: (r, target_misses(r["metrics"], forget_names, targets)) for r in rows}

    def meets(item):
        row, misses = item
        return not misses and (targets.max_forget_acc is None or row["metrics"]["forget"]["top1"] is not None)

    points = evaluate(AUTO_ALPHAS)
    first = min((a for a, item in points.items() if meets(item)), default=None)
    if first is not None:
        around = [a for a in _fine(first - 0.05, first) if a not in points]
    else:
        closest = min(points, key=lambda a: (len(points[a][1]), sum(m for _, m in points[a][1])))
        around = [a for a in _fine(closest - 0.05, closest + 0.05) if a not in points]
    points.update(evaluate(around))
    curve = [_curve_point(points[a][0], forget_names) for a in sorted(points)]
    chosen = min((a for a, item in points.items() if meets(item)), default=None)
    if chosen is None:
        closest = min(points, key=lambda a: (len(points[a][1]), sum(m for _, m in points[a][1])))
        best = min(curve, key=lambda c: c["forget_top1"] if c["forget_top1"] is not None else 1.0)
        misses = points[closest][1]
        raise ThresholdNotReachable(
            f"no alpha in [0, 1] meets every target ({targets.describe()}) with method {spec.method}; closest: "
            f"alpha {closest:g} misses {len(misses)} ({misses[0][0]}); "
            f"best: forget top-1 {100 * best['forget_top1']:.1f} % at alpha {best['alpha']:g}",
            "loosen a target (--max-forget-acc, --max-forget-retrieval, --max-forget-auc-gap), or change the "
            "sink, lambda_retain or the retain set")
    return chosen, {"target_max_forget_acc": spec.max_forget_acc,
                    "target_max_forget_retrieval": targets.max_forget_retrieval,
                    "target_max_forget_retrieval_is_default": spec.max_forget_retrieval is None,
                    "target_max_forget_auc_gap": targets.max_forget_auc_gap,
                    "chosen_alpha": chosen, "grid": sorted(points), "curve": curve,
                    "warnings": search_warnings(points[chosen][0]["metrics"], forget_names, chosen)}


def _fine(low: float, high: float) -> list[float]:
    """The ``AUTO_REFINE`` steps strictly between ``low`` and ``high``, inside [0, 1]."""
    steps = round((high - low) / AUTO_REFINE)
    return [a for a in (round(low + k * AUTO_REFINE, 2) for k in range(1, steps)) if 0.0 <= a <= 1.0]


def _curve_point(row: dict, forget: list[str]) -> dict:
    m = row["metrics"]
    keys = ("p_at_10", "p_at_100", "r_precision", "bottom_100", "auc")
    search = {c: {k: m["retrieval"]["per_class"][c][k] for k in keys} for c in forget
              if c in m["retrieval"]["per_class"]}
    return {"alpha": row["alpha"], "forget_top1": m["forget"]["top1"], "retain_top1": m["retain"]["top1"],
            "retain_only_top1": m["retain_only"]["top1"], "forget_search": search}


def check_erase_site(session) -> None:
    """``erase: probe`` needs an image-side site that can take an affine offset; say so in one line."""
    # lazy: torch (start-up time)
    from ..backends.fold import NoOffsetSite, offset_carrier
    from ..errors import CheckpointError

    if session.site.side != "image":
        raise CheckpointError(f"erase: probe acts on image features, and this model folds on the text side "
                              f"({session.site.path})", "drop --erase probe (the sink still calibrates)")
    try:
        offset_carrier(session.loaded.model, session.site)
    except NoOffsetSite as err:
        raise CheckpointError(f"erase: probe cannot be folded into this tower: {err}",
                              "drop --erase probe (the sink still calibrates)") from None


def reference_report(references, result) -> dict:
    """report.json's ``reference_images``: what was read, how it was labelled, what it calibrated."""
    # lazy: torch (start-up time)
    from ..data.reference_images import DEPLOYMENT

    record = dict(references.record[DEPLOYMENT])
    out = {**record, "labels": "zero-shot pseudo-labels of the original model (folder names are not read)"}
    calibration = references.notes.get("calibration")
    if calibration is not None:
        counts = calibration.pseudo_labels.bincount(minlength=len(calibration.classnames))
        out["pseudo_labels"] = {c: int(n) for c, n in zip(calibration.classnames, counts.tolist()) if n}
    if "sink" in references.notes:
        out["sink"] = {"name": "reference-chance", "target_auc": calibration.target_auc,
                       "per_class": references.notes["sink"]}
    if result.erasure is not None:
        out["erase"] = {**references.notes["erasure"], "fold_keys": list(result.site.keys)}
    return out


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
    if spec.erase != "none":
        check_erase_site(session)
    context = session.method_context(plan.references, spec.erase)

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
        if spec.reference_images is not None:
            report["reference_images"] = reference_report(references, result)
        else:
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
    choices = features.choices
    if choices is not None:  # concepts covered, near names left out of the default vocabulary (run/vocabulary.py)
        report.update(choices.record)
        if "concepts" in choices.record:
            report["text"]["forget_split_classes"] = list(features.forget_names)
    report["warnings"] = (choices.warnings if choices is not None else []) + [
        f'retain class "{c["retain"]}" is close to forget class "{c["forget"]}" (cosine {c["cosine"]:.3f}); '
        "keeping it works against forgetting" for c in result.close_retain] + (auto or {}).pop("warnings", [])

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
            receipt = write_checkpoint_folder(options.out, options.overwrite, loaded, result.folded_tensors,
                                    {"alpha": repr(float(proj.alpha)), "fold_site": site.path,
                                                                          "fold_side": site.side}, resolved, report)
    finish_report(report, timer, device, session.loaded, options)
    if writes:  # the report inside the folder carries the final timings too
        receipt.write_text("report.json", rep.dumps(report))  # not into a later --overwrite run's folder
    return report
