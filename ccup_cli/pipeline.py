"""The jobs behind ``ccup unlearn`` and ``ccup sweep``: validate, load, compute, write, report.

Nothing here prints or exits; progress goes through a callback and problems are raised as
``CcupError``. The CLI renders what these functions return.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import report as rep
from .api import default_retain, embed_classes, embed_forget_and_retain, unlearn
from .atomic import atomic_dir, sha256_file
from .data import MINI_NAME, EvalDataset, open_dataset
from .errors import CcupError, OutputError, SpecError
from .evaluate import delta, encode_pre_projection, feature_cache_key, metrics_for
from .fold import FoldSite, locate_fold_site, site_tensors
from .models import EMBEDDED_MODEL, LoadedModel, load_model
from .spec import UnlearnSpec, check_classes_in
from .sweep import SweepInputs, plot_tradeoff, run_sweep, smallest_alpha_meeting
from .text import load_templates

Progress = Callable[[str, int, int], None]


class ThresholdNotReachable(CcupError):
    """``--alpha auto`` found no strength that meets the forget target."""


@dataclass
class RunOptions:
    """How to run (never what to do): device, batch size, output, caches."""

    device: str = "auto"
    batch_size: int = 256
    out: Path | None = None
    overwrite: bool = False
    use_cache: bool = True
    argv: list[str] | None = None
    progress: Progress | None = field(default=None, repr=False)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError(f'device: "{device}" was asked for but no CUDA device is available', "use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise SpecError(f'device: "{device}" is not one of auto, cpu, cuda', "pass --device auto, cpu or cuda")
    return device


class PhaseTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str):
        timer = self

        class _Block:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[phase] = round(timer.seconds.get(phase, 0.0) + time.perf_counter() - self.start, 4)

        return _Block()


def default_eval(model: str | None, eval_name: str | None) -> str | None:
    """The embedded model evaluates on the embedded subset unless told otherwise."""
    if eval_name is None and (model is None or model == EMBEDDED_MODEL):
        return MINI_NAME
    return eval_name


def canonical_names(names: list[str], classnames: list[str]) -> list[str]:
    lookup = {c.lower(): c for c in classnames}
    return [lookup.get(n.lower(), n) for n in names]


def _check_output_folder(out: Path, overwrite: bool, pretrained: str | None, model: str | None) -> None:
    out = out.absolute()
    inputs = [Path(p).absolute() for p in (pretrained, (model or "").removeprefix("local-dir:")) if p]
    for inp in inputs:
        if inp.exists() and (inp == out or out in inp.parents):
            raise OutputError(f"--out {out} would overwrite the input {inp}", "choose another --out folder")
    if out.exists() and not overwrite:
        raise OutputError(f"output folder {out} already exists", "pass --overwrite or choose another --out")


def dataset_report(ds: EvalDataset) -> dict:
    return {"name": ds.name, "split": ds.split, "n_images": len(ds), "images_per_class": ds.counts(),
            "file_list_sha256": ds.file_list_sha256()}


def model_report(loaded: LoadedModel) -> dict:
    return {"name": loaded.display_name or loaded.model_name, "open_clip_name": loaded.model_name,
            "pretrained": loaded.pretrained,
            "checkpoint": str(loaded.checkpoint_path) if loaded.checkpoint_path else None}


def encode_dataset(loaded: LoadedModel, site: FoldSite, ds: EvalDataset, options: RunOptions, device: str):
    key = feature_cache_key(loaded.cache_id, site, ds, loaded.preprocess) if options.use_cache else None
    step = None
    if options.progress is not None:
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            options.progress("encoding images", done[0], len(ds))

    return encode_pre_projection(loaded.model, site, ds, loaded.preprocess, options.batch_size, device, step, key)


@dataclass
class _Prepared:
    """Everything validated and computed once, before any strength is chosen."""

    spec: UnlearnSpec
    loaded: LoadedModel
    dataset: EvalDataset | None
    retain: list[str]
    templates: list[str]
    retain_templates: list[str]
    site: FoldSite
    original: dict[str, torch.Tensor]
    cache_id: str | None
    embeddings: tuple
    sweep_inputs: SweepInputs | None


def _prepare(spec: UnlearnSpec, options: RunOptions, timer: PhaseTimer, device: str, need_eval: bool) -> _Prepared:
    spec_eval = default_eval(spec.model, spec.eval)
    if spec_eval != spec.eval:
        spec = spec.model_copy(update={"eval": spec_eval})
    # --- validate at the door: templates, dataset classes, output folder ---
    templates, retain_templates = load_templates(spec.templates), load_templates(spec.retain_templates)
    if need_eval and not spec.eval:
        raise SpecError("eval: a dataset is needed here", "pass --eval DATASET (a name or an ImageFolder path)")
    dataset = None
    if spec.eval:
        with timer("open_dataset"):
            dataset = open_dataset(spec.eval, spec.data_root, spec.eval_split, spec.download, spec.eval_limit,
                                   spec.classnames)
        check_classes_in(spec, dataset.classnames, dataset.name)
        spec = spec.model_copy(update={
            "forget": canonical_names(spec.forget, dataset.classnames),
            "retain": canonical_names(spec.retain, dataset.classnames) if spec.retain is not None else None})
    if options.out is not None:
        _check_output_folder(options.out, options.overwrite, spec.pretrained, spec.model)

    with timer("load_model"):
        loaded = load_model(spec.model, spec.pretrained, device)
    cache_id = loaded.cache_id if options.use_cache else None
    retain = spec.retain if spec.retain is not None else default_retain(
        spec.forget, dataset.classnames if dataset else None)
    site = locate_fold_site(loaded.model)
    original = {k: loaded.source_state_dict[k] for k in site.keys} if set(site.keys) <= set(
        loaded.source_state_dict) else site_tensors(loaded.model, site)
    with timer("text"):
        embeddings = embed_forget_and_retain(loaded.model, loaded.tokenizer, spec.forget, retain, templates,
                                             retain_templates, cache_id, loaded.model_name, options.progress)
    sweep_inputs = None
    if dataset is not None:
        with timer("encode_images"):
            pre, hit = encode_dataset(loaded, site, dataset, options, device)
        with timer("eval_text"):
            classifier = embed_classes(loaded.model, loaded.tokenizer, dataset.classnames, templates, cache_id,
                                       loaded.model_name).per_class.to(pre.device)
        sweep_inputs = SweepInputs(site, original, pre, classifier, dataset, *embeddings, feature_cache_hit=hit)
    return _Prepared(spec, loaded, dataset, retain, templates, retain_templates, site, original, cache_id,
                     embeddings, sweep_inputs)


AUTO_ALPHAS = [round(0.05 * k, 2) for k in range(21)]


def run_unlearn(spec: UnlearnSpec, options: RunOptions) -> dict:
    """Unlearn, evaluate (when the spec names a dataset) and write ``options.out``. Returns the report."""
    timer = PhaseTimer()
    device = resolve_device(options.device)
    prep = _prepare(spec, options, timer, device, need_eval=spec.alpha == "auto" or spec.method == "finetune")
    spec, loaded, site, dataset, retain = prep.spec, prep.loaded, prep.site, prep.dataset, prep.retain
    templates, retain_templates = prep.templates, prep.retain_templates

    if spec.method == "finetune":
        return _run_finetune(prep, options, timer, device)

    auto = None
    alpha = spec.alpha
    if alpha == "auto":
        with timer("auto_alpha"):
            rows = run_sweep(prep.sweep_inputs, [spec.method], AUTO_ALPHAS, spec.forget, spec.lambda_retain,
                             spec.lambda_identity, spec.energy)
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
        auto = {"target_max_forget_acc": spec.max_forget_acc, "chosen_alpha": alpha, "grid": AUTO_ALPHAS,
                "curve": curve}

    with timer("solve_and_fold"):
        result = unlearn(
            loaded.model, loaded.tokenizer, spec.forget, retain, alpha=alpha, method=spec.method,
            templates=templates, retain_templates=retain_templates, lambda_retain=spec.lambda_retain,
            lambda_identity=spec.lambda_identity, energy=spec.energy, inplace=True,
            retain_warn_cosine=spec.retain_warn_cosine, original_tensors=prep.original, cache_id=prep.cache_id,
            model_name=loaded.model_name, device=device, embeddings=prep.embeddings,
        )

    report = rep.new_report("unlearn", options.argv)
    resolved = spec.model_copy(update={"retain": retain}) if spec.retain is None else spec
    report["spec"] = resolved.model_dump(mode="json")
    report["spec_sha256"] = resolved.sha256()
    report["model"] = model_report(loaded)
    report["preprocess_cfg"] = loaded.preprocess_cfg
    report["inputs"] = {"checkpoint": {"path": str(loaded.checkpoint_path) if loaded.checkpoint_path else None,
                                       "sha256": loaded.checkpoint_sha256}}
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
        "forget_templates": len(templates), "retain_templates": len(retain_templates),
        "embeddings": result.embedding_mode,
        "cache_hit": {"forget": result.forget.cache_hit, "retain": result.retain.cache_hit},
        "fast_path": _fast_text(loaded),
    }
    report["text_side"] = result.text_side()
    report["warnings"] = [
        f'retain class "{c["retain"]}" is close to forget class "{c["forget"]}" (cosine {c["cosine"]:.3f}); '
        "keeping it works against forgetting" for c in result.close_retain]

    if prep.sweep_inputs is not None:
        inputs = prep.sweep_inputs
        with timer("metrics"):
            before = metrics_for(site, prep.original, inputs.pre_projection_features, inputs.classifier, dataset,
                                 spec.forget)
            after = metrics_for(site, result.folded_tensors, inputs.pre_projection_features, inputs.classifier,
                                dataset, spec.forget)
        report["dataset"] = dataset_report(dataset)
        report["dataset"]["feature_cache_hit"] = inputs.feature_cache_hit
        report["metrics"] = {"before": before, "after": after, "delta": delta(after, before)}

    if options.out is not None:
        with timer("write"):
            _write_unlearn_outputs(options.out, options.overwrite, loaded, result.folded_tensors,
                                   {"alpha": repr(float(proj.alpha)), "fold_site": site.path}, resolved, report)
    report["timings"] = timer.seconds
    report["environment"] = rep.environment(device)
    if options.out is not None:  # the report inside the folder carries the final timings too
        rep.write_report(Path(options.out) / "report.json", report)
    return report


def _train_dataset(spec: UnlearnSpec) -> EvalDataset:
    """The train split of the evaluation dataset (the mini subset's is Fashion-MNIST's train split)."""
    name = "fashion-mnist" if spec.eval == MINI_NAME else spec.eval
    return open_dataset(name, spec.data_root, spec.finetune_train_split, spec.download)


def _run_finetune(prep: _Prepared, options: RunOptions, timer: PhaseTimer, device: str) -> dict:
    """``method: finetune``: the gradient baseline, evaluated by re-encoding the images after training."""
    from .finetune import finetune_unlearn

    spec, loaded, site, dataset, inputs = prep.spec, prep.loaded, prep.site, prep.dataset, prep.sweep_inputs
    with timer("open_train_split"):
        train = _train_dataset(spec)
    forget_ids = [dataset.classnames.index(f) for f in spec.forget]
    before = metrics_for(site, prep.original, inputs.pre_projection_features, inputs.classifier, dataset,
                         spec.forget)
    target = spec.max_forget_acc if spec.max_forget_acc is not None else 0.0
    torch.manual_seed(spec.finetune_seed)
    with timer("finetune"):
        ft = finetune_unlearn(loaded.model, loaded.preprocess, train, inputs.classifier, forget_ids,
                              steps=spec.finetune_steps, lr=spec.finetune_lr, batch_size=spec.finetune_batch_size,
                              target_forget_acc=target, seed=spec.finetune_seed, device=device,
                              progress=options.progress)
    with timer("encode_images_after"):  # the tower itself changed: the cached features do not apply
        pre_after, _ = encode_dataset(loaded, site, dataset, RunOptions(**{**options.__dict__, "use_cache": False}),
                                       device)
    state = loaded.model.state_dict()
    replaced = {k: state[k].detach().cpu() for k in ft.trained_keys}
    after = metrics_for(site, {k: state[k] for k in site.keys}, pre_after, inputs.classifier, dataset, spec.forget)
    report = rep.new_report("unlearn", options.argv)
    resolved = spec.model_copy(update={"retain": prep.retain}) if spec.retain is None else spec
    report["spec"] = resolved.model_dump(mode="json")
    report["spec_sha256"] = resolved.sha256()
    report["model"] = model_report(loaded)
    report["preprocess_cfg"] = loaded.preprocess_cfg
    report["inputs"] = {"checkpoint": {"path": str(loaded.checkpoint_path) if loaded.checkpoint_path else None,
                                       "sha256": loaded.checkpoint_sha256},
                        "train_split": {"name": train.name, "split": train.split, "n_images": len(train)}}
    report["finetune"] = {"steps": ft.steps, "step_budget": spec.finetune_steps, "lr": spec.finetune_lr,
                          "batch_size": spec.finetune_batch_size, "images_seen": ft.images_seen,
                          "stopped_early": ft.stopped_early, "target_forget_acc": target,
                          "trained_tensors": ft.trained_keys, "history": ft.history}
    report["projector"] = {"method": "finetune", "alpha": None, "rank": None, "fold_site": site.path,
                           "fold_keys": ft.trained_keys}
    report["text"] = {"forget_classes": len(spec.forget), "retain_classes": len(prep.retain)}
    report["warnings"] = []
    report["dataset"] = {**dataset_report(dataset), "feature_cache_hit": inputs.feature_cache_hit}
    report["metrics"] = {"before": before, "after": after, "delta": delta(after, before)}
    if options.out is not None:
        with timer("write"):
            _write_unlearn_outputs(options.out, options.overwrite, loaded, replaced,
                                   {"steps": str(ft.steps), "lr": repr(spec.finetune_lr)}, resolved, report)
    report["timings"] = timer.seconds
    report["environment"] = rep.environment(device)
    if options.out is not None:
        rep.write_report(Path(options.out) / "report.json", report)
    return report


def _fast_text(loaded: LoadedModel) -> bool:
    from .text import supports_fast_text

    return supports_fast_text(loaded.model)


def patched_state_dict(loaded: LoadedModel, folded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The source state dict with only the given tensors replaced, each kept in the source's dtype."""
    return {key: folded[key].to(tensor.dtype) if key in folded else tensor
            for key, tensor in loaded.source_state_dict.items()}


def _write_unlearn_outputs(out: Path, overwrite: bool, loaded: LoadedModel, replaced: dict[str, torch.Tensor],
                           method_metadata: dict[str, str], spec: UnlearnSpec, report: dict) -> None:
    """model.safetensors (source state dict, ``replaced`` tensors swapped in), config, spec, report."""
    from .atomic import os_error_to_output_error
    from .checkpoint import save_safetensors

    out = Path(out).absolute()
    metadata = {
        "format": "pt", "ccup_version": report["ccup_version"], "method": spec.method,
        "forget": json.dumps(spec.forget), "spec_sha256": report["spec_sha256"],
        "source_sha256": loaded.checkpoint_sha256 or "random-init", "model": loaded.model_name, **method_metadata,
    }
    with atomic_dir(out, overwrite) as tmp:
        try:
            ckpt_sha = save_safetensors(patched_state_dict(loaded, replaced), tmp / "model.safetensors",
                                        metadata)
            config = {"model_cfg": loaded.model_cfg, "preprocess_cfg": loaded.preprocess_cfg}
            (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            (tmp / "spec.yaml").write_text(spec.to_yaml(), encoding="utf-8")
        except OSError as err:
            raise os_error_to_output_error(err, out) from err
        report["outputs"] = {
            "folder": str(out),
            "checkpoint": {"path": str(out / "model.safetensors"), "sha256": ckpt_sha},
            "open_clip_config": {"path": str(out / "open_clip_config.json"),
                                 "sha256": sha256_file(tmp / "open_clip_config.json")},
            "spec": {"path": str(out / "spec.yaml"), "sha256": sha256_file(tmp / "spec.yaml")},
        }
        rep.write_report(tmp / "report.json", report)


# --- ccup sweep -------------------------------------------------------------------------------


def run_sweep_job(spec: UnlearnSpec, alphas: list[float], methods: list[str], options: RunOptions) -> dict:
    """Evaluate every method at every strength from one pass over the images.

    Writes ``sweep.jsonl`` (one line per method and α, with the report's metric fields),
    ``tradeoff.png`` (when matplotlib is installed), ``spec.yaml`` and ``report.json``.
    """
    problems = [f"alphas[{i}]: {a} is outside [0, 1]" for i, a in enumerate(alphas) if not 0 <= a <= 1]
    problems += [f'methods[{i}]: unknown method "{m}"; use ccup or nullspace'
                 for i, m in enumerate(methods) if m not in ("ccup", "nullspace")]
    if not alphas:
        problems.append("alphas: the list is empty; e.g. --alphas 0,0.1,...,1")
    if problems:
        raise SpecError(problems)
    if options.out is None:
        raise SpecError("out: the sweep needs an output folder", "pass --out DIR")
    timer = PhaseTimer()
    device = resolve_device(options.device)
    prep = _prepare(spec.model_copy(update={"alpha": 1.0}), options, timer, device, need_eval=True)
    with timer("sweep"):
        rows = run_sweep(prep.sweep_inputs, methods, alphas, prep.spec.forget, spec.lambda_retain,
                         spec.lambda_identity, spec.energy)
    report = rep.new_report("sweep", options.argv)
    resolved = prep.spec.model_copy(update={"retain": prep.retain})
    report["spec"] = resolved.model_dump(mode="json")
    report["spec_sha256"] = resolved.sha256()
    report["model"] = model_report(prep.loaded)
    report["inputs"] = {"checkpoint": {"path": str(prep.loaded.checkpoint_path) if prep.loaded.checkpoint_path
                                       else None, "sha256": prep.loaded.checkpoint_sha256}}
    report["dataset"] = {**dataset_report(prep.dataset), "feature_cache_hit": prep.sweep_inputs.feature_cache_hit}
    report["sweep"] = {"methods": methods, "alphas": alphas, "rows": len(rows)}
    out = Path(options.out).absolute()
    with timer("write"), atomic_dir(out, options.overwrite) as tmp:
        (tmp / "sweep.jsonl").write_text("".join(rep.dumps_line(
            {"method": r["method"], "alpha": r["alpha"], "params": r["params"], "metrics": r["metrics"]})
            for r in rows), encoding="utf-8")
        (tmp / "spec.yaml").write_text(resolved.to_yaml(), encoding="utf-8")
        try:
            plot_tradeoff(rows, tmp / "tradeoff.png", f"{report['model']['name']} on {prep.dataset.name}: "
                                                       f"forget {', '.join(prep.spec.forget)}")
            report["plot"] = str(out / "tradeoff.png")
        except ImportError:
            report["plot"] = None
            report.setdefault("warnings", []).append(
                "tradeoff.png not written: matplotlib is missing; pip install 'ccup[plot]'")
        report["outputs"] = {"folder": str(out), "sweep_jsonl": {"path": str(out / "sweep.jsonl"),
                                                                 "sha256": sha256_file(tmp / "sweep.jsonl")}}
        report["timings"] = timer.seconds
        report["environment"] = rep.environment(device)
        rep.write_report(tmp / "report.json", report)
    report["rows"] = rows
    return report
