"""The job behind ``ccup audit``: is the class really gone, and what would bring it back?

PATCHED is an unlearn output folder (its ``report.json`` names the original model and the
forget classes, step after step for sequential unlearning) or a checkpoint with ``--model``.
Only the image tower's final linear map differs between original and patched, so the images
are encoded once with the original model, up to that map, and the patched features are one
matrix product away; the checkpoints are compared to make sure (else both are encoded).
Probes and LEACE are timed apart: they are the part that needs labelled images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..audit.aliases import read_aliases, second_templates
from ..audit.lineage import Lineage, trace
from ..backends.base import backend_for
from ..backends.sources import checkpoint_in_dir
from ..data.catalog import MINI_NAME, check_classes_in
from ..data.dataset import EvalDataset
from ..data.datasets import DATASETS, open_dataset
from ..errors import CheckpointError, DatasetError, Problems, SpecError
from ..output.portable import portable_path
from ..run.door import canonical_names, default_eval, open_eval_dataset, pretrained_problems
from ..run.options import RunOptions, resolve_device
from ..run.provenance import PhaseTimer, finish_report, start_report
from ..run.writer import check_output
from ..text.templates import load_templates
from .reference import REFERENCE_PHASE, ReferenceSource, check_reference, measure_reference, open_reference

PROBE_PHASES = ("probe_images", "probes", "leace")
HELD_OUT_SHARE = 0.5  # without a train split, this share of each class's eval images trains the probes


@dataclass
class AuditRequest:
    patched: str  # an unlearn output folder, or a checkpoint (with model)
    model: str | None = None  # the original model (default: from the folder's report)
    pretrained: str | None = None  # the original weights (default: from the folder's report)
    eval: str | None = None
    data_root: str | None = None
    eval_split: str = "test"
    eval_limit: int | None = None
    download: bool = False
    classnames: str | None = None
    forget: list[str] = field(default_factory=list)  # default: every step's forget classes
    aliases: str | None = None  # YAML file: class -> [alias, ...]
    templates: str | None = None  # the second template set (default: aliases.UNSEEN_TEMPLATES)
    probe_shots: list[int] = field(default_factory=lambda: [4, 16])
    probe_draws: int = 5
    probe_seed: int = 0
    leace: bool = True  # the LEACE comparison row, where concept-erasure is installed
    reference: str | None = None  # a model that never learnt the forget classes (jobs/reference.py)
    reference_pretrained: str | None = None  # its weights, where --reference is a model name


@dataclass
class Planned:
    """What the door resolved: models, classes, data and templates."""

    lineage: Lineage | None
    patched_file: Path
    model: str | None
    pretrained: str | None
    forget: list[str]
    dataset: EvalDataset
    unlearn_templates: list[str]
    unlearn_templates_name: str
    second_templates: list[str]
    second_templates_name: str
    aliases: dict[str, list[str]]
    forget_domains: list[str] = field(default_factory=list)  # a domain forget: the class x domain grid is audited
    reference: ReferenceSource | None = None


def _checkpoint_file(patched: str) -> Path:
    path = Path(patched.removeprefix("local-dir:"))
    if path.is_dir():
        found = checkpoint_in_dir(path)
        if found is None:
            raise CheckpointError(f"{path} holds no checkpoint file", "give an output folder of ccup unlearn")
        return found
    if not path.is_file():
        raise CheckpointError(f"{patched} does not exist", "give an unlearn output folder or a checkpoint file")
    return path


def _lineage_facts(req: AuditRequest) -> tuple[Path, Lineage | None, dict]:
    """The checkpoint, the chain of folders behind it, and the last step's spec ({} for a bare file)."""
    patched_file = _checkpoint_file(req.patched)
    lineage = trace(req.patched)
    last = lineage.steps[-1].spec if lineage else {}
    if last.get("fold") == "text":
        raise SpecError(f"{req.patched}: ccup audit measures image-side folds, and this one folded on the text "
                        "side (its image features are the original's, so probes see no change by construction)",
                        "use ccup eval on the folder for zero-shot and text search")
    return patched_file, lineage, last


def plan(req: AuditRequest, options: RunOptions, timer: PhaseTimer) -> Planned:
    """Check everything before a model loads: the chain of folders, classes, aliases, templates, output.

    Checks that do not depend on each other all run, and every problem they find is reported at
    once (as ``run.door.admit`` does for unlearn); a check that needs what a failed one would have
    given (the classes of a dataset that did not open) is skipped rather than reported twice.
    """
    problems = Problems()
    problems.add([f"probe-shots: {k} must be a positive number of images per class" for k in req.probe_shots
                  if k < 1])
    if req.probe_draws < 1:
        problems.add(f"probe-draws: {req.probe_draws} must be at least 1")
    if req.eval_limit is not None and req.eval_limit <= 0:
        problems.add(f"eval-limit: {req.eval_limit} must be a positive number of images per class")
    req.probe_shots = sorted(set(req.probe_shots))  # the verdict reads the largest k
    facts = problems.attempt(_lineage_facts, req)
    patched_file, lineage, last = facts if facts is not None else (None, None, {})
    model, pretrained = lineage.root_source if lineage else (None, None)
    model = req.model if req.model is not None else model
    pretrained = req.pretrained if req.pretrained is not None else pretrained
    source_known = lineage is not None or req.model is not None
    if facts is not None and not source_known:
        problems.add(f"model: {req.patched} is no ccup output folder, so the original model is unknown; "
                     "pass --model NAME (and --pretrained for the original weights)")
    forget = req.forget or (lineage.forget if lineage else [])
    forget_domains = list(last.get("forget_domains") or [])
    if req.reference is not None and forget_domains:
        problems.add("reference: the three-way comparison measures class forgets, and this one forgot in "
                     "domains; drop --reference")
    if facts is not None and not forget and not forget_domains:
        problems.add("forget: no forget classes given, and none recorded beside the checkpoint; pass --forget a,b")
    if source_known:
        problems.add(pretrained_problems(model, pretrained))
        problems.attempt(backend_for, model, pretrained)
    reference = problems.attempt(check_reference, req.reference, req.reference_pretrained, model)
    eval_name = req.eval or last.get("eval") or (default_eval(model, None) if source_known else None)
    if eval_name is None and source_known:
        problems.add("eval: no dataset given; pass --eval DATASET (a name or an ImageFolder path)")
    templates_name = last.get("templates") or "openai"
    unlearn_templates = problems.attempt(load_templates, templates_name)
    own_templates = problems.attempt(load_templates, req.templates) if req.templates else None
    aliases_read = req.aliases is not None and problems.passes(read_aliases, req.aliases)  # format, before the data
    if options.out is not None:
        problems.attempt(check_output, options.out, options.overwrite, (req.patched, pretrained, model))
    data_root = req.data_root if req.data_root is not None else (last.get("data_root") if req.eval is None else None)
    classnames = req.classnames if req.classnames is not None else (last.get("classnames") if req.eval is None
                                                                    else None)
    dataset = None
    if eval_name is not None:
        dataset = problems.attempt(open_eval_dataset, eval_name, data_root, req.eval_split, req.download,
                                   req.eval_limit, classnames, timer)
    aliases: dict[str, list[str]] = {}
    if dataset is not None:
        if forget_domains and getattr(dataset, "domain_names", None) is None:
            problems.add(f"eval: the unlearning forgot in domains ({', '.join(forget_domains)}) but {dataset.name} "
                         "has no domains; audit it on a domain dataset (e.g. fashion-mnist-domains)")
        forget = forget or list(dataset.classnames)  # a whole domain: every class is forgotten there
        if problems.passes(check_classes_in, {"forget": forget}, dataset.classnames, dataset.name):
            forget = canonical_names(forget, dataset.classnames)
        if aliases_read:  # then against the dataset's classes
            aliases = problems.attempt(read_aliases, req.aliases, dataset.classnames, dataset.name) or {}
    problems.raise_all()
    second = second_templates(unlearn_templates, own_templates)
    return Planned(lineage, patched_file, model, pretrained, forget, dataset, unlearn_templates, templates_name,
                   second, req.templates or "unseen (built in)", aliases, forget_domains, reference)


def probe_data(dataset: EvalDataset, data_root: str | None, download: bool):
    """The labelled images probes train on: the train split, else a held-out half of the eval data.

    Returns ``(train_dataset, test_indices into the eval data or None for all, description)``.
    """
    import numpy as np

    name = "fashion-mnist" if dataset.name == MINI_NAME else dataset.name
    root = None if dataset.name == MINI_NAME else data_root
    if name in DATASETS:
        try:
            train = open_dataset(name, root, "train", download)
            if [c.lower() for c in train.classnames] == [c.lower() for c in dataset.classnames]:
                return train, None, f"{name} train split"
        except DatasetError:
            pass
    rng = np.random.default_rng(0)
    train_idx = []
    for c in range(len(dataset.classnames)):
        idx = rng.permutation(np.flatnonzero(dataset.labels == c))
        train_idx.append(idx[: int(len(idx) * HELD_OUT_SHARE)])
    train_idx = np.sort(np.concatenate(train_idx))
    test_idx = np.setdiff1d(np.arange(len(dataset)), train_idx)
    return dataset.subset(train_idx), test_idx, f"held-out {HELD_OUT_SHARE:.0%} of the eval data (no train split)"


def _compare_checkpoints(session, patched_file: Path):
    """The patched fold-site tensors, and the keys (beyond the fold site) where the two differ."""
    import torch

    # lazy: start-up time (torch loads after the door)
    from ..backends.checkpoint import read_state_dict

    patched = read_state_dict(patched_file)
    source = session.loaded.source_state_dict
    differ = sorted(k for k in set(source) | set(patched)
                    if k not in source or k not in patched or source[k].shape != patched[k].shape
                    or not torch.equal(source[k], patched[k].to(source[k].dtype)))
    outside = [k for k in differ if k not in session.site.keys]
    tensors = {k: patched[k] for k in session.site.keys} if not outside else None
    return tensors, differ, outside


def run_audit(req: AuditRequest, options: RunOptions) -> dict:
    """Audit a patched checkpoint against its original. Returns the report (written under ``options.out``)."""
    timer = PhaseTimer()
    planned = plan(req, options, timer)
    device = resolve_device(options.device, options.decode)


    # lazy: start-up time (torch loads after the door)
    from ..audit import figures as audit
    from ..backends.fold import project
    from ..metrics.zero_shot import forget_ids
    from ..run.session import open_session
    from ..text.embeddings import embed_classes

    dataset, forget = planned.dataset, planned.forget
    # the reference loads first: a name no backend knows fails before any image is encoded
    ref_session = open_reference(planned.reference, options, device, timer) if planned.reference else None
    session = open_session(planned.model, planned.pretrained, options, device, timer)
    if session.site.side != "image":
        raise CheckpointError(f"ccup audit measures image-side folds, and {planned.model or 'this model'} folds on "
                              "the text side (its image features are the original's)",
                              "use ccup eval on the folder for zero-shot and text search")
    with timer("compare_checkpoints"):
        patched_tensors, differ, outside = _compare_checkpoints(session, planned.patched_file)
    pre, hit = session.encode_images(dataset)
    before = project(session.site, session.original, pre)
    patched_session = None
    if patched_tensors is not None:
        after = project(session.site, patched_tensors, pre)
    else:  # more than the final map changed (e.g. fine-tuning): encode with the patched model too
        patched_session = open_session(planned.model, str(planned.patched_file), options, device, timer)
        pre_p, _ = patched_session.encode_images(dataset, phase="encode_images_patched")
        after = project(patched_session.site, patched_session.original, pre_p)

    classnames = dataset.classnames
    classifier = session.classifier(classnames, planned.unlearn_templates)
    with timer("audit_text"):
        second = session.classifier(classnames, planned.second_templates)
        alias_vectors = {c: embed_classes(session.loaded.encode_prompts, names, planned.unlearn_templates,
                                          session.cache_id, session.loaded.model_name).per_class
                         for c, names in planned.aliases.items()}
    with timer("metrics"):
        zero_shot = []
        sets = [("class names", planned.unlearn_templates_name + " (used by the unlearning)", classifier),
                ("class names", planned.second_templates_name, second)]
        if alias_vectors:
            sets.append(("aliases (mean per class)", planned.unlearn_templates_name,
                         audit.alias_classifier(classifier, classnames, alias_vectors)))
        for names, templates, cls in sets:
            zero_shot.append({"names": names, "templates": templates,
                              "before": audit.split_top1(before, cls, dataset.labels, classnames, forget),
                              "after": audit.split_top1(after, cls, dataset.labels, classnames, forget)})
        alias_rows = audit.alias_rows(before, after, classifier, dataset.labels, classnames, planned.aliases,
                                      alias_vectors)
        confusion = audit.confusion_shift(before, after, classifier, dataset.labels, classnames, forget)
        grid = _domain_grid(planned, before, after, classifier) if planned.forget_domains else None

    probes = _probes(req, planned, session, patched_tensors, patched_session, before, after, timer) \
        if req.probe_shots else None
    verdict = audit.verdict(zero_shot, alias_rows, probes, forget)
    reference = None
    if ref_session is not None:
        probe_split = probe_data(dataset, req.data_root, req.download) if req.probe_shots else None
        reference = measure_reference(req, planned, ref_session, session, patched_tensors, patched_session, pre,
                                      after, probe_split, timer)

    report = start_report("audit", options.argv, session.loaded, None, dataset, hit)
    report["patched"] = {"path": portable_path(planned.patched_file), "sha256": _sha(planned.patched_file),
                         "differs_from_original_at": differ,
                         "single_pass": patched_tensors is not None,
                         "note": None if patched_tensors is not None else
                         f"the patched checkpoint differs outside the fold site ({', '.join(outside[:5])}...): "
                         "both models encoded the images"}
    report["forget"] = forget
    report["verdict"] = verdict
    report["statement"] = audit.HONEST_STATEMENT
    report["lineage"] = ({"steps": planned.lineage.record(), "intact": planned.lineage.intact()}
                         if planned.lineage else None)
    report["templates"] = {"unlearning": planned.unlearn_templates_name, "second": planned.second_templates,
                           "second_name": planned.second_templates_name}
    report["aliases"] = planned.aliases
    references = unlearning_references(planned.patched_file)
    if references is not None:
        report["reference_images"] = references
    report["zero_shot"] = zero_shot
    report["alias_rows"] = alias_rows
    report["confusion"] = confusion
    report["probes"] = probes
    report["forget_ids"] = forget_ids(classnames, forget)
    report["domain_grid"] = grid
    report["reference"] = reference
    finish_report(report, timer, device, session.loaded)
    report["cost"] = {"audit_seconds_without_probes": round(sum(v for k, v in timer.seconds.items()
                                                               if k not in PROBE_PHASES
                                                               and not k.startswith(REFERENCE_PHASE)), 3),
                      "reference_seconds": round(sum(v for k, v in timer.seconds.items()
                                                     if k.startswith(REFERENCE_PHASE)), 3) if reference else None,
                      "probe_seconds": round(sum(v for k, v in timer.seconds.items() if k in PROBE_PHASES), 3)}
    if options.out is not None:
        # lazy: start-up time (torch loads after the door)
        from ..audit.page import write_audit_folder

        write_audit_folder(Path(options.out), options.overwrite, report)
    return report


def unlearning_references(patched_file: Path) -> dict | None:
    """What the unlearning read from reference images (its report.json's ``reference_images``: count,
    the calibrated sink per class, the erasure), or None when it read none or left no report."""
    report_file = patched_file.parent / "report.json"
    if not report_file.is_file():
        return None
    try:
        refs = json.loads(report_file.read_text(encoding="utf-8")).get("reference_images")
    except (OSError, ValueError):
        return None
    if not refs:
        return None
    return {"count": refs.get("count"), "file_list_sha256": refs.get("file_list_sha256"),
            "sink": refs.get("sink"), "erase": refs.get("erase")}


def _domain_grid(planned: Planned, before, after, classifier) -> dict:
    """The class x domain top-1 grid before and after, and the forgotten cells' top-1, of a domain forget."""
    # lazy: start-up time (torch loads after the door)
    from ..metrics.domains import cell_grid, domain_aware_metrics

    dataset = planned.dataset
    out = {"forget_domains": planned.forget_domains, "forget": planned.forget}
    for key, feats in (("before", before), ("after", after)):
        metrics = domain_aware_metrics(feats, classifier, dataset, planned.forget, planned.forget_domains)
        out[key] = {"grid": cell_grid(metrics, dataset.classnames), "forgotten_cells_top1": metrics["forget"]["top1"],
                    "domain_top1": {d: m["overall"]["top1"] for d, m in metrics["domains"].items()}}
    return out


def _sha(path: Path) -> str:
    # lazy: start-up time (torch loads after the door)
    from ..output.atomic import sha256_file

    return sha256_file(path)


def _probes(req: AuditRequest, planned: Planned, session, patched_tensors, patched_session, before, after,
            timer: PhaseTimer) -> dict:
    """k-shot probes on patched and original features (and LEACE-erased patched features, as a comparison)."""
    import numpy as np
    import torch

    # lazy: start-up time (torch loads after the door)
    from ..audit.probe import draw_pool, probe_curve
    from ..backends.fold import project
    from ..metrics.zero_shot import forget_ids

    dataset = planned.dataset
    forget_ids = forget_ids(dataset.classnames, planned.forget)
    with timer("probe_images"):
        train, test_idx, source = probe_data(dataset, req.data_root, req.download)
        pool = draw_pool(train.labels, req.probe_shots, req.probe_draws, req.probe_seed)
        used = np.unique(np.concatenate([idx for draws in pool.values() for idx in draws]))
        position = {int(i): j for j, i in enumerate(used)}
        local = {k: [np.array([position[int(i)] for i in idx]) for idx in draws] for k, draws in pool.items()}
        subset = train.subset(used)
        pre_train, _ = session.encode_images(subset, phase="probe_images_encode")
        train_before = project(session.site, session.original, pre_train)
        if patched_tensors is not None:
            train_after = project(session.site, patched_tensors, pre_train)
        else:
            pre_p, _ = patched_session.encode_images(subset, phase="probe_images_encode")
            train_after = project(patched_session.site, patched_session.original, pre_p)
    timer.seconds["probe_images"] = round(timer.seconds.get("probe_images", 0) +
                                          timer.seconds.pop("probe_images_encode", 0), 4)
    test = slice(None) if test_idx is None else torch.as_tensor(test_idx)
    test_labels = dataset.labels if test_idx is None else dataset.labels[test_idx]
    args = dict(n_classes=len(dataset.classnames), forget_ids=forget_ids, shots=req.probe_shots, pool=local,
                seed=req.probe_seed)
    with timer("probes"):
        result = {
            "train_on": source, "test_on": "eval split" if test_idx is None else "the other half of the eval data",
            "shots": list(req.probe_shots), "draws": req.probe_draws, "seed": req.probe_seed,
            "n_train_images": int(len(used)),
            "patched": probe_curve(train_after, subset.labels, after[test], test_labels, **args),
            "original": probe_curve(train_before, subset.labels, before[test], test_labels, **args),
        }
    result["leace"] = _leace(req, train_after, subset.labels, after[test], test_labels, forget_ids, args, timer)
    return result


def _leace(req, train_after, train_labels, test_after, test_labels, forget_ids, args, timer) -> dict:
    """LEACE (provable linear erasure; needs labelled images) fitted on the probe pool's patched features:
    the forget-class indicator is erased, then the same probes are trained on the erased features."""
    import importlib.util

    note = ("comparison only: LEACE needs labelled images of the forgotten classes, which CCUP does not; "
            "fitted on the probe training images (normalised patched features). It guarantees that no linear "
            "predictor of the forget-class indicator beats a constant on the data it was fitted on; a probe "
            "over all classes, tested on other images, can still find part of what is left")
    if not req.leace:
        return {"status": "off", "note": note}
    if importlib.util.find_spec("concept_erasure") is None:
        return {"status": "not installed", "note": note + "; pip install 'ccup[audit]'"}
    import torch
    import torch.nn.functional as F
    from concept_erasure import LeaceEraser

    # lazy: start-up time (torch loads after the door)
    from ..audit.probe import probe_curve

    with timer("leace"):
        labels = torch.as_tensor(train_labels, dtype=torch.long)
        z = torch.zeros(len(labels), len(forget_ids), dtype=torch.float64)
        for j, c in enumerate(forget_ids):
            z[labels.eq(c), j] = 1.0
        x = F.normalize(train_after.double(), dim=-1)
        eraser = LeaceEraser.fit(x, z)
        erased_train = eraser(x).float()
        erased_test = eraser(F.normalize(test_after.double(), dim=-1)).float()
        rows = probe_curve(erased_train, train_labels, erased_test, test_labels, **args, normalize=False)
    return {"status": "measured", "note": note, "rows": rows}
