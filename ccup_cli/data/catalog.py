"""What ccup knows about datasets before opening one: their names and readable class names.

Importable without numpy or torch, so a misspelt dataset or class name is answered at once;
``datasets.py`` holds the loaders and must list exactly ``DATASET_NAMES``.
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from pathlib import Path

from ..errors import DatasetError, SpecError
from ..presets.open_clip_metadata import open_clip_metadata

PRESETS = Path(__file__).resolve().parents[1] / "presets"
MINI_NAME = "fashion-mnist-mini"
MINI_DOMAINS_NAME = "fashion-mnist-domains-mini"  # the mini subset drawn in the three domains (domains.py)
DATASET_NAMES = (MINI_NAME, MINI_DOMAINS_NAME, "fashion-mnist-domains", "fashion-mnist", "mnist", "cifar10", "cifar100", "stl10", "flowers102", "oxford-pets",
                 "food101", "caltech101", "imagenet")


@lru_cache(maxsize=1)
def _classname_presets() -> dict[str, list[str]]:
    return json.loads((PRESETS / "classnames.json").read_text(encoding="utf-8"))


def preset_classnames(name: str) -> list[str] | None:
    """A copy of a dataset's readable class names, or None if none is shipped."""
    if name in (MINI_NAME, MINI_DOMAINS_NAME, "fashion-mnist-domains"):
        name = "fashion-mnist"
    if name == "imagenet":
        return list(open_clip_metadata().IMAGENET_CLASSNAMES)
    names = _classname_presets().get(name)
    return list(names) if names is not None else None


def generic_vocabulary() -> list[str]:
    """The default retain vocabulary when no dataset is given: ImageNet-1k class names."""
    return preset_classnames("imagenet") or []


def is_folder(name: str) -> bool:
    """Whether ``--eval NAME`` means an ImageFolder path rather than a dataset name."""
    return Path(name).exists() or "/" in name or name.startswith((".", "~"))


def check_dataset_name(name: str) -> None:
    """A known name or a folder path; else a DatasetError with close matches."""
    if name in DATASET_NAMES or is_folder(name):
        return
    names = sorted(DATASET_NAMES)
    close = difflib.get_close_matches(name, names, n=2)
    hint = f"did you mean {' or '.join(close)}?" if close else f"use one of {', '.join(names)} or a folder"
    raise DatasetError(f'unknown dataset "{name}"', hint)


def check_classes_in(lists: dict[str, list[str] | None], classnames: list[str], dataset: str,
                     concept_hint: bool = False) -> None:
    """Every name of each list (``{"forget": [...], "retain": [...]}``) must be a class of the dataset.

    ``concept_hint``: a forget name spelled like no class is pointed to ``--forget-concepts``."""
    problems = []
    lowered = {c.lower(): c for c in classnames}
    for field, names in lists.items():
        for i, name in enumerate(names or []):
            if name.lower() not in lowered:
                close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
                hint = ("; did you mean " + ", ".join(f'"{lowered[c]}"' for c in close) + "?") if close else \
                    f"; its classes are {', '.join(classnames[:12])}{'...' if len(classnames) > 12 else ''}"
                if concept_hint and field == "forget" and not close:
                    hint += f'; to forget a word wider than a class, pass --forget-concepts "{name}"'
                problems.append(f'{field}[{i}]: "{name}" is not a class of {dataset}{hint}')
    if problems:
        raise SpecError(problems)
