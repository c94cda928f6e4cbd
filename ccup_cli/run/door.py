"""Checks at the door: everything a job can verify before it loads a model.

The model's files, templates, the dataset and its class names, the forget and retain lists,
the fine-tuning data and the output location; every problem found is reported at once. Nothing here imports torch or open_clip, so a typo in a class
name is reported in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..backends.base import backend_for
from ..backends.sources import source_problems
from ..data.catalog import (
    DATASET_NAMES,
    MINI_DOMAINS_NAME,
    MINI_NAME,
    check_classes_in,
    check_dataset_name,
    preset_classnames,
)
from ..data.reference_images import resolve_domain_images, resolve_reference_images
from ..errors import Problems, SpecError
from ..methods.prompt_sides import admit_sides
from ..methods.table import get_method
from ..presets.defaults import EMBEDDED_MODELS, EMBEDDED_PRETRAINED
from ..text.templates import load_templates
from .options import RunOptions
from .provenance import PhaseTimer
from .writer import check_output

if TYPE_CHECKING:  # pragma: no cover - data (numpy) is imported when a dataset is opened
    from ..data.dataset import EvalDataset
    from ..spec.schema import UnlearnSpec  # pydantic: ccup eval and audit need no spec (start-up time)


NO_EVAL = "none"  # --eval none: evaluate nothing; the retain side is the default vocabulary


def default_eval(model: str | None, eval_name: str | None, domains: bool = False) -> str | None:
    """An embedded model evaluates on the embedded subset (in its three domains when the spec
    names domains) unless told otherwise."""
    if eval_name is None and (model is None or model in EMBEDDED_MODELS):
        return MINI_DOMAINS_NAME if domains else MINI_NAME
    if eval_name is not None and eval_name.lower() == NO_EVAL and not Path(eval_name).exists():
        return None  # "none": no dataset, even for an embedded model (the default retain vocabulary)
    return eval_name


def canonical_names(names: list[str], classnames: list[str]) -> list[str]:
    """The dataset's own spelling of each name (class names match case-insensitively)."""
    lookup = {c.lower(): c for c in classnames}
    return [lookup.get(n.lower(), n) for n in names]


def open_eval_dataset(name: str, data_root, split: str, download: bool, limit, classnames_file,
                      timer: PhaseTimer) -> EvalDataset:
    from ..data.datasets import open_dataset  # lazy: numpy and PIL (start-up time)

    with timer("open_dataset"):
        return open_dataset(name, data_root, split, download, limit, classnames_file)


@dataclass
class Plan:
    """A spec admitted at the door, with what the door opened on the way: the one object the
    session and the method read from here on."""

    spec: UnlearnSpec  # eval defaulted, class names in the dataset's spelling
    dataset: EvalDataset | None  # data.EvalDataset
    templates: list[str]
    retain_templates: list[str]
    train: EvalDataset | None = None  # finetune's labelled images
    sides: tuple | None = None  # prompt_sides.PromptSide (forget, retain) when domains or free prompts are used
    domains: dict[str, list[str]] | None = None  # domain -> templates
    # group -> folder of unlabelled reference images: each domain (domain-edit), or reference_images
    # as the one group data.reference_images.DEPLOYMENT (ccup's calibrated sink, erase: probe)
    references: dict[str, Path] | None = None


def pretrained_problems(model: str | None, pretrained: str | None) -> list[str]:
    """The model source checked from its files alone (``backends.base.source_problems``), and the
    ``embedded`` tag on a model that ships no weights."""
    problems = source_problems(model, pretrained)
    if pretrained == EMBEDDED_PRETRAINED and model is not None and model not in EMBEDDED_MODELS:
        problems.append(f'pretrained: "{EMBEDDED_PRETRAINED}" names the shipped weights of an embedded model '
                        f"({', '.join(EMBEDDED_MODELS)}); {model} has none, so pass a tag or a checkpoint path")
    return problems


def admit(spec: UnlearnSpec, options: RunOptions, timer: PhaseTimer, need_eval: bool) -> Plan:
    """Validate a spec against its model files, templates, dataset and output before any model is loaded.

    Independent checks all run, and every problem they find is reported at once.
    """
    uses_domains = bool(spec.forget_domains or spec.domains)
    spec_eval = default_eval(spec.model, spec.eval, uses_domains)
    if spec_eval != spec.eval:
        spec = spec.model_copy(update={"eval": spec_eval})
    problems = Problems()
    problems.add(pretrained_problems(spec.model, spec.pretrained))
    templates = problems.attempt(load_templates, spec.templates)
    retain_templates = problems.attempt(load_templates, spec.retain_templates)
    problems.attempt(backend_for, spec.model, spec.pretrained)  # a missing optional package is bad input
    if need_eval and not spec.eval:
        problems.add("eval: a dataset is needed here; pass --eval DATASET (a name or an ImageFolder path)")
    dataset = None
    names = {"forget": spec.forget, "retain": spec.retain, **concept_class_lists(spec)}
    if spec.concept_classes and not spec.eval:
        problems.add("concept_classes: names classes of an eval dataset, and none is given; pass --eval DATASET")
    if spec.eval and problems.passes(check_dataset_name, spec.eval):
        preset = preset_classnames(spec.eval) if spec.eval in DATASET_NAMES and spec.classnames is None else None
        if preset:  # a named dataset's classes are known before its files are opened
            problems.attempt(check_classes_in, names, preset, spec.eval, concept_hint=True)
        dataset = problems.attempt(open_eval_dataset, spec.eval, spec.data_root, spec.eval_split, spec.download,
                                   spec.eval_limit, spec.classnames, timer)
        if dataset is not None and not preset:
            problems.attempt(check_classes_in, names, dataset.classnames, dataset.name, concept_hint=True)
    if options.out is not None:
        problems.attempt(check_output, options.out, options.overwrite, (spec.pretrained, spec.model))
    problems.raise_all()
    if dataset is not None:
        check_classes_in(names, dataset.classnames, dataset.name)
        spec = spec.model_copy(update={
            "forget": canonical_names(spec.forget, dataset.classnames),
            "retain": canonical_names(spec.retain, dataset.classnames) if spec.retain is not None else None,
            "concept_classes": {k: canonical_names(v, dataset.classnames) for k, v in spec.concept_classes.items()}
            if spec.concept_classes is not None else None})
        concept_retain_problems(spec)
    sides, domain_table = None, None
    if uses_domains or spec.forget_prompts or spec.retain_prompts:
        spec, sides, domain_table = admit_sides(spec, dataset, templates, retain_templates)
    references = reference_folders(spec, domain_table)
    train = None
    if spec.method == "finetune":
        with timer("open_train_data"):
            train = finetune_dataset(spec, dataset)
    return Plan(spec, dataset, templates, retain_templates, train, sides, domain_table, references)


def concept_class_lists(spec: UnlearnSpec) -> dict[str, list[str]]:
    """``concept_classes`` as the lists ``check_classes_in`` reads, one field path per concept."""
    return {f"concept_classes.{k}": v for k, v in (spec.concept_classes or {}).items()}


def concept_retain_problems(spec: UnlearnSpec) -> None:
    """A class that the user names as covered by a concept cannot also be kept."""
    if spec.retain is None or not spec.concept_classes:
        return
    covered = {c.lower(): k for k, v in spec.concept_classes.items() for c in v}
    problems = [f'retain[{i}]: "{c}" is covered by concept "{covered[c.lower()]}" (concept_classes); '
                "a class cannot be forgotten and kept" for i, c in enumerate(spec.retain) if c.lower() in covered]
    if problems:
        raise SpecError(problems)


def reference_folders(spec: UnlearnSpec, domain_table: dict[str, list[str]] | None) -> dict[str, Path] | None:
    """The checked reference folders: ``domain_images`` of a method that reads them, or
    ``reference_images`` (None for neither)."""
    needs = get_method(spec.method).needs_references
    if spec.reference_images is not None:
        if needs:
            raise SpecError(f"reference_images: method {spec.method} reads per-domain images (domain_images), "
                            "not reference_images", "drop --reference-images, or use --method ccup")
        return resolve_reference_images(spec.reference_images)
    if spec.domain_images is not None and not needs:
        raise SpecError(f"domain_images: method {spec.method} reads no reference images",
                        "add --method domain-edit, or drop domain_images")
    if not needs:
        return None
    problems = []
    if spec.domain_images is None:
        problems.append(f"domain_images: method {spec.method} needs a few unlabelled images of every domain; "
                        "pass --domain-images sketch=DIR,photo=DIR,... (any class)")
    if not spec.forget_domains:
        problems.append(f"forget_domains: method {spec.method} forgets in named domains; pass --forget-domains")
    if problems:
        raise SpecError(problems)
    return resolve_domain_images(spec.domain_images, list(domain_table or {}))


def finetune_dataset(spec: UnlearnSpec, eval_data: EvalDataset) -> EvalDataset:
    """The labelled images fine-tuning trains on: ``finetune_data``, else the eval dataset's train split.

    The embedded mini subset trains on Fashion-MNIST's train split. An ImageFolder has no
    train split, so it needs ``finetune_data``; training data equal to the eval data is refused.
    """
    if spec.finetune_data is not None:
        name, root = spec.finetune_data, spec.data_root if spec.finetune_data in DATASET_NAMES else None
    elif spec.eval == MINI_NAME:
        name, root = "fashion-mnist", None
    elif spec.eval in DATASET_NAMES:
        name, root = spec.eval, spec.data_root
    else:
        raise SpecError(f"finetune_data: the eval data {spec.eval} is a folder, which has no train split",
                        "pass --finetune-data DATASET_OR_FOLDER with labelled images that are not the eval images")
    from ..data.datasets import open_dataset  # lazy: numpy and PIL (start-up time)

    train = open_dataset(name, root, spec.finetune_train_split, spec.download, None, spec.classnames)
    if [c.lower() for c in train.classnames] != [c.lower() for c in eval_data.classnames]:
        raise SpecError(f"finetune_data: {name} has classes {', '.join(train.classnames[:6])}..., "
                        f"not those of {eval_data.name}", "give training images of the same classes, in label order")
    if train.identity() == eval_data.identity() or (
            Path(name).exists() and spec.eval and Path(name).resolve() == Path(spec.eval).resolve()):
        raise SpecError(f"finetune_data: {name} is the evaluation data itself",
                        "train on other images, or the after-figures measure memorisation")
    return train
