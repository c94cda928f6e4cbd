"""Prompt templates and prompt lists, importable without torch.

The named sets are open_clip's own lists (``open_clip/zero_shot_metadata.py``). That file is
plain data, so it is read on its own, without importing open_clip (and torch) behind it: a
spec error or ``--help`` never pays for the model stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import SpecError
from ..presets.open_clip_metadata import open_clip_metadata


def _open_clip_templates(name: str) -> list[str]:
    meta = open_clip_metadata()
    source = {"openai": meta.OPENAI_IMAGENET_TEMPLATES, "simple": meta.SIMPLE_IMAGENET_TEMPLATES}[name]
    # open_clip stores templates as lambdas; turn them into "{}" format strings
    return [template("{}") for template in source]


_TEMPLATE_SETS: dict[str, Callable[[], list[str]]] = {
    "openai": lambda: _open_clip_templates("openai"),
    "simple": lambda: _open_clip_templates("simple"),
    "photo": lambda: ["a photo of a {}."],
}


def template_set_names() -> list[str]:
    return sorted(_TEMPLATE_SETS)


def load_templates(name_or_file: str) -> list[str]:
    """Return a fresh list of ``"{}"`` templates: a named set, or a file with one per line."""
    if name_or_file in _TEMPLATE_SETS:
        return list(_TEMPLATE_SETS[name_or_file]())
    path = Path(name_or_file)
    if not path.is_file():
        raise SpecError(
            f'templates: "{name_or_file}" is neither a template set ({", ".join(template_set_names())}) '
            "nor a file",
            "name a set or give a text file with one template per line",
        )
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    templates = [line for line in lines if line and not line.startswith("#")]
    if not templates:
        raise SpecError(f"templates: {path} holds no template", "write one template per line")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise SpecError(
            f'templates: {path}: template "{bad[0]}" has no "{{}}" placeholder',
            'mark where the class name goes with "{}"',
        )
    return templates


def fill(template: str, classname: str) -> str:
    return template.replace("{}", classname)


def build_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Class-major prompt list: all templates of class 0, then class 1, ..."""
    return [fill(t, c) for c in classnames for t in templates]
