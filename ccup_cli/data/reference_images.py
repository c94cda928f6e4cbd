"""Reference images (``domain_images``): folders of unlabelled images, one per domain.

``method: domain-edit`` reads where each domain sits on the image side from a handful of
images per domain, of any class. The spec gives them as a mapping ``{domain: folder}`` or as
one folder holding a ``<domain>/`` folder per domain; the flag as ``sketch=DIR,photo=DIR`` (or
one ``DIR``). Images are found recursively and any sub-folder is ignored as a label. Every
domain of the domain table needs images, and every folder must hold some; all problems are
reported at once, one line each. Importable without torch: this runs at the door.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import SpecError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def parse_domain_images(value: Any) -> Any:
    """The flag form ``"sketch=DIR,photo=DIR"`` as a mapping; a single folder stays a string."""
    if isinstance(value, str) and "=" in value:
        out: dict[str, str] = {}
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            domain, _, folder = part.partition("=")
            out[domain.strip()] = folder.strip()
        return out
    return value


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, recursively, sorted (hidden entries skipped)."""
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def resolve_domain_images(value: str | dict[str, str], domains: Sequence[str]) -> dict[str, Path]:
    """``{domain: folder}`` for every domain of ``domains``, checked; a ``SpecError`` lists every problem."""
    problems = []
    if isinstance(value, str):
        root = Path(value).expanduser()
        if not root.is_dir():
            raise SpecError(f"domain_images: {value} is not a folder",
                            "give one folder with a sub-folder per domain, or domain=DIR pairs")
        folders = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
        where = f"{root}/<domain>/"
    else:
        folders = {str(k).strip(): Path(str(v)).expanduser() for k, v in value.items()}
        where = "domain_images"
    for name in folders:
        if name not in domains:
            close = difflib.get_close_matches(name, list(domains), n=1, cutoff=0.5)
            hint = f'did you mean "{close[0]}"?' if close else f"the domains are {', '.join(domains)}"
            problems.append(f'domain_images.{name}: "{name}" is not a domain of the domain table; {hint}')
    for domain in domains:
        folder = folders.get(domain)
        if folder is None:
            problems.append(f"domain_images.{domain}: no images for domain {domain} (in {where}); "
                            f"give a few unlabelled {domain} images of any class, e.g. {domain}=DIR")
        elif not folder.is_dir():
            problems.append(f"domain_images.{domain}: folder {folder} does not exist")
        elif not image_files(folder):
            problems.append(f"domain_images.{domain}: folder {folder} holds no images (.png, .jpg, ...)")
    if problems:
        raise SpecError(problems)
    return {d: folders[d] for d in domains}


def reference_datasets(folders: dict[str, Path]) -> dict:
    """One unlabelled ``data.EvalDataset`` per domain (every label 0), for the usual loader and caches."""
    # lazy: start-up time (numpy and PIL stay out of the door)
    from .dataset import files_dataset

    return {d: files_dataset(folder, f"domain-images:{d}", ["unlabelled"], image_files(folder),
                             [0] * len(image_files(folder))) for d, folder in folders.items()}


def reference_record(folders: dict[str, Path], datasets: dict) -> dict:
    """What the report says the method read: per domain, the folder, the image count and the file-list sha256."""
    return {d: {"folder": str(folders[d]), "count": len(datasets[d]), "file_list_sha256": datasets[d].file_list_sha256()}
            for d in folders}

