"""Paths as shipped outputs record them: never an absolute path of this machine.

A report, a checkpoint's metadata or a README travels to other machines, so a path that
ccup resolved (the embedded model's folder, a checkpoint in the Hugging Face cache, the
output folder) is written as what identifies it elsewhere:

- a file of the ccup package (the embedded models): relative to the package's parent,
  ``ccup_cli/assets/ccup-tiny-fashion/open_clip_model.safetensors``, and an embedded model's
  folder by its name, ``ccup-tiny-fashion``;
- anything under the working directory: relative to it (``demo-out/model.safetensors``);
- anything else: its file name alone (the sha256 recorded beside it identifies the content).

Relative paths, tags and names pass through unchanged. Torch-free.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

_PREFIXES = ("local-dir:", "transformers:")


def package_root() -> Path:
    """The folder of the ``ccup_cli`` package, wherever it is installed."""
    return Path(importlib.import_module(__name__.split(".")[0]).__file__).resolve().parent


def embedded_name(path: str | Path) -> str | None:
    """The embedded model's name when ``path`` is its folder in the package's assets, else None."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):
        return None
    inside = _under(resolved, package_root())
    if inside is not None and resolved.parent.name == "assets" and resolved.is_dir():
        return resolved.name
    return None


def _under(path: Path, root: Path) -> str | None:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def portable_path(value: str | os.PathLike | None) -> str | None:
    """``value`` as a shipped output may record it (see the module docstring); None stays None."""
    if value is None:
        return None
    text = str(value)
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            inner = text[len(prefix):]
            if prefix == "local-dir:" and Path(inner).is_absolute() and embedded_name(inner):
                return embedded_name(inner)
            return prefix + portable_path(inner)
    path = Path(text)
    if not path.is_absolute():
        return text
    resolved = path.resolve()
    in_package = _under(resolved, package_root().parent)
    if in_package is not None and in_package.startswith(package_root().name + "/"):
        return in_package
    here = _under(resolved, Path.cwd().resolve())
    if here is not None:
        return here or "."
    return path.name


def portable_argv(argv: list[str]) -> list[str]:
    """The command line as recorded: the program by its name, every absolute path made portable."""
    if not argv:
        return []
    out = [Path(argv[0]).name]
    for token in argv[1:]:
        if "=" in token and token.startswith("--"):
            flag, _, value = token.partition("=")
            out.append(f"{flag}={portable_path(value)}")
        else:
            out.append(portable_path(token))
    return out
