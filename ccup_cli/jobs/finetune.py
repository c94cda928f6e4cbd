"""The job behind ``ccup unlearn --method finetune``: the gradient baseline, on labelled train images.

The tower itself changes, so the evaluation images are encoded again after training; the
training images come from ``finetune_data`` (see ``door.finetune_dataset``), never from the
evaluation images.
"""

from __future__ import annotations

import os

import torch

from ..errors import CheckpointError, SpecError
from ..methods.finetune import finetune_unlearn
from ..metrics.compare import delta, metrics_for
from ..output import report as rep
from ..run.door import Plan
from ..run.options import RunOptions
from ..run.provenance import PhaseTimer, dataset_record, finish_report, resolved_fields, start_report
from ..run.session import open_session
from ..run.writer import write_checkpoint_folder
from ..text.embeddings import default_retain


def run_finetune(plan: Plan, options: RunOptions, timer: PhaseTimer, device: str) -> dict:
    spec, dataset, train = plan.spec, plan.dataset, plan.train
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SpecError("method: finetune runs in one process, not under torchrun",
                        "run it without torchrun, or use method ccup or nullspace")
    session = open_session(spec.model, spec.pretrained, options, device, timer)
    device = session.device  # this rank's device under torchrun
    loaded, site = session.loaded, session.site
    if site.side != "image":
        raise CheckpointError(f"method: finetune trains the image tower's last layers, and this image tower ends "
                              f"without a linear map (ccup would fold into {site.path})",
                              "use method ccup, which folds on the text side")
    retain = spec.retain if spec.retain is not None else default_retain(spec.forget, dataset.classnames)
    pre, hit = session.encode_images(dataset)
    classifier = session.classifier(dataset.classnames, plan.templates).to(pre.device)
    forget_ids = [dataset.classnames.index(f) for f in spec.forget]
    before = metrics_for(site, session.original, pre, classifier, dataset, spec.forget)
    target = spec.max_forget_acc if spec.max_forget_acc is not None else 0.0
    torch.manual_seed(spec.finetune_seed)
    with timer("finetune"):
        ft = finetune_unlearn(loaded, train, classifier, forget_ids,
                              steps=spec.finetune_steps, lr=spec.finetune_lr, batch_size=spec.finetune_batch_size,
                              target_forget_acc=target, seed=spec.finetune_seed, device=device,
                              progress=options.progress)
    pre_after, _ = session.encode_images(dataset, use_cache=False, phase="encode_images_after")
    state = loaded.model.state_dict()
    replaced = {k: state[k].detach().cpu() for k in ft.trained_keys}
    after = metrics_for(site, {k: state[k] for k in site.keys}, pre_after, classifier, dataset, spec.forget)

    resolved = spec.model_copy(update={"retain": retain, **resolved_fields(spec, loaded)})
    report = start_report("unlearn", options.argv, loaded, resolved)
    report["inputs"]["train_data"] = dataset_record(train)
    report["finetune"] = {"steps": ft.steps, "step_budget": spec.finetune_steps, "lr": spec.finetune_lr,
                          "batch_size": spec.finetune_batch_size, "images_seen": ft.images_seen,
                          "stopped_early": ft.stopped_early, "target_forget_acc": target,
                          "trained_tensors": ft.trained_keys, "history": ft.history}
    report["projector"] = {"method": "finetune", "alpha": None, "rank": None, "fold_site": site.path,
                           "fold_keys": ft.trained_keys}
    report["text"] = {"forget_classes": len(spec.forget), "retain_classes": len(retain)}
    report["warnings"] = []
    report["dataset"] = dataset_record(dataset, hit)
    report["metrics"] = {"before": before, "after": after, "delta": delta(after, before)}
    if options.out is not None:
        with timer("write"):
            receipt = write_checkpoint_folder(options.out, options.overwrite, loaded, replaced,
                                    {"steps": str(ft.steps), "lr": repr(spec.finetune_lr)}, resolved, report)
    finish_report(report, timer, device, session.loaded, options)
    if options.out is not None:
        receipt.write_text("report.json", rep.dumps(report))  # not into a later --overwrite run's folder
    return report
