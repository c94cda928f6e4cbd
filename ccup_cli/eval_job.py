"""The job behind ``ccup eval``: zero-shot accuracy of one model, with CI thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import report as rep
from .api import embed_classes
from .data import open_dataset
from .errors import OutputError, SpecError
from .evaluate import metrics_for
from .fold import locate_fold_site, site_tensors
from .models import load_model
from .pipeline import (
    PhaseTimer,
    RunOptions,
    canonical_names,
    dataset_report,
    default_eval,
    encode_dataset,
    model_report,
    resolve_device,
)
from .spec import UnlearnSpec, check_classes_in
from .text import load_templates


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
    templates: str = "openai"
    classnames: str | None = None
    max_forget_acc: float | None = None
    min_retain_acc: float | None = None


def validate_eval_request(req: EvalRequest) -> None:
    problems = []
    for name in ("max_forget_acc", "min_retain_acc"):
        value = getattr(req, name)
        if value is not None and not 0.0 <= value <= 1.0:
            problems.append(f"{name.replace('_', '-')}: {value} is outside [0, 1]; give a fraction such as 0.05")
    if req.max_forget_acc is not None and not req.forget:
        problems.append("max-forget-acc: needs --forget to know which classes to check")
    if req.eval_limit is not None and req.eval_limit <= 0:
        problems.append(f"eval-limit: {req.eval_limit} must be a positive number of images per class")
    if problems:
        raise SpecError(problems)


def threshold_failures(req: EvalRequest, metrics: dict) -> list[str]:
    """One message per threshold that does not hold, saying by how much."""
    failures = []
    forget_top1 = metrics["forget"]["top1"]
    if req.max_forget_acc is not None and forget_top1 is not None and forget_top1 > req.max_forget_acc:
        failures.append(f"forget top-1 {forget_top1:.4f} is above --max-forget-acc {req.max_forget_acc:.4f} "
                        f"by {forget_top1 - req.max_forget_acc:.4f}")
    retain_top1 = metrics["retain"]["top1"]
    if req.min_retain_acc is not None and retain_top1 is not None and retain_top1 < req.min_retain_acc:
        failures.append(f"retain top-1 {retain_top1:.4f} is below --min-retain-acc {req.min_retain_acc:.4f} "
                        f"by {req.min_retain_acc - retain_top1:.4f}")
    return failures


def run_eval(req: EvalRequest, options: RunOptions, report_path: Path | None = None) -> tuple[dict, list[str]]:
    """Zero-shot evaluation of one model. Returns (report, failed thresholds)."""
    validate_eval_request(req)
    timer = PhaseTimer()
    device = resolve_device(options.device)
    eval_name = default_eval(req.model, req.eval)
    if eval_name is None:
        raise SpecError("eval: no dataset given", "pass --eval DATASET (a name or an ImageFolder path)")
    if report_path is not None and report_path.exists() and not options.overwrite:
        raise OutputError(f"report {report_path} already exists", "pass --overwrite or choose another --out")
    templates = load_templates(req.templates)
    with timer("open_dataset"):
        dataset = open_dataset(eval_name, req.data_root, req.eval_split, req.download, req.eval_limit,
                               req.classnames)
    probe = UnlearnSpec.model_construct(forget=req.forget, retain=None)
    check_classes_in(probe, dataset.classnames, dataset.name)
    forget = canonical_names(req.forget, dataset.classnames)
    with timer("load_model"):
        loaded = load_model(req.model, req.pretrained, device)
    site = locate_fold_site(loaded.model)
    cache_id = loaded.cache_id if options.use_cache else None
    with timer("encode_images"):
        pre, hit = encode_dataset(loaded, site, dataset, options, device)
    with timer("eval_text"):
        classifier = embed_classes(loaded.model, loaded.tokenizer, dataset.classnames, templates, cache_id,
                                   loaded.model_name).per_class
    with timer("metrics"):
        before = metrics_for(site, site_tensors(loaded.model, site), pre, classifier, dataset, forget)
    report = rep.new_report("eval", options.argv)
    report["request"] = {**req.__dict__, "eval": eval_name, "forget": forget}
    report["model"] = model_report(loaded)
    report["preprocess_cfg"] = loaded.preprocess_cfg
    report["inputs"] = {"checkpoint": {"path": str(loaded.checkpoint_path) if loaded.checkpoint_path else None,
                                       "sha256": loaded.checkpoint_sha256}}
    report["dataset"] = {**dataset_report(dataset), "feature_cache_hit": hit}
    report["metrics"] = {"before": before}
    failures = threshold_failures(req, before)
    report["thresholds"] = {"max_forget_acc": req.max_forget_acc, "min_retain_acc": req.min_retain_acc,
                            "passed": not failures, "failures": failures}
    report["timings"] = timer.seconds
    report["environment"] = rep.environment(device)
    if report_path is not None:
        report_path = report_path.absolute()
        if not report_path.parent.is_dir():
            raise OutputError(f"folder {report_path.parent} does not exist", "create it or choose another --out")
        rep.write_report(report_path, report)
    return report, failures
