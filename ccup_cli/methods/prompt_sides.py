"""Forget and retain prompt sides built from classes, domains and free prompts.

Class forgetting pairs every forget class with the forget templates. Domain forgetting is
narrower (issue 14): with ``forget_domains``, the forget side is the forget classes × the
forgotten domains' templates, and the retain side holds the same classes × the other
domains' templates plus the retain classes × every domain's templates. ``forget_domains``
without forget classes forgets every class in those domains. ``forget_prompts`` and
``retain_prompts`` are appended as they stand.

A side is a flat prompt list and its groups (one per class × domain cell, one per free
prompt); ``embed_side`` turns it into ``embeddings.TextEmbeddings`` whose ``classnames`` are
the group labels and whose ``per_class`` rows are the group means. Its ``templates`` is
``["{}"]`` (one prompt per row), so a phrase sink is the phrase itself. Importable without torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from ..data.catalog import generic_vocabulary
from ..errors import SpecError
from ..runtime.yaml_input import NotReadable, read_yaml
from ..text.templates import fill

DOMAIN_PRESETS = Path(__file__).resolve().parents[1] / "presets" / "domains"


@dataclass
class PromptSide:
    """One side's prompts, in order, and its groups ``(label, start, stop)`` over them."""

    prompts: list[str] = field(default_factory=list)
    groups: list[tuple[str, int, int]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # per group: the class it is about (its label if none)

    def add(self, label: str, prompts: Sequence[str], key: str | None = None) -> None:
        start = len(self.prompts)
        self.prompts.extend(prompts)
        self.groups.append((label, start, len(self.prompts)))
        self.keys.append(label if key is None else key)

    @property
    def labels(self) -> list[str]:
        return [g[0] for g in self.groups]


def domain_preset_names() -> list[str]:
    return sorted(p.stem for p in DOMAIN_PRESETS.glob("*.yaml"))


@lru_cache(maxsize=8)
def _read_domain_file(path: str) -> dict:
    try:
        return read_yaml(path) or {}
    except NotReadable as err:
        raise SpecError(f"domains: {path} is not a valid domain file: {err}",
                        "write a mapping of domain name to a list of templates") from None
    except yaml.YAMLError as err:
        raise SpecError(f"domains: {path} is not valid YAML ({getattr(err, 'problem', 'syntax error')})",
                        "write a mapping of domain name to a list of templates") from err


def load_domains(name_or_file: str) -> dict[str, list[str]]:
    """A copy of ``{domain: ["{}" templates]}`` from a preset name or a YAML file, checked."""
    preset = DOMAIN_PRESETS / f"{name_or_file}.yaml"
    if preset.is_file():
        path = preset
    elif Path(name_or_file).is_file():
        path = Path(name_or_file)
    else:
        close = difflib.get_close_matches(name_or_file, domain_preset_names(), n=1)
        hint = f'did you mean "{close[0]}"?' if close else \
            f"name a preset ({', '.join(domain_preset_names())}) or a YAML file mapping each domain to its templates"
        raise SpecError(f'domains: "{name_or_file}" is neither a domain preset nor a file', hint)
    raw = _read_domain_file(str(path))
    if not isinstance(raw, dict) or not raw:
        raise SpecError(f"domains: {path} holds no domains", "write a mapping of domain name to a list of templates")
    table, problems = {}, []
    for domain, templates in raw.items():
        if isinstance(templates, str):
            templates = [templates]
        if not isinstance(templates, list) or not [t for t in templates if str(t).strip()]:
            problems.append(f"domains.{domain}: {path} gives this domain no templates; "
                            'list at least one, e.g. "a sketch of a {}."')
            continue
        templates = [str(t).strip() for t in templates if str(t).strip()]
        bad = [t for t in templates if "{}" not in t]
        if bad:
            problems.append(f'domains.{domain}: template "{bad[0]}" has no "{{}}" placeholder')
            continue
        table[str(domain)] = templates
    if problems:
        raise SpecError(problems)
    return {d: list(t) for d, t in table.items()}


def domain_problems(forget_domains: Sequence[str], table: dict[str, list[str]],
                    dataset_domains: Sequence[str] | None = None) -> list[str]:
    """One line per forget domain that the domain table (or the eval dataset) does not know."""
    problems = []
    for i, domain in enumerate(forget_domains):
        known = list(table)
        if domain not in table:
            close = difflib.get_close_matches(domain, known, n=2, cutoff=0.5)
            hint = ("did you mean " + " or ".join(f'"{c}"' for c in close) + "?") if close else \
                f"known domains: {', '.join(known)}"
            problems.append(f'forget_domains[{i}]: unknown domain "{domain}"; {hint}')
        elif dataset_domains is not None and domain not in dataset_domains:
            problems.append(f'forget_domains[{i}]: the eval data has no domain "{domain}" '
                            f"(its domains: {', '.join(dataset_domains)})")
    return problems


def build_sides(
    forget: Sequence[str],
    retain: Sequence[str],
    forget_templates: Sequence[str],
    retain_templates: Sequence[str],
    classnames: Sequence[str] = (),
    domains: dict[str, list[str]] | None = None,
    forget_domains: Sequence[str] = (),
    forget_prompts: Sequence[str] = (),
    retain_prompts: Sequence[str] = (),
) -> tuple[PromptSide, PromptSide]:
    """The forget and retain sides (see the module doc).

    Without ``domains`` the class sides are the usual class × template prompts. With
    ``domains`` and no ``forget_domains``, each class is paired with every domain's templates.
    ``classnames`` (the eval dataset's) is the class list that ``forget_domains`` without
    forget classes forgets. An empty forget side is a ``SpecError``.
    """
    forget_side, retain_side = PromptSide(), PromptSide()
    if forget_domains and not domains:
        raise SpecError("domains: forget_domains needs a domain table",
                        "set domains: to a preset (fashion-mnist-domains) or a YAML file")
    if domains:
        targets = list(forget) if forget else list(classnames if forget_domains else [])
        forgotten = [d for d in domains if d in set(forget_domains)] if forget_domains else list(domains)
        kept = [d for d in domains if d not in set(forgotten)]
        for c in targets:
            for d in forgotten:
                forget_side.add(f"{c} in {d}", [fill(t, c) for t in domains[d]], c)
        for c in targets:
            for d in kept:
                retain_side.add(f"{c} in {d}", [fill(t, c) for t in domains[d]], c)
        taken = {c.lower() for c in targets}
        for c in retain:
            if c.lower() in taken:
                continue
            for d in domains:
                retain_side.add(f"{c} in {d}", [fill(t, c) for t in domains[d]], c)
    else:
        for c in forget:
            forget_side.add(c, [fill(t, c) for t in forget_templates])
        for c in retain:
            retain_side.add(c, [fill(t, c) for t in retain_templates])
    for p in forget_prompts:
        forget_side.add(p, [p])
    for p in retain_prompts:
        retain_side.add(p, [p])
    if not forget_side.prompts:
        raise SpecError("forget: the forget side is empty; name classes, forget_domains or forget_prompts",
                        "e.g. --forget sandal --forget-domains sketch")
    return forget_side, retain_side


def forgotten_classes(forget: Sequence[str], forget_domains: Sequence[str], classnames: Sequence[str]) -> list[str]:
    """The classes whose images the forget split holds: the forget classes, or every class when
    whole domains are forgotten."""
    return list(forget) if forget or not forget_domains else list(classnames)


def embed_side(encode_cached: Callable[[list[str]], tuple], side: PromptSide):
    """``TextEmbeddings`` of a side: ``per_template [n_prompts, d]`` and ``per_class [n_groups, d]``
    (group means, renormalised). ``encode_cached(prompts) -> (features [n, d], cache_hit)``."""
    import torch
    import torch.nn.functional as F

    from ..text.embeddings import TextEmbeddings  # lazy: torch (start-up time: the door reads this module)

    if not side.prompts:
        return None
    feats, hit = encode_cached(side.prompts)
    per_prompt = F.normalize(feats.float(), dim=-1)
    per_group = torch.stack([per_prompt[a:b].mean(dim=0) for _, a, b in side.groups])
    return TextEmbeddings(side.labels, ["{}"], per_prompt, F.normalize(per_group, dim=-1), hit, list(side.keys))


DATASET_DOMAIN_PRESETS = {"fashion-mnist-domains": "fashion-mnist-domains",
                          "fashion-mnist-domains-mini": "fashion-mnist-domains"}


def admit_sides(spec, dataset, forget_templates: Sequence[str], retain_templates: Sequence[str]):
    """The door's part: resolve ``domains``, check ``forget_domains``, build both sides.

    Returns ``(spec with domains resolved, (forget_side, retain_side), domain table or None)``;
    every problem is a ``SpecError`` line. ``dataset`` is the opened eval data (or None).
    """
    problems, table = [], None
    if spec.method == "finetune":
        problems.append("method: finetune trains on class labels and takes no forget_domains, domains or "
                        "forget/retain prompts; use ccup or nullspace")
    domains_name = spec.domains
    if domains_name is None and spec.forget_domains:
        domains_name = DATASET_DOMAIN_PRESETS.get(spec.eval or "")
        if domains_name is None:
            problems.append("domains: forget_domains needs a domain table and the eval data has no preset; "
                            "set domains: to fashion-mnist-domains or a YAML file mapping each domain to its templates")
    if domains_name is not None:
        table = load_domains(domains_name)
        dataset_domains = getattr(dataset, "domain_names", None)
        problems += domain_problems(spec.forget_domains, table, dataset_domains)
        if spec.forget_domains and dataset is not None and dataset_domains is None:
            problems.append(f"forget_domains: the eval data {dataset.name} has no domains; use a domain dataset "
                            "(fashion-mnist-domains, or a root/<domain>/<class>/ folder)")
    if problems:
        raise SpecError(problems)
    classnames = list(dataset.classnames) if dataset is not None else generic_vocabulary()
    if spec.retain is not None:
        retain = list(spec.retain)
    else:
        lowered = {f.lower() for f in spec.forget}
        retain = [c for c in classnames if c.lower() not in lowered]
    sides = build_sides(spec.forget, retain, forget_templates, retain_templates, classnames, table,
                        spec.forget_domains, spec.forget_prompts, spec.retain_prompts)
    if domains_name != spec.domains:
        spec = spec.model_copy(update={"domains": domains_name})
    return spec, sides, table
