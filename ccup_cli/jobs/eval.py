"""The job behind ``ccup eval``: zero-shot accuracy of one model, with CI thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..backends.base import backend_for
from ..data.catalog import DATASET_NAMES, check_classes_in, check_dataset_name, preset_classnames
from ..errors import Problems, SpecError
from ..methods.prompt_sides import domain_problems, forgotten_classes
from ..metrics.targets import search_failures, search_gone_checks
from ..output import report as rep
from ..presets import defaults
from ..run.door import canonical_names, default_eval, open_eval_dataset, pretrained_problems
from ..run.options import RunOptions, resolve_device
from ..run.provenance import PhaseTimer, finish_report, start_report
from ..run.writer import check_output
from ..text.templates import load_templates


@dataclass
class EvalRequest:
    model: str | None = None
    pretrained: str | None = None
    eval: str | None = None
    data_root: str | None = None
    eval_split: str = "test"
    eval_limit: int | None = None
    download: bool = False
    forget: list[str] = field(default_factory=list)
    forget_domains: list[str] = field(default_factory=list)  # the forget split is these domains' cells
    templates: str = defaults.FORGET_TEMPLATES
    classnames: str | None = None
    max_forget_acc: float | None = None
    min_retain_acc: float | None = None
    max_forget_retrieval: float | None = None  # each forget class's search precision@10, @100, R-precision
    max_forget_auc_gap: float | None = None  # each forget class's search |AUC - 0.5|: chance at both ends
    search_gone: bool = False  # each forget class's search GONE at every depth, as ccup audit reads it


def validate_eval_request(req: EvalRequest) -> None:
    problems = []
    for name in ("max_forget_acc", "min_retain_acc", "max_forget_retrieval"):
        value = getattr(req, name)
        if value is not None and not 0.0 <= value <= 1.0:
            problems.append(f"{name.replace('_', '-')}: {value} is outside [0, 1]; give a fraction such as 0.05")
    if req.max_forget_auc_gap is not None and not 0.0 <= req.max_forget_auc_gap <= 0.5:
        problems.append(f"max-forget-auc-gap: {req.max_forget_auc_gap} is outside [0, 0.5]; give a distance from "
                        "chance such as 0.15")
    if req.max_forget_acc is not None and not (req.forget or req.forget_domains):
        problems.append("max-forget-acc: needs --forget or --forget-domains to know which images to check")
    for name in ("max_forget_retrieval", "max_forget_auc_gap", "search_gone"):
        if getattr(req, name) not in (None, False) and not req.forget:
            problems.append(f"{name.replace('_', '-')}: needs --forget to know which classes to check")
    if req.eval_limit is not None and req.eval_limit <= 0:
        problems.append(f"eval-limit: {req.eval_limit} must be a positive number of images per class")
    if problems:
        raise SpecError(problems)


def _pc(share: float) -> str:
    return f"{100 * share:.1f} %"


def threshold_checks(req: EvalRequest, metrics: dict, forget: list[str] | None = None) -> list[tuple[bool, str]]:
    """``(held, message)`` per threshold given, in %: a failure says by how many points.

    ``forget``: the forget classes in the dataset's own spelling (default ``req.forget``); the search
    thresholds look each one up by that name.
    """
    checks = []
    forget_top1 = metrics["forget"]["top1"]
    if req.max_forget_acc is not None and forget_top1 is not None:
        over = forget_top1 - req.max_forget_acc
        checks.append((over <= 0, f"forget top-1 {_pc(forget_top1)} ≤ {_pc(req.max_forget_acc)}" if over <= 0 else
                       f"forget top-1 {_pc(forget_top1)} is above --max-forget-acc {_pc(req.max_forget_acc)} "
                       f"by {100 * over:.1f} points"))
    retain_top1 = metrics["retain"]["top1"]
    if req.min_retain_acc is not None and retain_top1 is not None:
        under = req.min_retain_acc - retain_top1
        checks.append((under <= 0, f"retain top-1 {_pc(retain_top1)} ≥ {_pc(req.min_retain_acc)}" if under <= 0 else
                       f"retain top-1 {_pc(retain_top1)} is below --min-retain-acc {_pc(req.min_retain_acc)} "
                       f"by {100 * under:.1f} points"))
    failed = search_failures(metrics, req.forget if forget is None else forget, req.max_forget_retrieval,
                             req.max_forget_auc_gap)
    checks += [(False, message) for message in failed]
    if not failed and (req.max_forget_retrieval is not None or req.max_forget_auc_gap is not None):
        checks.append((True, "text search for every forget class within --max-forget-retrieval / "
                             "--max-forget-auc-gap"))
    if req.search_gone:
        checks += search_gone_checks(metrics, req.forget if forget is None else forget)
    return checks


def threshold_failures(req: EvalRequest, metrics: dict) -> list[str]:
    """One message per threshold that does not hold, saying by how much (in %)."""
    return [message for held, message in threshold_checks(req, metrics) if not held]


def run_eval(req: EvalRequest, options: RunOptions, report_path: Path | None = None) -> tuple[dict, list[str]]:
    """Zero-shot evaluation of one model. Returns (report, failed thresholds)."""
    options = options.check()
    validate_eval_request(req)
    timer = PhaseTimer()
    eval_name = default_eval(req.model, req.eval, domains=bool(req.forget_domains))
    problems = Problems()  # every problem at the door is reported at once
    problems.add(pretrained_problems(req.model, req.pretrained))
    if eval_name is None:
        problems.add("eval: no dataset given; pass --eval DATASET (a name or an ImageFolder path)")
    if report_path is not None:
        problems.attempt(check_output, report_path, options.overwrite, what="report")
    templates = problems.attempt(load_templates, req.templates)
    problems.attempt(backend_for, req.model, req.pretrained)  # a missing optional package is bad input
    dataset = None
    if eval_name is not None and problems.passes(check_dataset_name, eval_name):
        preset = preset_classnames(eval_name) if eval_name in DATASET_NAMES and req.classnames is None else None
        if preset:  # a named dataset's classes are known before its files are opened
            problems.attempt(check_classes_in, {"forget": req.forget}, preset, eval_name)
        dataset = problems.attempt(open_eval_dataset, eval_name, req.data_root, req.eval_split, req.download,
                                   req.eval_limit, req.classnames, timer)
    problems.raise_all()
    check_classes_in({"forget": req.forget}, dataset.classnames, dataset.name)
    forget = canonical_names(req.forget, dataset.classnames)
    if req.forget_domains:
        forget = _domain_forget_split(req, dataset, forget)
    device = resolve_device(options.device, options.decode)  # after the door: asking torch about CUDA costs seconds

    # lazy: start-up time (torch loads after the door)
    from ..metrics.compare import metrics_for
    from ..run.session import evaluation_inputs, open_session

    session = open_session(req.model, req.pretrained, options, device, timer)

    device = session.device  # this rank's device under torchrun
    # the same features and classifier recipe an unlearn job evaluates with, so a patched output's
    # figures here equal that job's metrics.after
    inputs = evaluation_inputs(session, dataset, templates, None, None)
    with timer("metrics"):
        before = metrics_for(session.site, session.original, inputs.pre_projection_features, inputs.classifier,
                             dataset, forget, req.forget_domains, inputs.prompts_before_fold)
    hit = inputs.feature_cache_hit
    report = start_report("eval", options.argv, session.loaded, None, dataset, hit,
                          request={**req.__dict__, "eval": eval_name, "forget": forget if req.forget else []})
    report["metrics"] = {"before": before}
    checks = threshold_checks(req, before, canonical_names(req.forget, dataset.classnames))
    failures = [message for held, message in checks if not held]
    report["thresholds"] = {"max_forget_acc": req.max_forget_acc, "min_retain_acc": req.min_retain_acc,
                            "max_forget_retrieval": req.max_forget_retrieval,
                            "max_forget_auc_gap": req.max_forget_auc_gap, "search_gone": req.search_gone,
                            "passed": not failures,
                            "failures": failures, "held": [message for held, message in checks if held]}
    finish_report(report, timer, device, session.loaded, options)
    if report_path is not None and session.world.is_main:  # under torchrun, rank 0 alone writes
        rep.write_report(Path(report_path).absolute(), report, options.overwrite)
    return report, failures


def _domain_forget_split(req: EvalRequest, dataset, forget: list[str]) -> list[str]:
    """The forget classes of a ``--forget-domains`` check (every class for a whole domain), after
    checking the domains against the dataset's."""
    known = getattr(dataset, "domain_names", None)
    if known is None:
        raise SpecError(f"forget-domains: the eval data {dataset.name} has no domains",
                        "use a domain dataset (fashion-mnist-domains, or a root/<domain>/<class>/ folder)")
    problems = domain_problems(req.forget_domains, {d: [] for d in known})
    if problems:
        raise SpecError(problems)
    return forgotten_classes(forget, req.forget_domains, dataset.classnames)
