"""The YAML spec: what to unlearn (model, classes, method, strength, templates, eval data).

How to run it (device, batch size, output folder, verbosity) stays in flags. A flag
overrides the same field of the spec. Everything is checked once, before any model is
loaded, and every problem is reported at once with its field path::

    forget[2]: "dgo" is not a class of cifar10; did you mean "dog"?
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..data.reference_images import parse_domain_images
from ..errors import SpecError
from ..methods.sinks import REFERENCE_SINK, sink_problems
from ..methods.table import METHODS, method_names, split_variant
from ..presets import defaults
from ..runtime.yaml_input import NotReadable, read_yaml
from .lists import split_csv


class UnlearnSpec(BaseModel):
    """A resolved ``ccup unlearn`` spec. Field docs double as the README's spec reference."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str | None = Field(None, description="open_clip name, local-dir:PATH, hf-hub:org/repo or a config .json; "
                                                 "omitted: the embedded ccup-tiny-fashion")
    pretrained: str | None = Field(None, description="tag, checkpoint path, output folder, or 'none' for random init")
    forget: list[str] = Field(default_factory=list, description="class names to forget")
    retain: list[str] | None = Field(None, description="class names to keep; default: the eval dataset's other "
                                                        "classes, else ImageNet-1k names less the forget classes")
    forget_domains: list[str] = Field(default_factory=list, description="forget only in these domains "
                                      "(e.g. sketch); without forget classes, every class in them")
    domains: str | None = Field(None, description="domain -> templates: a preset (fashion-mnist-domains) or a "
                                "YAML file; default with forget_domains: the eval dataset's preset")
    forget_prompts: list[str] = Field(default_factory=list, description="free prompts added to the forget side "
                                      "as they stand")
    retain_prompts: list[str] = Field(default_factory=list, description="free prompts added to the retain side")
    forget_concepts: list[str] = Field(default_factory=list, description="words wider than a class (footwear): "
                                       "forget them and the eval classes each covers, by text similarity in the "
                                       "model (docs/concepts.md)")
    concept_classes: dict[str, list[str]] | None = Field(None, description="the classes a concept covers, decided "
                                                         "by you: {footwear: [sandal, sneaker]}; [] covers none")
    concept_threshold: float = Field(defaults.CONCEPT_THRESHOLD, description="a concept covers a class at this "
                                     "standardised similarity (z against ImageNet names) or above")
    keep_near_retain: bool = Field(False, description="keep default-vocabulary names near a forget name on the "
                                   "retain side (default: left out, and listed in the report)")
    near_retain_threshold: float = Field(defaults.NEAR_RETAIN_THRESHOLD, description="a default-vocabulary name "
                                         "at this standardised similarity to a forget name or above is left out")
    domain_images: dict[str, str] | str | None = Field(None, description="domain-edit: unlabelled reference images "
                                                       "of every domain, {domain: folder} or one folder of "
                                                       "<domain>/ folders; any class, none of the forgotten one needed")
    reference_images: str | None = Field(None, description="unlabelled images from where the model is deployed "
                                          "(a folder, searched recursively; any classes, a few hundred to a few "
                                          "thousand): ccup calibrates its sink to chance on them (sink "
                                          "reference-chance) and erase: probe fits its erasure on them")
    erase: Literal["none", "probe"] = Field("none", description="probe: after the map, a label-free linear erasure "
                                            "of the forget classes (LEACE on the references' zero-shot pseudo-labels),"
                                            " folded into the same final map; needs reference_images")
    alpha: float | Literal["auto"] = Field(1.0, description="strength in [0, 1]; 0 is the original model; 'auto' "
                                                           "picks the smallest meeting every max_forget_* target")
    max_forget_acc: float | None = Field(None, ge=0, le=1, description="target forget top-1 for alpha: auto")
    max_forget_retrieval: float | None = Field(None, ge=0, le=1, description="alpha: auto: each forget class's "
                                               "search precision@10, @100 and R-precision at most this "
                                               "(default 0.2 with auto; 1 turns it off)")
    max_forget_auc_gap: float | None = Field(None, ge=0, le=0.5, description="alpha: auto: each forget class's "
                                             "search |AUC - 0.5| at most this (chance at both ends of the ranking)")
    method: str = Field("ccup", description="an entry of methods.METHODS: " + ", ".join(METHODS))
    fold: Literal["auto", "image", "text"] = Field("auto", description="where W goes: image (the image tower's final "
                                                   "linear map), text (the text tower's), or auto (image where the "
                                                   "image tower has one, else text)")
    templates: str = Field(defaults.FORGET_TEMPLATES, description="templates for forget classes and evaluation")
    retain_templates: str = Field(defaults.RETAIN_TEMPLATES, description="templates for retain classes")
    lambda_retain: float = Field(defaults.LAMBDA_RETAIN, ge=0)
    lambda_identity: float = Field(defaults.LAMBDA_IDENTITY, ge=0)
    sink: str = Field(defaults.SINK, description="ccup: where forget prompts go: zero (the paper), retain-mean, "
                                                  "retain-mean-orthogonal, text-chance, reference-chance (default with "
                                                  "reference_images), neutral, neutral-orthogonal, or a phrase")
    prototype_steps: int = Field(defaults.PROTOTYPE_STEPS, gt=0, le=10_000,
                                 description="ccup-proto: optimisation steps per synthetic image prototype")
    prototypes_per_group: int = Field(defaults.PROTOTYPES_PER_GROUP, gt=0, le=64,
                                      description="ccup-proto: synthetic images per prompt group")
    energy: float = Field(defaults.ENERGY, gt=0, le=1, description="nullspace rank rule: singular-value energy kept")
    retain_warn_cosine: float = Field(defaults.RETAIN_WARN_COSINE, ge=-1, le=1,
                                      description="warn about retain classes this close to a forget class")
    finetune_steps: int = Field(defaults.FINETUNE_STEPS, gt=0,
                                description="finetune: step budget (stops early at max_forget_acc)")
    finetune_lr: float = Field(defaults.FINETUNE_LR, gt=0, description="finetune: AdamW learning rate")
    finetune_batch_size: int = Field(defaults.FINETUNE_BATCH_SIZE, ge=2,
                                     description="finetune: images per step, half forget, half retain")
    finetune_seed: int = defaults.FINETUNE_SEED
    finetune_data: str | None = Field(None, description="finetune: labelled training images (dataset name or "
                                                         "ImageFolder path); default: the eval dataset's train split")
    finetune_train_split: str = Field("train", description="finetune: split of finetune_data to train on")
    eval: str | None = Field(None, description="dataset name, ImageFolder path, or fashion-mnist-mini")
    data_root: str | None = None
    classnames: str | None = Field(None, description="file of class names, one per line in label order")
    eval_split: str = "test"
    eval_limit: int | None = Field(None, gt=0, description="images per class, stratified and seeded")
    download: bool = False

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha_in_range(cls, value):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number in [0, 1] or 'auto'") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{value} is outside [0, 1]; 0 keeps the model, 1 forgets fully")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            close = difflib.get_close_matches(value, list(METHODS), n=1)
            hint = f'did you mean "{close[0]}"?' if close else f"use one of {', '.join(METHODS)}"
            raise ValueError(f'unknown method "{value}"; {hint}')
        return value

    @field_validator("sink")
    @classmethod
    def _known_sink(cls, value: str) -> str:
        problems = sink_problems(value, "sink")
        if problems:
            raise ValueError(problems[0].removeprefix("sink: "))
        return value

    @field_validator("domain_images", mode="before")
    @classmethod
    def _domain_image_pairs(cls, value):
        return parse_domain_images(value)

    @field_validator("concept_classes", mode="before")
    @classmethod
    def _concept_class_lists(cls, value):
        return parse_concept_classes(value)

    @field_validator("forget", "retain", "forget_domains", "forget_prompts", "retain_prompts", "forget_concepts")
    @classmethod
    def _clean_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        return [str(v).strip() for v in value]

    def record(self) -> dict:
        """The spec as JSON values; fields added since 0.3 appear only when set, so a spec that does not
        use them records (and hashes) exactly as before."""
        fields = UnlearnSpec.model_fields
        unset = {f for f in ADDED_FIELDS if getattr(self, f) == fields[f].get_default(call_default_factory=True)}
        return self.model_dump(mode="json", exclude=unset)

    def canonical_json(self) -> str:
        return json.dumps(self.record(), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.record(), sort_keys=False)


ADDED_FIELDS = ("reference_images", "erase", "forget_concepts", "concept_classes", "concept_threshold",
                "keep_near_retain", "near_retain_threshold")


SPEC_FIELDS = tuple(UnlearnSpec.model_fields)


def _field_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML spec file, with syntax errors reported with their line.

    A file nested too deeply, with too many values (``runtime.yaml_input``) or not UTF-8 is
    refused as "not a valid spec" before any field is read.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} does not exist", "check the path")
    try:
        data = read_yaml(path)
    except NotReadable as err:
        raise SpecError(f"{path}: not a valid spec: {err}", "a spec is a mapping of keys to values; see configs/ "
                        "for examples") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "syntax error"
        raise SpecError(f"{path}: YAML {problem}{where}", "fix the YAML syntax") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the spec must be a mapping of keys to values", "see configs/ for examples")
    return data


def build_spec(file_values: dict[str, Any], overrides: dict[str, Any]) -> UnlearnSpec:
    """Merge flags over the spec file and validate the whole spec, reporting all problems.

    ``overrides`` holds only the flags that were given (None means not given).
    """
    merged = dict(file_values)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    if merged.get("reference_images") is not None and "sink" not in merged and \
            merged.get("method", "ccup") == "ccup":
        merged["sink"] = REFERENCE_SINK  # references given, no sink named: calibrate on them
    for key in ("forget", "retain", "forget_domains", "forget_concepts"):
        if key in merged:
            merged[key] = split_csv(merged[key])
    problems = []
    for key in list(merged):
        if key not in SPEC_FIELDS:
            close = difflib.get_close_matches(key, SPEC_FIELDS, n=1)
            hint = f'; did you mean "{close[0]}"?' if close else f"; known keys: {', '.join(SPEC_FIELDS)}"
            problems.append(f'{key}: unknown key{hint}')
            merged.pop(key)
    spec = None
    try:
        spec = UnlearnSpec(**merged)
    except ValidationError as err:
        for e in err.errors():
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"{_field_path(e['loc'])}: {msg}")
    problems += semantic_problems(merged.get("forget"), merged.get("retain"),
                                  other_forget=bool(merged.get("forget_domains") or merged.get("forget_prompts")
                                                    or merged.get("forget_concepts")))
    problems += prompt_problems(merged)
    problems += concept_problems(merged)
    if spec is not None and spec.method == "finetune" and spec.fold == "text":
        problems.append("fold: text does not apply to method finetune, which trains the image tower; "
                        "use fold: auto or image")
    if spec is not None:
        problems += reference_problems(spec)
    if spec is not None and spec.alpha == "auto" and (spec.max_forget_acc, spec.max_forget_retrieval,
                                                       spec.max_forget_auc_gap) == (None, None, None):
        problems.append("alpha: 'auto' needs a target; pass --max-forget-acc (e.g. 0.05), --max-forget-retrieval "
                        "or --max-forget-auc-gap")
    if problems or spec is None:
        raise SpecError(problems)
    return spec


def reference_problems(spec: UnlearnSpec) -> list[str]:
    """What needs reference images and has none, and what cannot use them."""
    problems = []
    if spec.sink == REFERENCE_SINK and spec.reference_images is None:
        problems.append("sink: reference-chance calibrates on unlabelled reference images; pass --reference-images DIR "
                        "(ccup unlearn; ccup sweep does not read them)")
    if spec.erase != "none" and spec.reference_images is None:
        problems.append(f"erase: {spec.erase} is fitted on unlabelled reference images; pass --reference-images DIR")
    if spec.erase != "none" and not METHODS[spec.method].closed_form:
        problems.append(f"erase: {spec.erase} follows a closed-form map; method {spec.method} has none")
    if spec.reference_images is not None and spec.method != "ccup" and spec.erase == "none":
        problems.append(f"reference_images: method {spec.method} does not read them (ccup calibrates its sink on "
                        "them); add --erase probe, use --method ccup, or drop --reference-images")
    if spec.erase != "none" and spec.alpha == "auto":
        problems.append(f"erase: {spec.erase} with alpha: auto is not supported (the strength search does not "
                        "refit the erasure); give a fixed --alpha")
    if spec.erase != "none" and METHODS[spec.method].needs_references:
        problems.append(f"erase: {spec.erase} does not follow method {spec.method}; use ccup or nullspace")
    if spec.erase != "none" and importlib.util.find_spec("concept_erasure") is None:
        problems.append(f"erase: {spec.erase} needs the concept-erasure package; pip install 'ccup[audit]'")
    if spec.erase != "none" and spec.fold == "text":
        problems.append(f"erase: {spec.erase} erases from image features, which fold: text leaves alone; use fold: "
                        "auto or image")
    return problems


def _names(value: Any) -> list[str]:
    return [str(v).strip() for v in value] if isinstance(value, list) else []


def prompt_problems(merged: dict[str, Any]) -> list[str]:
    """Empty or repeated entries of forget_domains, forget_prompts and retain_prompts (raw values)."""
    problems = []
    for field in ("forget_domains", "forget_prompts", "retain_prompts"):
        seen: set[str] = set()
        for i, entry in enumerate(_names(merged.get(field))):
            if not entry:
                problems.append(f"{field}[{i}]: empty entry; remove it")
            elif entry in seen:
                problems.append(f'{field}[{i}]: "{entry}" is listed twice; remove the duplicate')
            seen.add(entry)
    overlap = set(_names(merged.get("forget_prompts"))) & set(_names(merged.get("retain_prompts")))
    for i, entry in enumerate(_names(merged.get("retain_prompts"))):
        if entry in overlap:
            problems.append(f'retain_prompts[{i}]: "{entry}" is also in forget_prompts')
    return problems


def parse_concept_classes(value: Any) -> Any:
    """``"footwear=sandal+sneaker+ankle boot,tops=shirt"`` (the flag's form) -> ``{concept: [classes]}``;
    ``footwear=`` covers none. A mapping's values may be one class or a list; other types pass to pydantic."""
    if isinstance(value, str):
        table = {}
        for pair in (p.strip() for p in value.split(",") if p.strip()):
            concept, sep, classes = pair.partition("=")
            if not sep or not concept.strip():
                raise ValueError(f'"{pair}" is not CONCEPT=CLASS+CLASS; e.g. footwear=sandal+sneaker+ankle boot')
            table[concept.strip()] = [c.strip() for c in classes.split("+") if c.strip()]
        return table
    if isinstance(value, dict):
        return {str(k).strip(): ([value_] if isinstance(value_, str) else ([] if value_ is None else value_))
                for k, value_ in value.items()}
    return value


def concept_problems(merged: dict[str, Any]) -> list[str]:
    """Checks on forget_concepts and concept_classes across fields (raw values)."""
    problems = []
    concepts = _names(split_csv(merged.get("forget_concepts")))
    forget_lower = {n.lower() for n in _names(merged.get("forget"))}
    seen: set[str] = set()
    for i, concept in enumerate(concepts):
        if not concept:
            problems.append(f"forget_concepts[{i}]: empty entry; remove it")
        elif concept.lower() in seen:
            problems.append(f'forget_concepts[{i}]: "{concept}" is listed twice; remove the duplicate')
        elif concept.lower() in forget_lower:
            problems.append(f'forget_concepts[{i}]: "{concept}" is also in forget; list it once')
        seen.add(concept.lower())
    if concepts and (merged.get("forget_domains") or merged.get("domains") or merged.get("forget_prompts")
                     or merged.get("retain_prompts")):
        problems.append("forget_concepts: not combined with forget_domains, domains or free prompts; "
                        "forget a concept in every domain, or add its words to forget_prompts instead")
    if concepts and merged.get("method") == "finetune":
        problems.append("forget_concepts: method finetune trains on class labels; name the classes in forget, "
                        "or use ccup or nullspace")
    named = merged.get("concept_classes")
    if isinstance(named, dict):
        for concept in named:
            if str(concept).strip().lower() not in seen:
                problems.append(f'concept_classes.{concept}: "{concept}" is not in forget_concepts; '
                                "add it there, or remove this entry")
    return problems


def semantic_problems(forget: Any, retain: Any, other_forget: bool = False) -> list[str]:
    """Checks across fields: empty, duplicate and overlapping class lists (raw values).

    ``other_forget``: forget_domains or forget_prompts are given, so no forget class is needed.
    """
    problems = []
    lists = {"forget": _names(forget), "retain": _names(retain)}
    if not lists["forget"] and not other_forget and (forget is None or isinstance(forget, list)):
        problems.append("forget: the list is empty; name at least one class, e.g. --forget cat,dog")
    for field, names in lists.items():
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if not name:
                problems.append(f"{field}[{i}]: empty class name; remove it")
            elif name.lower() in seen:
                problems.append(f'{field}[{i}]: "{name}" is listed twice (also {field}[{seen[name.lower()]}]); '
                                "remove the duplicate")
            else:
                seen[name.lower()] = i
    forget_lower = {n.lower() for n in lists["forget"]}
    for i, name in enumerate(lists["retain"]):
        if name.lower() in forget_lower:
            problems.append(f'retain[{i}]: "{name}" is also in forget; a class cannot be forgotten and kept')
    return problems


def parse_alphas(text: str) -> list[float]:
    """``"0,0.1,...,1"`` (an arithmetic range spelled with ``...``) or a plain comma list."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if "..." in parts:
        i = parts.index("...")
        if i < 2 or i != len(parts) - 2:
            raise ValueError('write a range as "start,next,...,end", e.g. 0,0.1,...,1')
        start, step_to, end = float(parts[i - 2]), float(parts[i - 1]), float(parts[i + 1])
        step = step_to - start
        if step <= 0:
            raise ValueError("a range needs increasing values")
        n = int(round((end - start) / step))
        head = [float(p) for p in parts[: i - 2]]
        return head + [round(start + k * step, 10) for k in range(n + 1)]
    return [float(p) for p in parts]


def check_sweep(alphas: list[float], methods: list[str]) -> None:
    """A sweep's strengths and methods (``ccup:SINK`` compares sinks), checked at the door."""
    closed = method_names(closed_form_only=True)
    problems = [f"alphas[{i}]: {a} is outside [0, 1]" for i, a in enumerate(alphas) if not 0 <= a <= 1]
    for i, entry in enumerate(methods):
        name, override = split_variant(entry)
        if name not in METHODS:
            problems.append(f'methods[{i}]: unknown method "{name}"; use {" or ".join(closed)}')
        elif name not in closed:
            problems.append(f'methods[{i}]: method "{name}" needs labelled images and cannot be swept; '
                            f'use {" or ".join(closed)}')
        elif METHODS[name].needs_references:
            problems.append(f'methods[{i}]: method "{name}" reads reference images and is not swept; '
                            "run it with ccup unlearn (--alpha auto traces its curve)")
        elif override and "sink" not in METHODS[name].params:
            problems.append(f'methods[{i}]: method "{name}" takes no sink; write ccup:SINK to compare sinks')
        elif override and override["sink"] == REFERENCE_SINK:
            problems.append(f"methods[{i}]: ccup:{REFERENCE_SINK} calibrates on reference images, which ccup sweep "
                            "does not read; run ccup unlearn --reference-images DIR (its report gives the calibration)")
        elif override:
            problems += sink_problems(override["sink"], f"methods[{i}]")
    if len(set(methods)) != len(methods):
        problems.append("methods: an entry is listed twice; list each method (or ccup:SINK) once")
    if not alphas:
        problems.append("alphas: the list is empty; e.g. --alphas 0,0.1,...,1")
    if not methods:
        problems.append("methods: the list is empty; e.g. --methods ccup,nullspace")
    if problems:
        raise SpecError(problems)
